"""setns(2) for the calling thread: netplane's one ctypes binding to it.

It imports only `os`, `ctypes` and `contextlib` (already loaded at interpreter start), so
the CNI plugin's lean path can use it without paying for subprocess or pyroute2.
`netplane.netns` re-exports it for everybody else. setns moves only the calling thread;
processes it starts and sockets it creates afterwards live in the namespace entered.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"  # where `ip netns add` pins named namespaces
_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(name: str) -> str:
    """A named namespace's file; a path (anything with a slash) is returned as is."""
    return name if "/" in name else f"{NETNS_DIR}/{name}"


def open_netns(name: str) -> int:
    """An fd on namespace NAME (a name under /run/netns, or a path); the caller closes it."""
    return os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)


def setns(fd: int) -> None:
    """Move this thread into the network namespace open as FD (raises OSError)."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def enter(name: str) -> None:
    """Move this thread into namespace NAME for good (a worker thread's initializer)."""
    fd = open_netns(name)
    try:
        setns(fd)
    except OSError as e:
        raise OSError(e.errno, f"setns into {name}: {e.strerror}") from None
    finally:
        os.close(fd)


@contextmanager
def entered(fd: int) -> Iterator[None]:
    """Run the block with this thread in the namespace open as FD, then come back (also on
    errors)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(home)
