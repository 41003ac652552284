"""One per node, the stand-in for containerd + the pods' processes: serves every built-in
application of the node's pods from one asyncio loop (a Python process per pod would cost
~20 MB and ~100 ms each). Sockets are created inside each pod's network namespace
(setns on this thread, then back), so each pod answers on its own IP only.

Protocol (JSON lines): stdin `{"op": "add", "uid", "netns", "pod", "containers"}` or
`{"op": "remove", "uid"}`; stdout `{"ready": uid}`, `{"failed": uid, "error"}`, `{"removed": uid}`.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import socket
import sys
from contextlib import contextmanager

from netplane.cluster.responders import Listener, listeners, start

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextmanager
def netns(name: str):
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET):
            raise OSError(ctypes.get_errno(), f"setns into {name}")
        yield
    finally:
        _libc.setns(own, CLONE_NEWNET)
        os.close(target)
        os.close(own)


def bind(listener: Listener) -> socket.socket:
    kind = socket.SOCK_DGRAM if listener.protocol == "UDP" else socket.SOCK_STREAM
    sock = socket.socket(socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", listener.port))
    if kind == socket.SOCK_STREAM:
        sock.listen(512)
    sock.setblocking(False)
    return sock


class Runtime:
    def __init__(self) -> None:
        self.servers: dict[str, list] = {}

    def emit(self, **msg) -> None:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    async def add(self, msg: dict) -> None:
        uid = msg["uid"]
        if uid in self.servers:
            self.emit(ready=uid)
            return
        try:
            wanted = listeners(msg.get("containers", []))
            socks = []
            if msg.get("netns"):
                with netns(msg["netns"]):
                    socks = [(ls, bind(ls)) for ls in wanted]
            else:  # the node itself (the API server stand-in)
                socks = [(ls, bind(ls)) for ls in msg.get("listeners", [])]
            self.servers[uid] = [await start(ls, msg["pod"], s) for ls, s in socks]
            self.emit(ready=uid)
        except Exception as e:
            self.emit(failed=uid, error=str(e))

    def remove(self, uid: str) -> None:
        for server in self.servers.pop(uid, []):
            server.close()
        self.emit(removed=uid)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            msg = json.loads(line)
            if msg["op"] == "add":
                if msg.get("listeners"):
                    msg["listeners"] = [Listener(*ls) for ls in msg["listeners"]]
                await self.add(msg)
            elif msg["op"] == "remove":
                self.remove(msg["uid"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--node", required=True)
    parser.add_argument(
        "--state-dir", required=True, help="Only marks the process as the cluster's."
    )
    parser.parse_args()
    asyncio.run(Runtime().run())


if __name__ == "__main__":
    main()
