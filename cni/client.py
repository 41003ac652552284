"""The wire format between a plugin binary and the node agent, and the Python client side.

The binary a node runs is the static launcher (launcher.c); this module is the same client
for hosts where netplane is installed (`netplane-bridge` tries the agent, then runs
in-process). Stdlib only and frugal: no json, no socket module (enum), just `_socket`.

    request: b"netplane-cni 2\\n" <env length> b"\\n" <K=V\\0K=V...> <stdin bytes>
             with SCM_RIGHTS file descriptors: the caller's netns, then CNI_NETNS if it opened
    reply:   <exit code> b"\\n" <stdout bytes>       or   b"declined\\n" <reason>

Passing the namespaces as descriptors means the agent never needs the caller's view of the
filesystem (it runs in a container with its own mounts), and it can check that the caller is
in its own network namespace (the "host" it acts on) by comparing inodes.
"""

from __future__ import annotations

import _socket
import array
import contextlib
import os

DEFAULT_SOCKET = "/run/netplane/cni.sock"
SOCKET_ENV = "NETPLANE_CNI_SOCKET"
MAGIC = b"netplane-cni 2\n"
DECLINED = b"declined"
MAX_FDS = 2


def encode_request(environ: dict[str, str], stdin: bytes) -> bytes:
    env = b"\0".join(
        os.fsencode(f"{k}={v}") for k, v in environ.items() if k.startswith("CNI_") or k == "PATH"
    )
    return b"%s%d\n%s%s" % (MAGIC, len(env), env, stdin)


def decode_request(data: bytes) -> tuple[dict[str, str], bytes]:
    """(env, stdin); ValueError on a malformed frame."""
    if not data.startswith(MAGIC):
        raise ValueError("not a netplane-cni 2 request (launcher and agent versions differ?)")
    size, _, rest = data[len(MAGIC) :].partition(b"\n")
    n = int(size)
    env = {}
    for pair in filter(None, rest[:n].split(b"\0")):
        key, sep, value = os.fsdecode(pair).partition("=")
        if not sep:
            raise ValueError(f"bad env entry {pair!r}")
        env[key] = value
    return env, rest[n:]


def _open_fds(environ: dict[str, str]) -> list[int]:
    fds = [os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)]
    netns = environ.get("CNI_NETNS", "")
    if netns:
        # a gone netns is the agent's call: DEL allows it, ADD reports it
        with contextlib.suppress(OSError):
            fds.append(os.open(netns, os.O_RDONLY | os.O_CLOEXEC))
    return fds


def via_agent(environ: dict[str, str], stdin: bytes) -> tuple[int, bytes] | None:
    """(exit code, stdout) from the agent, or None when there is no agent that serves us."""
    path = environ.get(SOCKET_ENV, DEFAULT_SOCKET)
    if not path:
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    fds: list[int] = []
    try:
        sock.connect(path)
        fds = _open_fds(environ)
        frame = encode_request(environ, stdin)
        rights = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        sent = sock.sendmsg([frame], rights)
        sock.sendall(frame[sent:])
        sock.shutdown(_socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        sock.close()
        for fd in fds:
            os.close(fd)
    head, _, body = b"".join(chunks).partition(b"\n")
    if head == DECLINED or not head.isdigit():
        return None
    return int(head), body
