"""Network namespaces: the one helper netplane uses to create, wire and enter them.

Everything that touches networking runs inside namespaces created here and deleted again,
so nothing in the host's namespace changes. Links and addresses are set with `ip`, not
pyroute2: each call is one short, readable command, the error message is `ip`'s own, and
the same commands work when a person repeats them by hand. Python code enters a namespace
per thread with `enter`/`entered` (setns(2), from `netplane._setns`, which the CNI plugin's
lean path imports directly). The test and demo topology built from these is
`netplane.testing.lab`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

from netplane._setns import NETNS_DIR, enter, netns_path, open_netns, setns
from netplane._setns import entered as _entered_fd


class NetnsError(RuntimeError):
    pass


def unique_name(prefix: str) -> str:
    """`<prefix>-<6 hex>`: concurrent runs on one machine never collide."""
    return f"{prefix}-{secrets.token_hex(3)}"


def ip(*args: str, check: bool = True) -> str:
    """Run `ip ARGS` (in the caller's namespace; use `-n NS` to target another)."""
    return run(None, ["ip", *args], check=check)


def run(
    ns: str | None,
    argv: Sequence[str],
    *,
    input: str | None = None,
    check: bool = True,
    timeout: float = 30,
) -> str:
    """Run a command inside namespace NS (None: here); returns stdout, raises on failure."""
    full = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    proc = subprocess.run(full, input=input, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(full)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def popen(ns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
    """Start a long-running command inside NS; the caller must stop it (see `stop`)."""
    return subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kwargs)


def stop(proc: subprocess.Popen, timeout: float = 5) -> None:
    """Terminate a process we started, killing it when it does not exit in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def create(name: str) -> str:
    """NAME with loopback up; on any failure (also `ip netns add` timing out on a loaded
    machine after it made the namespace) nothing of it is left; one that existed before is
    never touched."""
    existed = os.path.exists(netns_path(name))
    try:
        ip("netns", "add", name)
        ip("-n", name, "link", "set", "lo", "up")
    except BaseException:
        if not existed:
            delete(name)
        raise
    return name


def delete(name: str) -> bool:
    """Delete NS; its interfaces (and the veth peers elsewhere) go with it. False when
    there was nothing to delete (or it could not be)."""
    try:
        ip("netns", "del", name)
    except NetnsError:
        return False
    return True


def names(prefix: str = "") -> list[str]:
    """The named namespaces (under /run/netns) whose names start with PREFIX, sorted."""
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def sysctl(ns: str, key: str, value: str | int) -> None:
    """Set a per-namespace sysctl (through /proc: no dependency on procps)."""
    path = "/proc/sys/" + key.replace(".", "/")
    run(ns, ["sh", "-c", f'echo {value} > "$0"', path])


def veth(ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
    """A veth pair with one end in each namespace, both up."""
    ip("-n", ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b)
    ip("-n", ns_a, "link", "set", name_a, "up")
    ip("-n", ns_b, "link", "set", name_b, "up")


def bridge(ns: str, name: str) -> None:
    ip("-n", ns, "link", "add", name, "type", "bridge")
    ip("-n", ns, "link", "set", name, "up")


def address(ns: str, dev: str, cidr: str) -> None:
    ip("-n", ns, "addr", "add", cidr, "dev", dev, "nodad")


def route(ns: str, dst: str, via: str) -> None:
    ip("-n", ns, "route", "add", dst, "via", via)


@contextlib.contextmanager
def entered(ns: str | int) -> Iterator[None]:
    """Run the block with this thread in namespace NS (a name, a path or an open fd), then
    come back (also on errors)."""
    if isinstance(ns, int):
        with _entered_fd(ns):
            yield
        return
    fd = open_netns(ns)
    try:
        with _entered_fd(fd):
            yield
    finally:
        os.close(fd)


__all__ = [
    "NETNS_DIR",
    "NetnsError",
    "address",
    "bridge",
    "create",
    "delete",
    "enter",
    "entered",
    "ip",
    "names",
    "netns_path",
    "open_netns",
    "popen",
    "route",
    "run",
    "setns",
    "stop",
    "sysctl",
    "unique_name",
    "veth",
]
