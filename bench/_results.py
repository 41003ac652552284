"""Benchmark result files: one JSON document per run, with the platform it ran on and RAW samples.

Raw samples (not just medians) are kept so that `netplane bench compare` can run a proper
significance test between two runs made on different days, commits or machines. The
platform block is what makes two files comparable at all: a figure without the CPU, kernel
and iptables variant it was measured with means little. A run under emulation (qemu-user, or
a whole emulated machine under qemu-system) says so in the file itself, with how, so its
figures can never pass for hardware figures.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "netplane-bench/1"
DEFAULT_OUTPUT_DIR = Path("bench/results")
_REPO = Path(__file__).resolve().parent.parent


class ResultError(ValueError):
    """A result file that cannot be used, with where and why."""


Label = str | int | float  # the value of one condition in `Series.labels`


@dataclass(frozen=True, slots=True)
class Series:
    """Repeated measurements of one metric under one set of conditions.

    `labels` identify the conditions (backend, services, endpoints, change, implementation,
    ...): two files are compared series by series on (benchmark, metric, labels).
    """

    metric: str
    unit: str
    labels: Mapping[str, Label]
    values: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "unit": self.unit,
            "labels": dict(self.labels),
            "values": list(self.values),
        }


@dataclass(frozen=True, slots=True)
class Skipped:
    """A part of a benchmark that did not run, and why (shown, never silently dropped)."""

    what: str
    reason: str


@dataclass(frozen=True, slots=True)
class Result:
    benchmark: str
    parameters: Mapping[str, Any]
    series: tuple[Series, ...]
    platform: Mapping[str, Any] = field(default_factory=dict)
    skipped: tuple[Skipped, ...] = ()
    created: str = ""

    @property
    def emulated(self) -> bool:
        return bool(self.platform.get("emulated"))

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "benchmark": self.benchmark,
            "created": self.created,
            "emulated": self.emulated,
            "platform": dict(self.platform),
            "parameters": dict(self.parameters),
            "series": [s.to_json() for s in self.series],
            "skipped": [{"what": s.what, "reason": s.reason} for s in self.skipped],
        }


def new_result(
    benchmark: str,
    parameters: Mapping[str, Any],
    series: Iterable[Series],
    skipped: Iterable[Skipped] = (),
) -> Result:
    """A result stamped with this machine's platform and the current time."""
    return Result(
        benchmark=benchmark,
        parameters=dict(parameters),
        series=tuple(series),
        platform=platform_info(),
        skipped=tuple(skipped),
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )


def write_result(
    result: Result, output_dir: str | os.PathLike = DEFAULT_OUTPUT_DIR, path: Path | None = None
) -> Path:
    """Write RESULT as a new file in OUTPUT_DIR (never overwriting an earlier run), or
    replace PATH: a long run checkpoints into its own file so an interrupted run keeps
    the figures it has."""
    if path is None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        stamp = (result.created or "undated").replace(":", "").replace("+0000", "Z")
        arch = result.platform.get("arch", "unknown")
        base = f"{result.benchmark}-{arch}-{stamp}{'-emulated' if result.emulated else ''}"
        path = out / f"{base}.json"
        n = 1
        while path.exists():
            n += 1
            path = out / f"{base}-{n}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result.to_json(), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_result(path: str | os.PathLike) -> Result:
    """Read and validate a result file; ResultError says which file and what is wrong."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultError(f"{path}: cannot read a result: {e}") from e
    problems = validate(doc)
    if problems:
        raise ResultError(f"{path}: not a netplane benchmark result: {'; '.join(problems)}")
    return Result(
        benchmark=doc["benchmark"],
        parameters=doc["parameters"],
        series=tuple(
            Series(s["metric"], s["unit"], s["labels"], tuple(float(v) for v in s["values"]))
            for s in doc["series"]
        ),
        platform=doc["platform"],
        skipped=tuple(Skipped(s["what"], s["reason"]) for s in doc.get("skipped", [])),
        created=doc.get("created", ""),
    )


_PLATFORM_KEYS = ("arch", "cpu_model", "cores", "kernel", "distribution", "python", "netplane")


def validate(doc: Any) -> list[str]:
    """Every problem with a result document (empty when it is valid)."""
    if not isinstance(doc, dict):
        return ["top level is not an object"]
    problems = []
    if doc.get("schema") != SCHEMA:
        problems.append(f"schema is {doc.get('schema')!r}, expected {SCHEMA!r}")
    if not isinstance(doc.get("benchmark"), str) or not doc.get("benchmark"):
        problems.append("benchmark: missing or not a string")
    if not isinstance(doc.get("emulated"), bool):
        problems.append("emulated: missing or not a boolean")
    plat = doc.get("platform")
    if not isinstance(plat, dict):
        problems.append("platform: missing or not an object")
    else:
        problems += [f"platform.{k}: missing" for k in _PLATFORM_KEYS if k not in plat]
    if not isinstance(doc.get("parameters"), dict):
        problems.append("parameters: missing or not an object")
    series = doc.get("series")
    if not isinstance(series, list):
        return [*problems, "series: missing or not a list"]
    for i, s in enumerate(series):
        where = f"series[{i}]"
        if not isinstance(s, dict):
            problems.append(f"{where}: not an object")
            continue
        for k in ("metric", "unit"):
            if not isinstance(s.get(k), str):
                problems.append(f"{where}.{k}: missing or not a string")
        if not isinstance(s.get("labels"), dict):
            problems.append(f"{where}.labels: missing or not an object")
        values = s.get("values")
        if not isinstance(values, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values
        ):
            problems.append(f"{where}.values: missing or not a list of numbers")
    return problems


# --- platform --------------------------------------------------------------------------------


def platform_info() -> dict[str, Any]:
    """What a figure was measured on: enough to tell two machines (or two setups) apart."""
    facts = MachineFacts.read()
    return {
        "arch": facts.machine,
        "cpu_model": cpu_model(facts.cpuinfo),
        "board": board(),
        "cores": os.cpu_count() or 0,
        "kernel": platform.release(),
        "distribution": _os_release(),
        "python": platform.python_version(),
        # Which build: a pyenv build of the same minor version (no PGO/LTO) ran netplane's
        # code 10-27% slower than Debian's python3 here (bench/README.md).
        "python_executable": os.path.realpath(sys.executable),
        "netplane": _netplane_version(),
        "git_commit": git_commit(),
        "iptables": _tool_version(["iptables", "--version"]),
        "iptables_variant": _iptables_variant(),
        "iptables_legacy": _tool_version(["iptables-legacy", "--version"]),
        "iptables_nft": _tool_version(["iptables-nft", "--version"]),
        "nft": _tool_version(["nft", "--version"]),
        "emulated": classify(facts),
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


# ARM Ltd (implementer 0x41) CPU parts, as the MIDR register gives them: arm64 kernels show
# only these numbers. The Raspberry Pi 3/4/5 are the A53, A72 and A76.
_ARM_PARTS = {
    0xD03: "Cortex-A53", 0xD04: "Cortex-A35", 0xD05: "Cortex-A55", 0xD07: "Cortex-A57",
    0xD08: "Cortex-A72", 0xD09: "Cortex-A73", 0xD0A: "Cortex-A75", 0xD0B: "Cortex-A76",
    0xD0C: "Neoverse-N1", 0xD0D: "Cortex-A77", 0xD40: "Neoverse-V1", 0xD41: "Cortex-A78",
    0xD46: "Cortex-A510", 0xD47: "Cortex-A710", 0xD49: "Neoverse-N2", 0xD4F: "Neoverse-V2",
}  # fmt: skip


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's name: x86 says it ("model name"); arm64 kernels give only the MIDR numbers,
    named here for ARM's own cores."""
    info = _read("/proc/cpuinfo") if cpuinfo is None else cpuinfo

    def field(key: str) -> str | None:
        m = re.search(rf"^{key}\s*:\s*(.+)$", info, re.MULTILINE)
        return m.group(1).strip() if m else None

    if name := field("model name") or field("cpu model"):
        return name
    implementer, part = field("CPU implementer"), field("CPU part")
    if implementer and part:
        try:
            if int(implementer, 16) == 0x41 and int(part, 16) in _ARM_PARTS:
                return f"ARM {_ARM_PARTS[int(part, 16)]}"
        except ValueError:
            pass
        return f"CPU implementer {implementer} part {part}"
    return field("Hardware") or platform.processor() or "unknown"


def board() -> str | None:
    """What machine this is: the device tree's model (a Raspberry Pi names itself there) or
    compatible string (QEMU's virt machine has only "linux,dummy-virt"), else DMI."""
    model = _read("/proc/device-tree/model").strip("\0\n ")
    if model:
        return model
    compatible = _read("/proc/device-tree/compatible").split("\0")[0].strip()
    if compatible:
        return compatible
    vendor = _read("/sys/class/dmi/id/sys_vendor").strip()
    product = _read("/sys/class/dmi/id/product_name").strip()
    return " ".join(p for p in (vendor, product) if p) or None


# --- emulation -------------------------------------------------------------------------------

QEMU_USER = "qemu-user"
QEMU_SYSTEM_TCG = "qemu-system (tcg)"
# the arm64 VM runner (bench/arm64) puts this on the guest kernel's command line
CMDLINE_FLAG = "netplane.emulation"


@dataclass(frozen=True, slots=True)
class MachineFacts:
    """What emulation detection looks at, read once so that `classify` stays pure."""

    machine: str  # uname: what programs see (qemu-user reports the emulated architecture)
    kernel_arch: str  # what the kernel itself is built for ("" when it does not say)
    cpuinfo: str
    cmdline: str  # the kernel command line
    dt_compatible: tuple[str, ...]  # device tree (arm64 boards and QEMU's virt machine)
    dmi_vendor: str  # DMI/SMBIOS (x86, and arm64 with UEFI)
    clocksources: str
    declared: str  # NETPLANE_BENCH_EMULATED: an explicit answer wins

    @classmethod
    def read(cls) -> MachineFacts:
        return cls(
            machine=platform.machine(),
            kernel_arch=_kernel_arch(),
            cpuinfo=_read("/proc/cpuinfo"),
            cmdline=_read("/proc/cmdline").strip(),
            dt_compatible=tuple(c for c in _read("/proc/device-tree/compatible").split("\0") if c),
            dmi_vendor=_read("/sys/class/dmi/id/sys_vendor").strip(),
            clocksources=_read(
                "/sys/devices/system/clocksource/clocksource0/available_clocksource"
            ).strip(),
            declared=os.environ.get("NETPLANE_BENCH_EMULATED", "").strip(),
        )


def _kernel_arch() -> str:
    """The running kernel's architecture, from files qemu-user does not rewrite (it reports
    the guest's architecture through uname)."""
    arch = _read("/proc/sys/kernel/arch").strip()
    if arch:
        return arch
    m = re.match(r"cpu:type:([^:,]+)", _read("/sys/devices/system/cpu/modalias"))
    return m.group(1) if m else ""


def _family(arch: str) -> str:
    """x86 or arm for the architectures that run each other's code only under emulation
    (an arm64 kernel running 32-bit arm programs, or x86_64 running i686, is not that)."""
    a = arch.lower()
    if a in ("x86_64", "amd64", "x86", "i386", "i686") or re.fullmatch(r"i\d86", a):
        return "x86"
    if a.startswith(("aarch64", "arm")):
        return "arm"
    return a


def classify(f: MachineFacts) -> str | None:
    """Why figures measured here are not hardware figures, or None when they are.

    - qemu-user (QEMU_USER...): programs of one architecture on another's kernel; netfilter
      netlink and sockopts are not translated, so the kernel benchmarks cannot run;
    - qemu-system (QEMU_SYSTEM_TCG, or "qemu-system (...)"): a whole emulated machine with
      its own kernel: everything runs, ten to fifty times slower than hardware, unevenly;
    - None: hardware, or a hardware-assisted VM (KVM), whose CPU runs the code natively.
    NETPLANE_BENCH_EMULATED overrides (`none` for real hardware).
    """
    if f.declared:
        return None if f.declared.lower() in ("none", "no", "0", "hardware") else f.declared
    if f.kernel_arch and _family(f.kernel_arch) != _family(f.machine):
        return f"{QEMU_USER} ({f.machine} programs on an {f.kernel_arch} kernel)"
    if _family(f.machine) == "arm" and re.search(
        r"^(vendor_id|flags)\s*:.*\b(GenuineIntel|AuthenticAMD|sse2)\b", f.cpuinfo, re.MULTILINE
    ):
        return f"{QEMU_USER} ({f.machine} programs on an x86 CPU)"
    m = re.search(rf"(?:^|\s){re.escape(CMDLINE_FLAG)}=(\S+)", f.cmdline)
    if m:
        accel = m.group(1).lower()
        if accel in ("none", "kvm", "hvf", "hardware"):
            return None
        return QEMU_SYSTEM_TCG if accel == "tcg" else f"qemu-system ({accel})"
    if "linux,dummy-virt" in f.dt_compatible or f.dmi_vendor == "QEMU":
        if _family(f.machine) != "x86":  # arm64 KVM guests look the same: say so
            return "qemu-system (QEMU machine, accelerator not declared: tcg or kvm)"
        if "kvm-clock" not in f.clocksources.split():
            return "qemu-system (QEMU machine without kvm-clock: tcg)"
    return None


def emulation() -> str | None:
    """Why this run is emulated (see `classify`), or None on real hardware."""
    return classify(MachineFacts.read())


def is_qemu_user(why: str | None) -> bool:
    """Whether EMULATION's answer means netfilter netlink is out of reach (qemu-user)."""
    return why is not None and why.startswith(QEMU_USER)


def _os_release() -> str:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME", "unknown")
    except OSError:
        return "unknown"


def _netplane_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("netplane")
    except PackageNotFoundError:
        return "unknown"


def _tool_version(cmd: list[str]) -> str | None:
    if not shutil.which(cmd[0]):
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (
        (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else None
    )


def _iptables_variant() -> str | None:
    """`legacy` or `nf_tables`: which backend the plain `iptables` command drives."""
    v = _tool_version(["iptables", "--version"]) or ""
    m = re.search(r"\((legacy|nf_tables)\)", v)
    return m.group(1) if m else None


def git_commit(repo: Path = _REPO) -> str | None:
    """The checkout's commit, read from .git directly so it works where git is not installed.
    In a worktree `.git` is a file naming the worktree's own directory (its HEAD), whose
    `commondir` holds the branches."""
    git = repo / ".git"
    try:
        if git.is_file():
            git = repo / git.read_text().split(":", 1)[1].strip()
        common = (
            git / (git / "commondir").read_text().strip() if (git / "commondir").exists() else git
        )
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        loose = common / ref
        if loose.exists():
            return loose.read_text().strip()
        for line in (common / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except (OSError, IndexError):
        return None
    return None
