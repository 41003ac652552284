"""The arm64 VM's image: Debian 12 arm64 from Debian's packages, built once and cached.

Layout of the cache (NETPLANE_ARM64_VM_CACHE, default /var/cache/netplane/arm64-vm; never
inside the repository):

    apt/            a private arm64 apt root (lists only; the host's apt is not touched)
    kernel/<ver>/   Debian's linux-image-arm64 kernel, its modules and our initramfs
    wheels/<hash>/  netplane's dependencies as aarch64 wheels (plus the few sdists)
    rootfs/         the root directory: debootstrap, then the second stage and the
                    virtualenv under qemu-user (_sandbox), each step marked when done
    rootfs.img      the ext4 disk made from it (mkfs.ext4 -d: no loop mount)
    image.json      what the disk holds and how long each step took

Each step is redone only when its input changed (package list, kernel version, netplane's
dependency list), so a warm run spends no time here. Nothing here needs qemu-system: the
only emulation is qemu-user running the packages' own maintainer scripts and pip.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netplane.bench.arm64 import _initramfs, _sandbox

CACHE = Path(os.environ.get("NETPLANE_ARM64_VM_CACHE", "/var/cache/netplane/arm64-vm"))
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
SECURITY_MIRROR = os.environ.get("DEBIAN_SECURITY_MIRROR", "http://deb.debian.org/debian-security")
SUITE = "bookworm"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
HOST_PACKAGES = ("qemu-system-arm", "qemu-user-static", "debootstrap", "e2fsprogs")
GUEST_PACKAGES = (
    "kmod",
    "iproute2",
    "iptables",
    "nftables",
    "conntrack",  # the kernel interfaces
    "python3",
    "python3-venv",
    "python3-dev",
    "gcc",
    "libc6-dev",  # python-iptables has no wheel: its C part builds here
    "dnsperf",
    "dnsutils",
    "containernetworking-plugins",  # DNS load, dig, reference CNI
    "procps",
)
IMAGE_SIZE = "8G"  # sparse; the image holds ~1.6 GB
VENV = "/opt/netplane-venv"
# PID 1 of every boot: mount the run's payload disk and hand over to its init script
STUB = """#!/bin/sh
# netplane arm64 VM: the run's own init script comes on the disk labelled nppayload.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /payload
mount LABEL=nppayload /payload && exec /bin/sh /payload/init.sh
echo "netplane-vm: no payload disk"
echo o >/proc/sysrq-trigger
"""


class ImageError(RuntimeError):
    """A step of the image build failed; the message names it and where its log is."""


def _cpu_seconds() -> float:
    """CPU time of this process and its waited-for children (user + system)."""
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def log(msg: str) -> None:
    print(f"arm64-vm: {msg}", file=sys.stderr, flush=True)


def _run(
    argv: list[str], what: str, logfile: Path | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run ARGV; its output goes to LOGFILE when given (long steps), else is kept for the
    error message. ImageError says which step failed and shows the end of its output."""
    try:
        if logfile is None:
            return subprocess.run(argv, check=True, text=True, capture_output=True, **kwargs)
        with logfile.open("a") as out:
            out.write(f"\n### {what}: {' '.join(argv)}\n")
            out.flush()
            return subprocess.run(argv, check=True, text=True, stdout=out, stderr=out, **kwargs)
    except subprocess.CalledProcessError as e:
        text = logfile.read_text(errors="replace") if logfile else (e.stderr or e.stdout or "")
        tail = "\n".join(text.strip().splitlines()[-15:])
        where = f"; log: {logfile}" if logfile else ""
        raise ImageError(f"{what} failed ({' '.join(argv[:3])} ...){where}:\n{tail}") from e
    except subprocess.TimeoutExpired as e:
        raise ImageError(f"{what} did not finish in {e.timeout:.0f} s") from e


def ensure_host_packages() -> None:
    """qemu, debootstrap and e2fsprogs from Debian, installed when missing."""
    missing = [
        p
        for p in HOST_PACKAGES
        if "install ok installed"
        not in subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True
        ).stdout
    ]
    if missing:
        log(f"installing {' '.join(missing)} (apt)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        lock = ["-o", "DPkg::Lock::Timeout=900"]
        _run(["apt-get", *lock, "update", "-qq"], "apt-get update", env=env)
        _run(
            ["apt-get", *lock, "install", "-y", "-qq", "--no-install-recommends", *missing],
            "apt-get install",
            env=env,
        )


# --- a private arm64 apt root: the kernel and busybox debs, without touching the host's apt ---


def _apt(cache: Path, *args: str, timeout: float = 900, cwd: Path | None = None) -> str:
    root = cache / "apt"
    opts = [
        f"-oDir={root}",
        f"-oDir::Etc={root}/etc/apt",
        f"-oDir::State={root}/var/lib/apt",
        f"-oDir::State::status={root}/var/lib/dpkg/status",
        f"-oDir::Cache={root}/var/cache/apt",
        "-oAPT::Architecture=arm64",
        "-oAPT::Architectures=arm64",
        "-oDebug::NoLocking=1",
        "-oAPT::Sandbox::User=root",
    ]
    tool = "apt-cache" if args[0] in ("depends", "policy", "show") else "apt-get"
    return _run([tool, *opts, *args], f"{tool} {args[0]} (arm64)", timeout=timeout, cwd=cwd).stdout


def apt_update(cache: Path) -> None:
    root = cache / "apt"
    for d in (
        "etc/apt/apt.conf.d",
        "etc/apt/preferences.d",
        "etc/apt/sources.list.d",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
        "var/lib/dpkg",
    ):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "var/lib/dpkg/status").touch()
    src = f"[arch=arm64 signed-by={KEYRING}]"
    (root / "etc/apt/sources.list").write_text(
        f"deb {src} {MIRROR} {SUITE} main\n"
        f"deb {src} {MIRROR} {SUITE}-updates main\n"
        f"deb {src} {SECURITY_MIRROR} {SUITE}-security main\n"
    )
    _apt(cache, "update", "-qq")


def latest_kernel(cache: Path) -> str:
    """The kernel package linux-image-arm64 points at now (e.g. linux-image-6.1.0-57-arm64)."""
    for line in _apt(cache, "depends", "linux-image-arm64").splitlines():
        key, _, dep = line.strip().partition(": ")
        if key == "Depends" and dep.startswith("linux-image-") and dep.endswith("-arm64"):
            return dep
    raise ImageError("linux-image-arm64 names no kernel package")


def kernel(cache: Path, package: str) -> Path:
    """cache/kernel/<version>/ with vmlinuz, lib/modules/<version> and initrd.img."""
    version = package.removeprefix("linux-image-")
    out = cache / "kernel" / version
    if (out / "initrd.img").exists():
        return out
    log(f"kernel {package} and busybox-static (arm64) from Debian")
    tmp = cache / "kernel" / f".{version}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "debs").mkdir(parents=True)
    _apt(cache, "download", "-q", package, "busybox-static", cwd=tmp / "debs")
    for deb in (tmp / "debs").glob("*.deb"):
        _run(["dpkg-deb", "-x", str(deb), str(tmp / "x")], f"unpacking {deb.name}")
    shutil.move(tmp / "x" / "boot" / f"vmlinuz-{version}", tmp / "vmlinuz")
    (tmp / "lib").mkdir()
    shutil.move(tmp / "x" / "lib" / "modules", tmp / "lib" / "modules")
    busybox = tmp / "x" / "bin" / "busybox"
    (tmp / "initrd.img").write_bytes(_initramfs.build(tmp / "lib/modules" / version, busybox))
    shutil.rmtree(tmp / "x")
    shutil.rmtree(tmp / "debs")
    tmp.rename(out)
    return out


# --- netplane's dependencies as aarch64 wheels, downloaded on the host ---


# from the test extra, only what the micro-benchmarks need: the rest (fuzzers, CRI clients)
# serves tests, which the VM does not run
MICRO_BENCH_TOOLS = ("pytest", "pytest-benchmark", "pytest-timeout")


def requirements(repo: Path) -> list[str]:
    """What the VM installs: netplane's dependencies and bench extra from pyproject.toml,
    the micro-benchmarks' pytest plugins and netplane's build backend (the VM installs the
    checkout editable, offline, as bootstrap.sh does on a Pi)."""
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    test = [
        r
        for r in extras.get("test", [])
        if re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0] in MICRO_BENCH_TOOLS
    ]
    build = tomllib.loads((repo / "pyproject.toml").read_text())["build-system"]["requires"]
    reqs = [*project["dependencies"], *extras.get("bench", []), *test, *build]
    return sorted({r.split("#")[0].strip() for r in reqs})


SDIST_ONLY = ("python-iptables",)  # no aarch64 wheel on PyPI: built in the image (gcc)
BUILD_TOOLS = ("setuptools>=77", "wheel")  # for those sdists, offline


def wheels(cache: Path, reqs: list[str]) -> Path:
    key = hashlib.sha256("\n".join(reqs).encode()).hexdigest()[:16]
    out = cache / "wheels" / key
    if (out / ".complete").exists():
        return out
    log(f"downloading {len(reqs)} requirements as aarch64 wheels")
    tmp = out.with_name(f".{key}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pip = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--disable-pip-version-check",
        "-d",
        str(tmp),
    ]
    binary = [r for r in reqs if not r.lower().startswith(SDIST_ONLY)]
    sdists = [r for r in reqs if r.lower().startswith(SDIST_ONLY)]
    _run(
        [
            *pip,
            "--only-binary=:all:",
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            "--abi",
            "cp311",
            *(
                f"--platform={p}"
                for p in (
                    "manylinux2014_aarch64",
                    "manylinux_2_28_aarch64",
                    "manylinux_2_17_aarch64",
                )
            ),
            *binary,
        ],
        "pip download (aarch64)",
        timeout=1800,
    )
    if sdists:
        _run(
            [*pip, "--no-deps", "--no-binary=:all:", *sdists], "pip download (sdists)", timeout=600
        )
        _run([*pip, "--only-binary=:all:", *BUILD_TOOLS], "pip download (build tools)", timeout=600)
    (tmp / "requirements.txt").write_text("\n".join(reqs) + "\n")
    (tmp / ".complete").touch()
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


# --- the root directory and its disk ---


@dataclass(frozen=True, slots=True)
class Image:
    disk: Path
    kernel: Path  # the kernel directory (vmlinuz, initrd.img)
    info: dict


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _marker(root: Path, name: str) -> str | None:
    p = root / ".netplane" / name
    return p.read_text().strip() if p.exists() else None


def _mark(root: Path, name: str, value: str) -> None:
    (root / ".netplane").mkdir(exist_ok=True)
    (root / ".netplane" / name).write_text(value + "\n")


def _in_image(root: Path, script: str, what: str, timeout: float, logfile: Path) -> None:
    """Run a shell script in the image's root under qemu-user (see _sandbox)."""
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        # debootstrap's word for "mknod is not allowed here", as in any user namespace
        "container": "lxc",
        "DEBIAN_FRONTEND": "noninteractive",
    }
    with logfile.open("a") as out:
        out.write(f"\n### {what}\n")
        out.flush()
        try:
            _sandbox.run(root, ["/bin/sh", "-euxc", script], env, timeout, out)
        except (_sandbox.SandboxError, OSError) as e:
            raise ImageError(f"{what}: {e}; log: {logfile}") from e


def ensure(repo: Path, cache: Path = CACHE, refresh: bool = False) -> Image:
    """The image for REPO's dependency list, built or brought up to date as needed."""
    cache.mkdir(parents=True, exist_ok=True)
    info_path = cache / "image.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    timings: dict[str, float] = {}
    cpu_times: dict[str, float] = {}
    root, disk, logfile = cache / "rootfs", cache / "rootfs.img", cache / "build.log"
    ensure_host_packages()

    def step(name: str, fn: Callable[[], object]) -> None:
        """Run one build step; its wall time and the CPU time it and its children used
        (on a shared machine the wall time says more about the others than about us)."""
        start, cpu = time.monotonic(), _cpu_seconds()
        fn()
        timings[name] = round(time.monotonic() - start, 1)
        cpu_times[name] = round(_cpu_seconds() - cpu, 1)
        log(f"{name}: {timings[name]:.0f} s ({cpu_times[name]:.0f} s CPU, load {_load()})")

    if refresh or not info.get("kernel"):
        step("apt update (arm64)", lambda: apt_update(cache))
        package = latest_kernel(cache)
    else:
        package = info["kernel"]
    kdir_box: list[Path] = []
    step("kernel + initramfs", lambda: kdir_box.append(kernel(cache, package)))
    kdir = kdir_box[0]
    version = package.removeprefix("linux-image-")

    base_key = _key(SUITE, MIRROR, GUEST_PACKAGES, STUB, version)
    changed = False
    if _marker(root, "base") != base_key:
        changed = True
        logfile.write_text("")
        shutil.rmtree(root, ignore_errors=True)  # a half-configured system is not resumable
        log(f"debootstrap (arm64 {SUITE}, {len(GUEST_PACKAGES)} packages) into {root}")
        step(
            "debootstrap first stage",
            lambda: _run(
                [
                    "debootstrap",
                    "--arch=arm64",
                    "--foreign",
                    "--variant=minbase",
                    f"--include={','.join(GUEST_PACKAGES)}",
                    SUITE,
                    str(root),
                    MIRROR,
                ],
                "debootstrap first stage",
                logfile,
                timeout=3600,
            ),
        )
        # dpkg's fsyncs buy nothing while building (the disk is made afterwards)
        (root / "etc/dpkg/dpkg.cfg.d").mkdir(parents=True, exist_ok=True)
        (root / "etc/dpkg/dpkg.cfg.d/netplane-build").write_text("force-unsafe-io\n")
        log("second stage under qemu-user (the packages' own maintainer scripts)")
        step(
            "debootstrap second stage",
            lambda: _in_image(
                root,
                "/debootstrap/debootstrap --second-stage",
                "debootstrap second stage",
                3600,
                logfile,
            ),
        )
        modules = root / "usr/lib/modules"
        modules.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(modules / version, ignore_errors=True)
        shutil.copytree(kdir / "lib/modules" / version, modules / version, symlinks=True)
        step("depmod", lambda: _in_image(root, f"depmod -a {version}", "depmod", 600, logfile))
        stub = root / "sbin/netplane-vm-init"
        stub.write_text(STUB)
        stub.chmod(0o755)
        (root / "etc/hostname").write_text("netplane-arm64-vm\n")
        (root / "etc/dpkg/dpkg.cfg.d/netplane-build").unlink()
        _mark(root, "base", base_key)
        (root / ".netplane/venv").unlink(missing_ok=True)
        info = {"kernel": package}

    reqs = requirements(repo)
    venv_key = _key(reqs)
    if _marker(root, "venv") != venv_key:
        changed = True
        box: list[Path] = []
        step("aarch64 wheels (download)", lambda: box.append(wheels(cache, reqs)))
        dest = root / "tmp/wheels"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(box[0], dest)
        log(f"virtualenv {VENV} from {len(list(dest.iterdir()))} files, offline, under qemu-user")
        step(
            "virtualenv (pip, offline)",
            lambda: _in_image(
                root,
                f"""
            rm -rf {VENV}
            python3 -m venv {VENV}
            {VENV}/bin/pip install -q --no-index --find-links /tmp/wheels \\
                --disable-pip-version-check -r /tmp/wheels/requirements.txt
            rm -rf /root/.cache
        """,
                "virtualenv",
                3600,
                logfile,
            ),
        )
        shutil.rmtree(dest)
        _mark(root, "venv", venv_key)

    if changed or not disk.exists():
        tmp = disk.with_name(".rootfs.img.tmp")
        tmp.unlink(missing_ok=True)
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
        step(
            "ext4 disk (mkfs.ext4 -d)",
            lambda: _run(
                ["mkfs.ext4", "-q", "-L", "nproot", "-d", str(root), str(tmp), IMAGE_SIZE],
                "mkfs.ext4",
                logfile,
                timeout=1800,
            ),
        )
        tmp.rename(disk)
        info.update(
            {
                "kernel": package,
                "packages": list(GUEST_PACKAGES),
                "suite": SUITE,
                "requirements": reqs,
                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
        info["build_seconds"] = timings  # what this (re)build cost, step by step
        info["build_cpu_seconds"] = cpu_times
        info["build_total_seconds"] = round(sum(timings.values()), 1)
        info["build_load"] = _load()
        log(
            f"image ready: {disk} ({info['build_total_seconds']:.0f} s, "
            f"{sum(cpu_times.values()):.0f} s CPU)"
        )
    info_path.write_text(json.dumps(info, indent=1) + "\n")
    return Image(disk, kdir, info)
