"""Network namespaces for the kernel-touching benchmarks, and running code inside them.

Every namespace is created here with a unique name and deleted on exit, whatever happens:
the benchmarks never touch the root namespace's rules, routes or links. Python code runs
inside a namespace on a dedicated thread that entered it (`netplane.netns.enter`: only that
thread moves), so sockets it creates (probes, listeners) live in the namespace.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from netplane import netns as netplane_netns

T = TypeVar("T")
PREFIX = "npbs"  # np + bench suite; the DNS/CNI benchmarks use their own names


class KernelUnavailable(RuntimeError):
    """Network namespaces or netfilter cannot be used here; the message says why."""


def unique_name() -> str:
    # a test that must find its own leftovers on a busy machine sets its own prefix
    return netplane_netns.unique_name(os.environ.get("NETPLANE_BENCH_NETNS_PREFIX", PREFIX))


class Netns:
    """A named namespace with loopback up; `call(fn)` runs FN on the namespace's thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._thread = ThreadPoolExecutor(1, f"netns-{name}", netplane_netns.enter, (name,))
        # set on close: long loops running on the namespace's thread (probes) give up
        self.closing = threading.Event()

    def call(
        self, fn: Callable[..., T], *args: Any, timeout: float | None = 600, **kwargs: Any
    ) -> T:
        return self._thread.submit(fn, *args, **kwargs).result(timeout)

    def exec(
        self, *argv: str, check: bool = True, timeout: float = 600, input: str | None = None
    ) -> str:
        return netplane_netns.run(self.name, argv, check=check, timeout=timeout, input=input)

    def close(self) -> None:
        self.closing.set()
        self._thread.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def netns() -> Iterator[Netns]:
    """A fresh namespace, deleted (with everything in it) on exit."""
    name = netplane_netns.create(unique_name())
    ns = None
    try:
        ns = Netns(name)
        yield ns
    finally:
        if ns is not None:
            ns.close()
        netplane_netns.delete(name)


def kernel_check(variants: tuple[str, ...]) -> dict[str, str]:
    """Which backends (iptables variants, "nftables") are usable here: {backend: reason it is
    not} for the others.

    Under qemu-user (the emulated arm64 run) netfilter's sockopts and netlink messages are
    not translated, so this tries the real thing in a throwaway namespace instead of
    guessing from the environment.
    """
    from netplane.bench._results import emulation, is_qemu_user

    why = emulation()
    if is_qemu_user(why):  # a whole emulated machine (qemu-system) has its own kernel: runs
        return {v: f"emulated ({why}): qemu-user cannot pass netfilter netlink" for v in variants}
    if os.geteuid() != 0:
        return {v: "needs root (network namespaces, iptables)" for v in variants}
    missing = {
        v: f"iptables-{v}-restore is not installed"
        for v in variants
        if v != "nftables" and not shutil.which(f"iptables-{v}-restore")
    }
    usable = [v for v in variants if v not in missing]
    if not usable:
        return missing
    try:
        with netns() as ns:
            for v in usable:
                try:
                    if v == "nftables":  # the nftables backend talks netlink itself
                        from netplane.proxy.nft._netlink import Netlink

                        Netlink(ns.name).tables("ip")
                    else:
                        ns.exec(f"iptables-{v}", "-w", "5", "-t", "nat", "-S", timeout=30)
                except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                    missing[v] = (
                        f"{'nf_tables' if v == 'nftables' else 'iptables-' + v}"
                        f" does not work in a namespace: {e}"
                    )
    except (RuntimeError, OSError) as e:
        return {v: f"cannot create a network namespace: {e}" for v in variants}
    return missing


@contextlib.contextmanager
def private_xtables_lock() -> Iterator[None]:
    """Give the iptables-legacy tools this run starts a lock file of their own.

    The legacy tools serialise on /run/xtables.lock whatever namespace they work in, so on
    a shared machine a benchmark would wait for (and time) everybody else's iptables
    calls. Our namespaces are only written by this run, which still serialises on its own
    lock (XTABLES_LOCKFILE, inherited by the daemon and every tool it runs).
    """
    old = os.environ.get("XTABLES_LOCKFILE")
    path = f"/run/{unique_name()}.xtables.lock"
    os.environ["XTABLES_LOCKFILE"] = path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("XTABLES_LOCKFILE", None)
        else:
            os.environ["XTABLES_LOCKFILE"] = old
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
