"""The arm64 VM runner's cheap parts: the initramfs, the machine it boots, the scripts and
the build sandbox. Booting the VM itself is a benchmark (bench/arm64/run-vm.sh), not a test:
it takes tens of minutes under emulation."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from netplane.bench._results import CMDLINE_FLAG
from netplane.bench.arm64 import _initramfs, _sandbox
from netplane.bench.arm64.vm import VmPlan

REPO = Path(__file__).resolve().parents[2]
ARM64 = REPO / "bench" / "arm64"


def _module(path: Path, depends: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF...\0license=GPL\0depends=" + depends.encode() + b"\0vermagic=6.1\0")


def test_modules_load_after_their_dependencies(tmp_path):
    mods = tmp_path / "kernel"
    _module(mods / "fs/ext4/ext4.ko", "jbd2,mbcache,crc16")
    _module(mods / "fs/jbd2/jbd2.ko", "")
    _module(mods / "fs/mbcache.ko", "")
    _module(mods / "lib/crc16.ko", "")
    _module(mods / "drivers/virtio/virtio_pci.ko", "virtio_pci_modern_dev")
    _module(mods / "drivers/virtio/virtio_pci_modern_dev.ko", "")
    files = _initramfs.module_files(tmp_path)
    assert _initramfs.depends(files["ext4"].read_bytes()) == ["jbd2", "mbcache", "crc16"]
    order = _initramfs.load_order(
        ["virtio_pci", "ext4"], lambda n: _initramfs.depends(files[n].read_bytes())
    )
    assert order == ["virtio_pci_modern_dev", "virtio_pci", "jbd2", "mbcache", "crc16", "ext4"]
    with pytest.raises(_initramfs.InitramfsError, match=r"virtio_blk .*not in this kernel"):
        _initramfs.load_order(["virtio_blk"], lambda n: None)


def test_initramfs_is_a_cpio_the_kernel_can_unpack(tmp_path):
    mods = tmp_path / "modules"
    for name in _initramfs.ROOT_MODULES:
        _module(mods / f"{name}.ko", "")
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"#!busybox")
    archive = _initramfs.build(mods, busybox)
    assert archive.startswith(b"070701") and b"TRAILER!!!" in archive
    if not shutil.which("busybox"):
        pytest.skip("busybox (bootstrap.sh installs busybox-static) is needed to list it")
    listing = subprocess.run(
        ["busybox", "cpio", "-tv"], input=archive, capture_output=True, check=True
    ).stdout.decode()
    assert "modules/ext4.ko" in listing and " init" in listing.replace("\n", " \n")
    console = next(line for line in listing.splitlines() if line.endswith("dev/console"))
    assert console.startswith("crw")
    out = tmp_path / "unpacked"
    out.mkdir()
    subprocess.run(
        ["busybox", "cpio", "-id"], input=archive, cwd=out, check=True, capture_output=True
    )
    assert (out / "init").read_text() == _initramfs.INIT
    assert os.stat(out / "init").st_mode & stat.S_IXUSR
    assert (out / "modules.order").read_text().split() == list(_initramfs.ROOT_MODULES)


def test_the_machine_is_a_pi_shaped_arm64_with_no_network(tmp_path):
    plan = VmPlan.make("cortex-a76", smp=4, quick=True, only=("proxy-sync", "dataplane"))
    argv = plan.qemu_argv(tmp_path, tmp_path / "root.img", tmp_path / "payload.img")
    joined = " ".join(argv)
    assert argv[0] == "qemu-system-aarch64" and "-cpu cortex-a76" in joined
    assert "-smp 4" in joined and "-m 4096" in joined
    assert argv[argv.index("-nic") + 1] == "none"
    assert "snapshot=on" in argv[argv.index("-drive") + 1]  # the cached image is never changed
    assert f"{CMDLINE_FLAG}=tcg" in argv[argv.index("-append") + 1]  # how results get labelled
    assert plan.suite_args == ("--quick", "--only", "proxy-sync,dataplane")
    assert VmPlan.make().smp == min(4, os.cpu_count())
    with pytest.raises(ValueError, match="cortex-a72, cortex-a76"):
        VmPlan.make("cortex-a53")


@pytest.mark.parametrize("script", sorted(ARM64.glob("*.sh")), ids=lambda p: p.name)
def test_arm64_scripts_parse(script):
    shell = "sh" if script.name == "guest-init.sh" else "bash"  # PID 1 in the VM is dash
    subprocess.run([shell, "-n", str(script)], check=True)


def test_suite_rejects_unknown_arguments():
    out = subprocess.run(
        ["bash", str(ARM64 / "suite.sh"), "--nope"], capture_output=True, text=True
    )
    assert out.returncode == 2 and "usage: suite.sh" in out.stderr


def _fake_checkout(tmp_path: Path, fail: str = "") -> Path:
    """A checkout whose netplane/python/pytest only log their arguments (FAIL: the
    benchmark that exits 1), with the real suite.sh."""
    (tmp_path / "bench/arm64").mkdir(parents=True)
    shutil.copy(ARM64 / "suite.sh", tmp_path / "bench/arm64/suite.sh")
    bin_ = tmp_path / ".venv/bin"
    bin_.mkdir(parents=True)
    for tool in ("netplane", "python", "pytest"):
        (bin_ / tool).write_text(
            f'#!/bin/sh\necho "{tool} $*" >>"{tmp_path}/calls"\n'
            f'case "$*" in *"bench {fail} "*) exit 1 ;; esac\n'
        )
        (bin_ / tool).chmod(0o755)
    return tmp_path


def _suite(checkout: Path, *args: str) -> tuple[int, list[str]]:
    out = subprocess.run(
        ["bash", str(checkout / "bench/arm64/suite.sh"), *args, "--output-dir", "o"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    calls = (checkout / "calls").read_text().splitlines()
    return out.returncode, [c for c in calls if c.startswith("netplane")]


def test_suite_runs_proxy_sync_once_per_scale_small_first(tmp_path):
    code, calls = _suite(_fake_checkout(tmp_path), "--only", "proxy-sync,dataplane")
    assert code == 0
    assert calls == [
        "netplane bench proxy-sync --services 1000 --output-dir o",
        "netplane bench proxy-sync --services 5000 --output-dir o",
        "netplane bench dataplane --services 10 --services 100 --services 1000 --output-dir o",
    ]


def test_suite_counts_failed_parts_and_goes_on(tmp_path):
    code, calls = _suite(_fake_checkout(tmp_path, fail="calibrate"), "--quick", "--only",
                         "calibrate,proxy-sync")  # fmt: skip
    assert code == 1
    assert calls == [
        "netplane bench calibrate --quick --output-dir o",
        "netplane bench proxy-sync --quick --output-dir o",
    ]


def test_both_runners_run_the_same_suite():
    for runner, target in (
        ("run-hardware.sh", "bench/arm64/suite.sh"),
        ("run-vm.sh", "netplane bench arm64-vm"),
    ):
        assert target in (ARM64 / runner).read_text()
    assert "bench/arm64/suite.sh" in (ARM64 / "guest-init.sh").read_text()


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (user namespaces with id maps)")
def test_the_build_sandbox_is_isolated(tmp_path):
    """Its own PID 1, only a loopback device, root with real file owners: run with the
    host's busybox (the qemu-user handler is registered but not needed for it)."""
    busybox = shutil.which("busybox")
    if not busybox or not Path(_sandbox.QEMU).exists():
        pytest.skip("needs busybox-static and qemu-user-static")
    root = tmp_path / "root"
    for d in ("bin", "proc", "sys"):
        (root / d).mkdir(parents=True)
    shutil.copy(busybox, root / "bin/busybox")
    script = (
        "/bin/busybox --install -s /bin; echo pid=$$ uid=$(id -u); ls /sys/class/net; "
        "touch /owned; chown 42:42 /owned; cat /proc/sys/fs/binfmt_misc/netplane-aarch64"
    )
    log = tmp_path / "log"
    with log.open("w") as out:
        _sandbox.run(root, ["/bin/busybox", "sh", "-c", script], {"PATH": "/bin"}, 60, out)
    text = log.read_text()
    assert "pid=1 uid=0" in text
    assert text.split("uid=0", 1)[1].split()[0] == "lo"  # the only network device
    assert "enabled" in text and "flags: F" in text
    assert (root / "owned").stat().st_uid == 42  # the identity map: real owners
    with log.open("w") as out, pytest.raises(_sandbox.SandboxError, match="exited with 3"):
        _sandbox.run(root, ["/bin/busybox", "sh", "-c", "exit 3"], {}, 60, out)


def test_the_vm_installs_what_the_benchmarks_need_only():
    from netplane.bench.arm64.image import requirements

    reqs = requirements(REPO)
    names = {r.split(">")[0].split("=")[0].split("[")[0] for r in reqs}
    assert {"pytest", "pytest-benchmark", "python-iptables", "scipy"} <= names
    assert any(r.startswith("setuptools") for r in reqs)  # editable install, offline
    assert "ruff" not in names and "grpcio" not in names  # test-only tools stay out


def test_payload_disk_carries_the_checkout_and_results_come_back(tmp_path):
    from netplane.bench.arm64.vm import payload, read_results

    if not shutil.which("mkfs.ext4") or not shutil.which("debugfs"):
        pytest.skip("needs e2fsprogs")
    plan = VmPlan.make(quick=True, budget=600)
    disk = payload(plan, REPO, tmp_path)
    conf = subprocess.run(["debugfs", "-R", "cat /run.conf", str(disk)], capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    assert "MODE=bench" in conf and "BUDGET=600" in conf and "SUITE_ARGS='--quick'" in conf
    listing = subprocess.run(["debugfs", "-R", "ls /src/bench/arm64", str(disk)],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "suite.sh" in listing
    # what the guest leaves behind comes back without mounting anything
    made = tmp_path / "made"
    (made / "results").mkdir(parents=True)
    (made / "results/calibrate-aarch64-x-emulated.json").write_text("{}")
    back = tmp_path / "back.img"
    subprocess.run(["mkfs.ext4", "-q", "-d", str(made), str(back), "8M"], check=True)
    got = read_results(back, tmp_path / "out")
    assert [p.name for p in got] == ["calibrate-aarch64-x-emulated.json"]
