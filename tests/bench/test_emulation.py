"""Emulation detection: qemu-user skips the kernel benchmarks, a whole emulated machine
(qemu-system) runs them and is labelled, hardware is not labelled.

The facts are what each kind of machine really shows (taken from this host, a qemu-user
chroot, the arm64 VM of bench/arm64 and a Raspberry Pi 4's /proc and /sys).
"""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from netplane.bench import _netns, _results
from netplane.bench._results import (
    QEMU_SYSTEM_TCG,
    MachineFacts,
    classify,
    cpu_model,
    is_qemu_user,
    load_result,
)
from netplane.cli import cli

PI4_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

Hardware\t: BCM2835
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""
X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme de pse tsc msr sse sse2 hypervisor
"""

HARDWARE_PI = MachineFacts(
    machine="aarch64",
    kernel_arch="aarch64",
    cpuinfo=PI4_CPUINFO,
    cmdline="coherent_pool=1M 8250.nr_uarts=1 console=ttyS0,115200 root=PARTUUID=4e639091-02",
    dt_compatible=("raspberrypi,4-model-b", "brcm,bcm2711"),
    dmi_vendor="",
    clocksources="arch_sys_counter",
    declared="",
)
QEMU_USER_CHROOT = dataclasses.replace(
    HARDWARE_PI,
    kernel_arch="x86_64",
    cpuinfo=X86_CPUINFO,
    cmdline="console=ttyS0",
    dt_compatible=(),
    clocksources="kvm-clock tsc acpi_pm",
)
VM_TCG = dataclasses.replace(
    HARDWARE_PI,
    cpuinfo=PI4_CPUINFO.split("\nHardware")[0],
    cmdline="root=LABEL=nproot rw console=ttyAMA0 netplane.emulation=tcg",
    dt_compatible=("linux,dummy-virt",),
)
X86_KVM_GUEST = MachineFacts(
    machine="x86_64",
    kernel_arch="x86_64",
    cpuinfo=X86_CPUINFO,
    cmdline="root=/dev/vda",
    dt_compatible=(),
    dmi_vendor="QEMU",
    clocksources="kvm-clock tsc acpi_pm",
    declared="",
)


def test_hardware_is_not_labelled():
    assert classify(HARDWARE_PI) is None
    assert classify(X86_KVM_GUEST) is None  # a hardware-assisted VM runs the code natively
    assert _results.emulation() is None  # this test host


def test_qemu_user_is_told_by_the_kernel_not_by_uname():
    why = classify(QEMU_USER_CHROOT)
    assert is_qemu_user(why) and "x86_64 kernel" in why
    # older kernels without kernel.arch (and no /sys): the host's cpuinfo shows through
    no_arch = dataclasses.replace(QEMU_USER_CHROOT, kernel_arch="")
    assert is_qemu_user(classify(no_arch))
    # a qemu that emulates /proc/cpuinfo too is still caught by the kernel's own arch
    faked = dataclasses.replace(QEMU_USER_CHROOT, cpuinfo=PI4_CPUINFO)
    assert is_qemu_user(classify(faked))


def test_compat_userlands_are_not_emulation():
    armhf = dataclasses.replace(HARDWARE_PI, machine="armv8l")
    i686 = dataclasses.replace(X86_KVM_GUEST, machine="i686", dmi_vendor="")
    assert classify(armhf) is None and classify(i686) is None


def test_a_whole_emulated_machine_is_labelled_but_not_qemu_user():
    assert classify(VM_TCG) == QEMU_SYSTEM_TCG == "qemu-system (tcg)"
    assert not is_qemu_user(classify(VM_TCG))
    # the same VM without the runner's flag: the cortex-a72 cpuinfo looks real, the device
    # tree does not
    bare = dataclasses.replace(VM_TCG, cmdline="root=/dev/vda rw console=ttyAMA0")
    assert classify(bare).startswith("qemu-system (QEMU machine")
    x86_tcg = dataclasses.replace(X86_KVM_GUEST, clocksources="tsc acpi_pm")
    assert classify(x86_tcg).startswith("qemu-system")


def test_explicit_declarations_win():
    assert classify(dataclasses.replace(HARDWARE_PI, declared="qemu-user")) == "qemu-user"
    assert classify(dataclasses.replace(VM_TCG, declared="none")) is None
    kvm = dataclasses.replace(VM_TCG, cmdline="netplane.emulation=kvm")
    assert classify(kvm) is None


def test_arm_cpu_models_are_named():
    assert cpu_model(PI4_CPUINFO) == "ARM Cortex-A72"
    assert cpu_model(PI4_CPUINFO.replace("0xd08", "0xd0b")) == "ARM Cortex-A76"
    assert cpu_model(PI4_CPUINFO.replace("0x41", "0x61")) == "CPU implementer 0x61 part 0xd08"
    assert cpu_model(X86_CPUINFO) == "AMD EPYC 7B13"


@pytest.fixture
def machine(monkeypatch):
    """Pretend to be one of the machines above."""

    def use(facts: MachineFacts) -> None:
        monkeypatch.delenv("NETPLANE_BENCH_EMULATED", raising=False)
        monkeypatch.setattr(MachineFacts, "read", classmethod(lambda cls: facts))

    return use


def test_kernel_benchmarks_skip_only_under_qemu_user(machine, monkeypatch):
    machine(QEMU_USER_CHROOT)
    problems = _netns.kernel_check(("legacy", "nft"))
    assert all("qemu-user cannot pass netfilter netlink" in why for why in problems.values())
    machine(VM_TCG)
    monkeypatch.setattr(_netns.os, "geteuid", lambda: 1000)  # stop before touching a kernel
    assert set(_netns.kernel_check(("legacy",)).values()) == {
        "needs root (network namespaces, iptables)"
    }


def test_plugged_benchmarks_run_in_a_whole_emulated_machine(machine, tmp_path, monkeypatch):
    import netplane.bench.cli as bench_cli

    machine(VM_TCG)
    monkeypatch.setattr(bench_cli, "_import", lambda module, what: FakeBenchmark)
    result = CliRunner().invoke(cli, ["bench", "cni", "--quick", "--output-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "EMULATED run (qemu-system (tcg), ARM Cortex-A72)" in result.output
    (path,) = tmp_path.glob("cni-aarch64-*-emulated.json")
    r = load_result(path)
    assert r.emulated and r.skipped == () and r.series[0].values == (1.0,)
    assert r.platform["emulated"] == "qemu-system (tcg)"
    assert r.platform["cpu_model"] == "ARM Cortex-A72"


class FakeBenchmark:
    @staticmethod
    def run(quick):
        return {"series": [{"metric": "add", "unit": "s", "labels": {}, "values": [1.0]}]}


def test_compare_names_how_a_run_was_emulated():
    from netplane.bench._results import Result, Series
    from netplane.bench.compare import format_table

    series = (Series("latency", "s", {"variant": "legacy"}, (0.1, 0.2, 0.3)),)
    host = Result(
        "proxy-sync",
        {},
        series,
        {"arch": "x86_64", "cores": 2, "emulated": None, "cpu_model": "AMD EPYC 7B13"},
    )
    vm = Result(
        "proxy-sync",
        {},
        series,
        {
            "arch": "aarch64",
            "cores": 4,
            "cpu_model": "ARM Cortex-A72",
            "emulated": "qemu-system (tcg)",
        },
    )
    text = format_table(("host.json", host), [("vm.json", vm)])
    assert "host.json [x86_64, 2 cores, AMD EPYC 7B13]" in text
    assert "vm.json [aarch64, 4 cores, ARM Cortex-A72, EMULATED: qemu-system (tcg)]" in text
