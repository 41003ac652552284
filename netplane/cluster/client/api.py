"""The CLI's side of the supervisor's API (one JSON line each way over a unix socket)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator

from netplane.cluster.statedir import StateDir, default_state_dir


class NotRunning(RuntimeError):
    pass


def resolve_state(cluster: str, state_dir: str | None) -> StateDir:
    return StateDir(state_dir or os.environ.get("NETPLANE_STATE_DIR") or default_state_dir(cluster))


def _connect(state: StateDir, timeout: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(state.socket))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        name = state.path.name
        if state.path != default_state_dir(name):
            where = f" --state-dir {state.path}"
        else:
            where = "" if name == "netplane" else f" --cluster {name}"
        raise NotRunning(
            f"no cluster is running at {state.path}: start one with `netplane up{where}`"
        ) from None
    return sock


def stream(state: StateDir, request: dict) -> Iterator[dict]:
    """A watch: the daemon's events, one per line, until it stops (a BOOKMARK comes every
    few seconds, so a daemon that died unseen is noticed by the timeout)."""
    with _connect(state, 60.0) as sock:
        sock.sendall((json.dumps(request) + "\n").encode())
        with sock.makefile("rb") as lines:
            for line in lines:
                yield json.loads(line)


def call(state: StateDir, request: dict, timeout: float = 60.0) -> dict:
    sock = _connect(state, timeout)
    with sock:
        sock.sendall((json.dumps(request) + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    if not data:
        raise NotRunning(f"the supervisor at {state.path} closed the connection (stopping?)")
    return json.loads(data)


def alive(state: StateDir) -> bool:
    try:
        call(state, {"op": "status"}, timeout=5)
        return True
    except (NotRunning, OSError):
        return False
