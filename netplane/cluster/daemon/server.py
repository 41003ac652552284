"""The daemon's unix socket: one JSON line in, one JSON line out (a watch: a line per
event until the client goes), a thread per request."""

from __future__ import annotations

import json
import logging
import socketserver
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger("netplane.cluster.api")


class ApiServer(socketserver.ThreadingUnixStreamServer):
    # request threads must not keep a stopping daemon alive (set on our class only: the
    # stdlib class is shared by everything in the process)
    daemon_threads = True

    def __init__(self, path: Path, handle: Callable[[dict], dict | Iterator[dict]]) -> None:
        path.unlink(missing_ok=True)
        self.handle_request_json = handle
        super().__init__(str(path), _Handler)


class _Handler(socketserver.StreamRequestHandler):
    server: ApiServer

    def handle(self) -> None:
        line = self.rfile.readline()
        try:
            reply = self.server.handle_request_json(json.loads(line))
        except Exception as e:  # the API answers every request
            log.exception("request failed")
            reply = {"error": f"{type(e).__name__}: {e}"}
        if isinstance(reply, dict):
            self.wfile.write((json.dumps(reply) + "\n").encode())
            return
        try:
            for event in reply:
                self.wfile.write((json.dumps(event) + "\n").encode())
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the watcher went
        except Exception:
            log.exception("watch failed")  # the client sees the stream end
