"""The node agent: a long-lived process that keeps pyroute2 warm and runs plugin requests.

The binary hands it (env, stdin) over a unix socket; each request gets its own thread, so the
per-thread setns in netops keeps concurrent requests apart. The agent serves only callers in its
own network namespace, because that namespace is the "host" every command acts on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socketserver
import threading

from netplane.cni.client import DECLINED, decode_request, netns_id, netns_marker
from netplane.cni.commands import handle
from netplane.cni.plugin import respond

log = logging.getLogger(__name__)


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(answer(self.rfile.read(), self.server.netns))  # type: ignore[attr-defined]


def answer(data: bytes, own_netns: str) -> bytes:
    """The reply frame for one request frame (see client.py for the format)."""
    try:
        netns, env, stdin = decode_request(data)
    except ValueError as exc:
        return DECLINED + f"\nbad request: {exc}".encode()
    if netns != own_netns:
        return DECLINED + b"\ncaller is in another network namespace"
    code, stdout = respond(handle, env, stdin)
    return b"%d\n%s" % (code, (stdout + "\n" if stdout else "").encode())


class Agent(socketserver.ThreadingUnixStreamServer):
    # In-flight requests finish before the process exits: a half-done ADD is not left behind.
    daemon_threads = False
    block_on_close = True

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if os.path.exists(path):
            os.unlink(path)  # a stale socket from a previous run; a live agent would own a pid
        self.netns = netns_id()
        self.owner = os.getpid()
        super().__init__(path, _Handler)
        # Several worker processes accept on this socket: a loser's accept must not block.
        self.socket.setblocking(False)
        os.chmod(path, 0o600)
        with open(netns_marker(path), "w") as f:
            f.write(self.netns)

    def server_close(self) -> None:
        super().server_close()
        if os.getpid() != self.owner:
            return  # a worker: the socket belongs to the parent
        if not isinstance(self.server_address, str):
            return
        for p in (self.server_address, netns_marker(self.server_address)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)


def _serve(agent: Agent) -> None:
    def stop(_signum: int, _frame: object) -> None:
        threading.Thread(target=agent.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    agent.serve_forever()


def run(path: str, workers: int = 0) -> None:
    """Serve until SIGTERM/SIGINT, then remove the socket so binaries fall back in-process.

    One process per CPU (forked after the imports, before any thread exists) share the
    listening socket: the work is CPU-bound Python, so threads alone would serialise on the GIL.
    """
    workers = workers or os.cpu_count() or 1
    with Agent(path) as agent:
        children = []
        for _ in range(workers - 1):
            pid = os.fork()
            if pid == 0:
                try:
                    _serve(agent)
                    agent.server_close()
                finally:
                    os._exit(0)
            children.append(pid)
        log.info("netplane CNI agent on %s, %d processes", path, workers)
        try:
            _serve(agent)
        finally:
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            for pid in children:
                os.waitpid(pid, 0)
