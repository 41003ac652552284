"""Benchmark result files: one JSON document per run, with the platform it ran on and RAW samples.

Raw samples (not just medians) are kept so that `netplane bench compare` can run a proper
significance test between two runs made on different days, commits or machines. The
platform block is what makes two files comparable at all: a figure without the CPU, kernel
and iptables variant it was measured with means little. A run under qemu-user emulation is
labelled EMULATED in the file itself so its figures can never pass for hardware figures.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import shutil
import subprocess
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
    return {
        "arch": platform.machine(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count() or 0,
        "kernel": platform.release(),
        "distribution": _os_release(),
        "python": platform.python_version(),
        "netplane": _netplane_version(),
        "git_commit": git_commit(),
        "iptables": _tool_version(["iptables", "--version"]),
        "iptables_variant": _iptables_variant(),
        "iptables_legacy": _tool_version(["iptables-legacy", "--version"]),
        "iptables_nft": _tool_version(["iptables-nft", "--version"]),
        "nft": _tool_version(["nft", "--version"]),
        "emulated": emulation(),
    }


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_model() -> str:
    # x86 says "model name"; arm64 kernels often give only "CPU part", the Pi's DT gives "Model"
    info = _cpuinfo()
    for key in ("model name", "Model", "Hardware", "cpu model", "CPU part"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", info, re.MULTILINE)
        if m:
            return m.group(1).strip()
    return platform.processor() or "unknown"


def emulation() -> str | None:
    """Why this run is emulated (for example "qemu-user"), or None on real hardware.

    The arm64 chroot script says so explicitly; as a second line of defence an aarch64
    userland whose /proc/cpuinfo describes an x86 CPU is qemu-user (it passes the host's file).
    """
    declared = os.environ.get("NETPLANE_BENCH_EMULATED", "").strip()
    if declared:
        return declared
    info = _cpuinfo()
    if platform.machine() in ("aarch64", "arm64") and re.search(
        r"^(vendor_id|flags)\s*:.*\b(GenuineIntel|AuthenticAMD|sse2)\b", info, re.MULTILINE
    ):
        return "qemu-user (aarch64 userland on an x86 CPU)"
    return None


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
    """The checkout's commit, read from .git directly so it works where git is not installed."""
    git = repo / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        loose = git / ref
        if loose.exists():
            return loose.read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        return None
    return None
