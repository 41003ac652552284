"""A marker per ADD in progress, so a retry after a crash mid-ADD starts from a clean slate.

An ADD undoes its own work when it fails, but not when its process is killed (the agent
crashed, the node agent was restarted mid-call). The runtime then retries the ADD, which
would find the veth of the first attempt and fail with "already exists" until a DEL. With a
marker written before the work and removed once the result has reached the runtime, the
retry knows the leftovers are its own: it rolls them back (the DEL logic) and proceeds. That
covers a kill after the work and before the reply too: the runtime was told to try again
(the launcher's code 11), so the retry must not be refused. Without a marker an existing
interface is a genuine duplicate ADD and still fails, as the spec wants; a marker outlives
a delivered result only if the process dies in the instant between the two (then the
runtime's DEL removes it).

Markers live in a directory that outlives the agent (a hostPath in the DaemonSet) and not a
reboot (a reboot takes the veths with it): `NETPLANE_CNI_STATE_DIR`, default /run/netplane.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping

STATE_ENV = "NETPLANE_CNI_STATE_DIR"
DEFAULT_STATE_DIR = "/run/netplane"


def _marker(network: str, container_id: str, ifname: str) -> str:
    # The host netns is part of the key: the same container ID in two hosts is two attachments.
    host = os.stat("/proc/thread-self/ns/net").st_ino
    key = hashlib.sha256(f"{host}/{network}/{container_id}/{ifname}".encode()).hexdigest()[:32]
    base = os.environ.get(STATE_ENV) or DEFAULT_STATE_DIR
    return os.path.join(base, "cni-adds", key)


@contextlib.contextmanager
def pending(network: str, container_id: str, ifname: str) -> Iterator[bool]:
    """Mark an ADD as in progress; yields True when an earlier one was interrupted. A failed
    ADD (it undid its work) drops the mark; a successful one keeps it until `delivered`."""
    path = _marker(network, container_id, ifname)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        interrupted = False
    except FileExistsError:
        fd, interrupted = -1, True
    else:
        interrupted = False
    if fd >= 0:
        os.close(fd)
    try:
        yield interrupted
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise


def forget(network: str, container_id: str, ifname: str) -> None:
    """DEL: whatever an interrupted ADD left is being removed now."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_marker(network, container_id, ifname))


def delivered(environ: Mapping[str, str], stdin: bytes) -> None:
    """The result of the ADD (CNI_* ENVIRON, config STDIN) has been handed to the runtime."""
    try:
        network = json.loads(stdin).get("name")
    except (ValueError, AttributeError):
        return  # not a config an ADD succeeded with
    if isinstance(network, str):
        forget(network, environ.get("CNI_CONTAINERID", ""), environ.get("CNI_IFNAME", ""))
