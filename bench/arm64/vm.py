"""`netplane bench arm64-vm`: the benchmark suite on an emulated Raspberry Pi class machine.

A whole arm64 machine under qemu-system (TCG): QEMU's `virt` board with the Pi's cores
(cortex-a72 like a Pi 4, or cortex-a76 like a Pi 5), 4 vCPUs where the host has 4 cores
(else as many as it has), 4 GiB, Debian 12's own arm64 kernel and userland (image.py),
no network device at all. Its kernel is a real arm64 kernel, so everything the suite does
(network namespaces, iptables legacy and nft, nftables, conntrack, veths, bridges, dnsperf,
the reference CNI plugins) runs as on a Pi; only the CPU is emulated, 10-50x slower and
unevenly, and every result says so (`emulated: qemu-system (tcg)`, the CPU model).

One run: the host's `netplane bench calibrate` (fixed work) first; then a payload disk is
made with this checkout (the tree: it is installed editable, as on a Pi), the guest's
init script and the run's settings; the VM boots from a throwaway snapshot of the cached
image, installs the checkout, runs suite.sh (calibrate first) within a time budget, writes the
JSON results to the payload disk and powers itself off; the results are read back with
debugfs (no mount), copied to the output directory and shown beside the newest host run of
each benchmark there with `compare`.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from netplane.bench._results import CMDLINE_FLAG, Result, ResultError, load_result
from netplane.bench.arm64 import image as image_mod
from netplane.bench.arm64.image import CACHE, ImageError, log

REPO = Path(__file__).resolve().parents[2]
CPUS = ("cortex-a72", "cortex-a76")  # Raspberry Pi 4, Raspberry Pi 5
BOOT_MARGIN = 900  # seconds for boot, installing netplane and powering off, beyond the budget


@dataclass(frozen=True, slots=True)
class VmPlan:
    cpu: str
    smp: int
    memory_mb: int
    budget: int  # seconds the suite may take inside the VM
    suite_args: tuple[str, ...]

    @classmethod
    def make(
        cls,
        cpu: str = "cortex-a72",
        smp: int | None = None,
        memory_mb: int = 4096,
        budget: int | None = None,
        quick: bool = False,
        only: tuple[str, ...] = (),
    ) -> VmPlan:
        if cpu not in CPUS:
            raise ValueError(f"cpu must be one of {', '.join(CPUS)} (Raspberry Pi 4 / 5)")
        smp = smp or min(4, os.cpu_count() or 1)
        if smp < 1 or memory_mb < 1024:
            raise ValueError("at least 1 vCPU and 1024 MiB")
        args = (*(("--quick",) if quick else ()), *(("--only", ",".join(only)) if only else ()))
        return cls(cpu, smp, memory_mb, budget or (2400 if quick else 6 * 3600), args)

    def qemu_argv(self, kdir: Path, disk: Path, payload: Path) -> list[str]:
        """The machine: no NIC (-nic none), the image as a throwaway snapshot, the payload
        disk writable, entropy from the host (Python blocks in getrandom() without it)."""
        cmdline = (
            f"root=LABEL=nproot rw console=ttyAMA0 init=/sbin/netplane-vm-init panic=1 "
            f"loglevel=4 {CMDLINE_FLAG}=tcg"
        )
        return [
            "qemu-system-aarch64",
            "-M",
            "virt",
            "-cpu",
            self.cpu,
            "-smp",
            str(self.smp),
            "-m",
            str(self.memory_mb),
            "-accel",
            "tcg,thread=multi",
            "-nographic",
            "-nic",
            "none",
            "-no-reboot",
            "-kernel",
            str(kdir / "vmlinuz"),
            "-initrd",
            str(kdir / "initrd.img"),
            "-append",
            cmdline,
            "-drive",
            f"file={disk},format=raw,if=none,id=root,snapshot=on,cache=unsafe",
            "-device",
            "virtio-blk-pci,drive=root",
            "-drive",
            f"file={payload},format=raw,if=none,id=payload,cache=unsafe",
            "-device",
            "virtio-blk-pci,drive=payload",
            "-device",
            "virtio-rng-pci",
        ]


def payload(plan: VmPlan, repo: Path, where: Path) -> Path:
    """The payload disk: this checkout's files, the guest's init script, the settings."""
    root = where / "payload"
    (root / "results").mkdir(parents=True)
    shutil.copy(REPO / "bench/arm64/guest-init.sh", root / "init.sh")
    (root / "run.conf").write_text(
        f"MODE=bench\nBUDGET={plan.budget}\nSUITE_ARGS='{' '.join(plan.suite_args)}'\n"
    )
    files = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-co", "--exclude-standard", "-z"],
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    src = root / "src"
    for name in filter(None, (f.decode() for f in files)):
        if (repo / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / name, src / name)
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    if commit:  # what bench/_results.git_commit reads (a worktree's .git is only a file)
        (src / ".git").mkdir()
        (src / ".git/HEAD").write_text(commit + "\n")
    size_mb = 512 + sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) // 2**20
    disk = where / "payload.img"
    image_mod._run(
        ["mkfs.ext4", "-q", "-L", "nppayload", "-d", str(root), str(disk), f"{size_mb}M"],
        "mkfs.ext4 (payload)",
    )
    shutil.rmtree(root)
    return disk


def boot(argv: list[str], timeout: float, console: Path, tmpdir: Path) -> int:
    """Run qemu until the guest powers off (or TIMEOUT: killed). The console goes to
    CONSOLE; the guest's own progress lines are echoed to stderr."""
    env = {**os.environ, "TMPDIR": str(tmpdir)}  # the root snapshot's scratch file
    with console.open("w") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )

        def pump() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip("\r\n")
                out.write(line + "\n")
                out.flush()
                if (
                    line.startswith(
                        ("netplane-vm:", "=== ", "calibrate:", "suite:", "wrote ", "skipped ")
                    )
                    or "EMULATED" in line
                ):
                    print(f"  vm| {line}", file=sys.stderr, flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"the VM did not power off within {timeout:.0f} s: killing qemu")
            proc.kill()
            proc.wait()
            return -9
        finally:
            reader.join(10)


def read_results(disk: Path, dest: Path) -> list[Path]:
    """Copy /results off the payload disk (debugfs reads ext4 without mounting it)."""
    dest.mkdir(parents=True, exist_ok=True)
    image_mod._run(["debugfs", "-R", f"rdump /results {dest}", str(disk)], "debugfs rdump")
    return sorted((dest / "results").glob("*"))


def newest_host_run(output_dir: Path, benchmark: str) -> tuple[Path, Result] | None:
    """The newest result of BENCHMARK in OUTPUT_DIR measured on hardware (not emulated)."""
    for path in sorted(output_dir.glob(f"{benchmark}-*.json"), key=os.path.getmtime, reverse=True):
        try:
            r = load_result(path)
        except ResultError:
            continue
        if not r.emulated:
            return path, r
    return None


def run(
    plan: VmPlan,
    output_dir: Path,
    cache: Path = CACHE,
    refresh: bool = False,
    host_calibrate: bool = True,
) -> list[Path]:
    """Build (or reuse) the image, run the suite in the VM, return the result files."""
    if os.geteuid() != 0:
        raise ImageError("run as root (debootstrap, apt and the image's file owners need it)")
    if not (REPO / "pyproject.toml").exists():
        raise ImageError(f"needs a checkout of netplane (the VM gets its files): {REPO}")
    cache.mkdir(parents=True, exist_ok=True)
    output_dir = output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    with (cache / "lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another arm64-vm run holds {cache / 'lock'}: waiting")
            fcntl.flock(lock, fcntl.LOCK_EX)
        start = time.monotonic()
        img = image_mod.ensure(REPO, cache, refresh)
        log(f"image: {img.info['kernel']}, built {img.info.get('built')}")
        if host_calibrate:
            _host_calibrate(output_dir)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        logs = output_dir / f"arm64-vm-{stamp}"
        logs.mkdir()
        work = Path(tempfile.mkdtemp(prefix=f"run-{stamp}-", dir=cache))
        disk = payload(plan, REPO, work)
        argv = plan.qemu_argv(img.kernel, img.disk, disk)
        log(
            f"booting: {plan.cpu}, {plan.smp} vCPUs, {plan.memory_mb} MiB, no network; "
            f"suite budget {plan.budget} s; console: {logs / 'console.log'}"
        )
        code = boot(argv, plan.budget + BOOT_MARGIN, logs / "console.log", work)
        files = []
        for p in read_results(disk, work / "out"):
            target = output_dir / p.name if p.suffix == ".json" else logs / p.name
            shutil.move(p, target)
            if p.suffix == ".json":
                files.append(target)
        shutil.rmtree(work)
        status = (logs / "status").read_text().strip() if (logs / "status").exists() else "?"
        (logs / "run.json").write_text(
            json.dumps(
                {
                    "qemu": argv,
                    "exit": code,
                    "status": status,
                    "image": img.info,
                    "results": [f.name for f in files],
                },
                indent=1,
            )
            + "\n"
        )
        log(
            f"VM exited ({code}), guest status: {status}; {len(files)} result file(s) in "
            f"{output_dir}, logs in {logs}; {time.monotonic() - start:.0f} s in all"
        )
        return files


def _host_calibrate(output_dir: Path) -> None:
    """The same fixed work on the host, right before the VM: the slowdown's denominator."""
    from netplane.bench._results import new_result, write_result
    from netplane.bench.calibrate import run as calibrate

    log("host: netplane bench calibrate (the slowdown's reference)")
    params, series, skipped = calibrate()
    write_result(new_result("calibrate", params, series, skipped), output_dir)
