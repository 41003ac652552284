"""One per node, the stand-in for containerd + the pods' processes.

Built-in applications (the color app, echo responders) of every pod of the node are served
from one asyncio loop (a Python process per pod would cost ~20 MB and ~100 ms each);
their sockets are created inside each pod's network namespace (setns on this thread, then
back), so each pod answers on its own IP only. A container's `command`/`args` really run:
as a process inside the pod's network namespace (`ip netns exec`, so the pod's resolv.conf
applies), with the pod's environment, restarted by the pod's restartPolicy with kubelet's
back-off (10 s doubling to 5 min). Everything a container writes, and each request a
built-in application answers, goes to `<logdir>/<container>/<restartCount>.log` (kubelet's
layout: one file per run, so `logs` shows the current run and `logs -p` the one before) in
the CRI log format kubelet uses (`<RFC3339Nano time> stdout F <line>`).

Protocol (JSON lines): stdin `{"op": "add", "uid", "netns", "pod", "containers", "env",
"restartPolicy", "logdir"}` or `{"op": "remove", "uid"}`; stdout `{"ready": uid}`,
`{"failed": uid, "error"}`, `{"removed": uid}` and container changes
`{"uid", "container", "state": running|terminated|waiting, "exitCode", "reason",
"restartCount", "final"}`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

from netplane.cluster.node.apiserver import tls_context
from netplane.cluster.node.responders import (
    Listener,
    image_command,
    is_dns_image,
    listeners,
    start,
)
from netplane.netns import entered

PR_SET_PDEATHSIG = 1
BACKOFF = (10.0, 300.0)  # kubelet's CrashLoopBackOff
# A started command is reported ready once it has run this long, as kubelet's 1 s relist
# would first see it running: a command that exits at once never makes its pod Ready.
READY_AFTER = 1.0
_libc = ctypes.CDLL(None, use_errno=True)


def bind(listener: Listener) -> socket.socket:
    kind = socket.SOCK_DGRAM if listener.protocol == "UDP" else socket.SOCK_STREAM
    sock = socket.socket(socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", listener.port))
    if kind == socket.SOCK_STREAM:
        sock.listen(512)
    sock.setblocking(False)
    return sock


def cri_time() -> str:
    t = time.time_ns()
    stamp = datetime.datetime.fromtimestamp(t // 1_000_000_000, datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t % 1_000_000_000:09d}Z"


class LogFile:
    """A container's log in CRI format (the file is reopened per write: rare, small)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()

    def write(self, line: str, stream: str = "stdout") -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{cri_time()} {stream} F {line.rstrip(chr(10))}\n")


def log_path(logdir: str, container: str, restarts: int) -> Path:
    return Path(logdir) / container / f"{restarts}.log"


def _die_with_parent() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # no container outlives its runtime


def argv_of(container: dict) -> list[str]:
    """What the container runs as a process ([]: a built-in application, or nothing).

    command replaces the image's entrypoint, args its default command; the emulated images
    have no entrypoint, so what is given is what runs. Without either, a quiet image runs
    its default (a shell that exits at once), unless the container keeps stdin open
    (`run -i`): then the attached session is its process, run by the client.
    """
    given = (container.get("command") or []) + (container.get("args") or [])
    if not given and not container.get("stdin"):
        given = image_command(container.get("image", ""))
    return [str(a) for a in given]


class Container:
    def __init__(self, runtime: Runtime, pod: dict, container: dict) -> None:
        self.runtime, self.pod, self.spec = runtime, pod, container
        self.name = container["name"]
        self.log = LogFile(log_path(pod["logdir"], self.name, 0))
        self.restarts = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.task: asyncio.Task | None = None
        self.stopping = False

    def emit(self, state: str, **extra: object) -> None:
        self.runtime.emit(uid=self.pod["uid"], container=self.name, state=state,
                          restartCount=self.restarts, **extra)  # fmt: skip

    async def run(self) -> None:
        policy = self.pod.get("restartPolicy", "Always")
        delay = 0.0  # as kubelet's: the first restart is at once, then 10 s, 20 s, ...
        while not self.stopping:
            started = time.monotonic()
            code = await self._once()
            if self.stopping:
                return
            again = policy == "Always" or (policy == "OnFailure" and code != 0)
            self.emit("terminated", exitCode=code, final=not again)
            if not again:
                return
            if time.monotonic() - started > 600:
                delay = 0.0
            if delay:
                self.emit(
                    "waiting",
                    reason="CrashLoopBackOff",
                    message=f"back-off {delay:.0f}s restarting failed container={self.name} "
                    f"pod={self.pod['pod'].split('/')[1]}_{self.pod['pod'].split('/')[0]}",
                )
                await asyncio.sleep(delay)
            delay = min(max(delay * 2, BACKOFF[0]), BACKOFF[1])
            self.restarts += 1

    async def _once(self) -> int:
        self.log = LogFile(log_path(self.pod["logdir"], self.name, self.restarts))
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOSTNAME": self.pod["pod"].split("/", 1)[1],
            **self.pod.get("env", {}),
        }
        for e in self.spec.get("env") or []:
            env[e["name"]] = str(e.get("value", ""))
        try:
            self.proc = await asyncio.create_subprocess_exec(
                "ip",
                "netns",
                "exec",
                self.pod["netns"],
                *argv_of(self.spec),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                preexec_fn=_die_with_parent,
            )
        except OSError as e:
            self.log.write(f"failed to start: {e}", "stderr")
            return 128
        self.emit("running")
        asyncio.get_running_loop().call_later(
            READY_AFTER, self.runtime.check_ready, self.pod["uid"]
        )
        await asyncio.gather(
            self._pump(self.proc.stdout, "stdout"), self._pump(self.proc.stderr, "stderr")
        )
        return await self.proc.wait()

    async def _pump(self, stream: asyncio.StreamReader | None, name: str) -> None:
        assert stream is not None  # started with pipes
        while line := await stream.readline():
            self.log.write(line.decode(errors="replace"), name)

    async def stop(self) -> None:
        self.stopping = True
        if self.proc and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 1.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
        if self.task:
            self.task.cancel()


class Runtime:
    def __init__(self) -> None:
        self.servers: dict[str, list] = {}
        self.containers: dict[str, list[Container]] = {}

    def emit(self, **msg: object) -> None:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    async def add(self, msg: dict) -> None:
        uid = msg["uid"]
        if uid in self.servers:
            self.emit(ready=uid)
            return
        try:
            socks: list[tuple[Listener, socket.socket, LogFile | None]]
            tls = None
            if not msg.get("netns"):  # the node itself (the API server stand-in)
                socks = [(ls, bind(ls), None) for ls in msg.get("listeners", [])]
                if msg.get("tls"):
                    tls = tls_context(Path(msg["tls"]["pki"]), msg["tls"]["ip"])
            else:
                socks = []
                logs: dict[str, LogFile] = {}
                with entered(msg["netns"]):
                    for c in msg.get("containers", []):
                        if argv_of(c) or is_dns_image(c.get("image", "")):
                            continue
                        for ls in listeners([c]):
                            logs.setdefault(
                                c["name"], LogFile(log_path(msg["logdir"], c["name"], 0))
                            )
                            socks.append((ls, bind(ls), logs[c["name"]]))
            self.servers[uid] = [
                await start(ls, msg.get("pod", ""), s, log, tls) for ls, s, log in socks
            ]
            runs = []
            for c in msg.get("containers", []):
                if argv_of(c):
                    runs.append(Container(self, msg, c))
                else:
                    self.emit(uid=uid, container=c["name"], state="running", restartCount=0)
            self.containers[uid] = runs
            for c in runs:
                c.task = asyncio.create_task(c.run())
            if not runs:
                self.emit(ready=uid)
        except Exception as e:
            self.emit(failed=uid, error=str(e))

    def check_ready(self, uid: str) -> None:
        """Ready when every command of the pod is still running (see READY_AFTER)."""
        runs = self.containers.get(uid)
        if runs and all(c.proc is not None and c.proc.returncode is None for c in runs):
            self.emit(ready=uid)

    async def remove(self, uid: str) -> None:
        for server in self.servers.pop(uid, []):
            server.close()
        for c in self.containers.pop(uid, []):
            await c.stop()
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
                await self.remove(msg["uid"])
        for uid in list(self.containers):
            await self.remove(uid)


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
