"""Thin client for the node agent, and the wire format both ends share.

Stdlib only and deliberately frugal: the launcher runs this under `python3 -I -S`, where
`import json` (re, enum) and `import socket` (enum) cost ~8.5 ms of a ~14 ms client, so it
uses the C `_socket` module and a plain framing instead of JSON:

    request: <netns id>\\n<env length>\\n<K=V\\0K=V...><stdin bytes>
    reply:   <exit code>\\n<stdout bytes>       or   declined\\n<reason>

The agent answers only callers in its own network namespace (that namespace is the host the
plugin acts on); on any doubt the caller runs the plugin in-process instead.
"""

from __future__ import annotations

import _socket
import os

DEFAULT_SOCKET = "/run/netplane/cni.sock"
SOCKET_ENV = "NETPLANE_CNI_SOCKET"
DECLINED = b"declined"


def netns_id() -> str:
    st = os.stat("/proc/thread-self/ns/net")
    return f"{st.st_dev}:{st.st_ino}"


def netns_marker(path: str) -> str:
    """File beside the socket naming the agent's netns, checked before connecting."""
    return path + ".netns"


def agent_socket(environ: dict[str, str]) -> str | None:
    """The socket of an agent serving this netns, or None (then run in-process)."""
    path = environ.get(SOCKET_ENV, DEFAULT_SOCKET)
    if not path:
        return None
    try:
        with open(netns_marker(path)) as f:
            return path if f.read() == netns_id() else None
    except (OSError, ValueError):
        return None


def encode_request(environ: dict[str, str], stdin: bytes, netns: str) -> bytes:
    env = b"\0".join(
        os.fsencode(f"{k}={v}") for k, v in environ.items() if k.startswith("CNI_") or k == "PATH"
    )
    return b"%s\n%d\n%s%s" % (netns.encode(), len(env), env, stdin)


def decode_request(data: bytes) -> tuple[str, dict[str, str], bytes]:
    """(netns id, env, stdin); ValueError on a malformed frame."""
    netns, size, rest = data.split(b"\n", 2)
    n = int(size)
    env = {}
    for pair in filter(None, rest[:n].split(b"\0")):
        key, sep, value = os.fsdecode(pair).partition("=")
        if not sep:
            raise ValueError(f"bad env entry {pair!r}")
        env[key] = value
    return netns.decode(), env, rest[n:]


def via_agent(environ: dict[str, str], stdin: bytes) -> tuple[int, bytes] | None:
    """(exit code, stdout) from the agent, or None when there is no usable agent."""
    path = agent_socket(environ)
    if path is None:
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
        sock.sendall(encode_request(environ, stdin, netns_id()))
        sock.shutdown(_socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        sock.close()
    head, _, body = b"".join(chunks).partition(b"\n")
    if head == DECLINED or not head.isdigit():
        return None
    return int(head), body
