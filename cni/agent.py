"""The node agent: a long-lived process that keeps the plugin warm and runs its requests.

The launcher on the host hands it (env, stdin, namespace fds) over a unix socket; each request
gets its own thread, so the per-thread setns in netops keeps concurrent requests apart. The
agent serves only callers in its own network namespace, because that namespace is the "host"
every command acts on.

Lifecycle: a new agent binds a fresh socket and renames it over the path, so it takes over
from a previous one atomically (the old one finishes what it has and leaves the path alone);
the worker processes die with the parent (PR_SET_PDEATHSIG), so none is left serving an old
socket after a crash.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import dataclasses
import functools
import logging
import os
import signal
import socket
import socketserver
from collections.abc import Callable

from netplane import signals
from netplane.cni import inflight
from netplane.cni.client import DECLINED, MAX_FDS, decode_request
from netplane.cni.commands import handle
from netplane.cni.plugin import respond

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1
REQUEST_TIMEOUT = 30.0  # a caller that never finishes sending must not hold a thread forever


def _own_netns() -> tuple[int, int]:
    st = os.stat("/proc/self/ns/net")
    return st.st_dev, st.st_ino


def receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    """The whole request frame and the fds that came with its first bytes."""
    data, ancdata, _flags, _addr = sock.recvmsg(65536, socket.CMSG_SPACE(MAX_FDS * 4))
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(payload[: len(payload) - len(payload) % arr.itemsize])
            fds.extend(arr)
    chunks = [data]
    while data:
        data = sock.recv(65536)
        chunks.append(data)
    return b"".join(chunks), fds


def answer(
    data: bytes, fds: list[int], own_netns: tuple[int, int]
) -> tuple[bytes, Callable[[], None]]:
    """The reply frame for one request frame (see client.py for the format), and what to do
    once it has been sent."""
    try:
        env, stdin = decode_request(data)
    except ValueError as exc:
        return DECLINED + f"\nbad request: {exc}".encode(), _nothing
    if not fds:
        return DECLINED + b"\nno network namespace descriptor came with the request", _nothing
    st = os.fstat(fds[0])
    if (st.st_dev, st.st_ino) != own_netns:
        return DECLINED + b"\ncaller is in another network namespace than the agent", _nothing
    sandbox = fds[1] if len(fds) > 1 else None

    def with_sandbox(cni_env, conf, environ):  # type: ignore[no-untyped-def]
        return handle(dataclasses.replace(cni_env, netns_fd=sandbox), conf, environ)

    code, stdout = respond(with_sandbox, env, stdin)
    reply = b"%d\n%s" % (code, (stdout + "\n" if stdout else "").encode())
    if code == 0 and env.get("CNI_COMMAND") == "ADD":
        return reply, functools.partial(inflight.delivered, env, stdin)
    return reply, _nothing


def _nothing() -> None:
    pass


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(REQUEST_TIMEOUT)
        fds: list[int] = []
        try:
            data, fds = receive(sock)
            reply, sent = answer(data, fds, self.server.netns)  # type: ignore[attr-defined]
            sock.sendall(reply)
            sent()
        except OSError as exc:
            log.warning("request dropped: %s", exc)
        finally:
            for fd in fds:
                os.close(fd)


class Agent(socketserver.ThreadingUnixStreamServer):
    # In-flight requests finish before the process exits: a half-done ADD is not left behind.
    daemon_threads = False
    block_on_close = True

    def __init__(self, path: str) -> None:
        self.path = path
        self.netns = _own_netns()
        self.owner = os.getpid()
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        super().__init__(tmp, _Handler)
        os.chmod(tmp, 0o600)
        # Atomic takeover: callers connecting from now on reach us, a previous agent keeps
        # only the connections it already accepted.
        os.replace(tmp, path)
        self.server_address = path
        self.inode = os.stat(path).st_ino
        # Several worker processes accept on this socket: a loser's accept must not block.
        self.socket.setblocking(False)

    def release(self) -> None:
        """Remove the socket if it is still ours (a newer agent may have taken the path)."""
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)


def _serve(agent: Agent) -> None:
    signals.on_signals(lambda _: agent.shutdown(), signal.SIGTERM, signal.SIGINT)
    agent.serve_forever()


def _die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os._exit(0)


def run(
    path: str,
    workers: int = 0,
    on_serving: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, then remove the socket (launchers then answer "try again").

    One process per CPU (forked after the imports, before any thread exists) share the
    listening socket: the work is CPU-bound Python, so threads alone would serialise on the
    GIL. `on_serving` runs once the socket takes requests (writing the conflist then means
    the runtime never sees the network before the agent serves it).
    """
    workers = workers or os.cpu_count() or 1
    with Agent(path) as agent:
        children = []
        parent = os.getpid()
        for _ in range(workers - 1):
            pid = os.fork()
            if pid == 0:
                try:
                    _die_with_parent(parent)
                    _serve(agent)
                finally:
                    os._exit(0)
            children.append(pid)
        log.info("netplane CNI agent on %s, %d processes", path, workers)
        try:
            if on_serving is not None:
                on_serving()
            _serve(agent)
        finally:
            agent.release()
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            for pid in children:
                os.waitpid(pid, 0)
