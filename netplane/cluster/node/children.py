"""Child processes the supervisor keeps alive: restarted when they exit, pid files kept in
the state directory so `down` can stop them even after the supervisor itself crashed."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from netplane.cluster.statedir import write_atomic

log = logging.getLogger(__name__)


class Child:
    def __init__(
        self,
        name: str,
        argv: list[str],
        pid_dir: Path,
        log_dir: Path,
        on_line: Callable[[dict], None] | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        self.name, self.argv = name, argv
        self.pid_file = pid_dir / f"{name}.pid"
        self.log_file = log_dir / f"{name}.log"
        self.on_line, self.on_start = on_line, on_start
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._write_lock = threading.Lock()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"child-{name}", daemon=True)

    def start(self) -> Child:
        self._thread.start()
        self._started.wait(10)
        return self

    def _spawn(self) -> subprocess.Popen:
        logf = open(self.log_file, "ab")  # noqa: SIM115 (the child owns it)
        pipes = self.on_line is not None
        proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else logf,
            stderr=logf,
            start_new_session=True,  # a Ctrl-C at the terminal reaches the supervisor only
        )
        logf.close()
        # atomic: `down` after a crash (kill_recorded) must never read a half-written file
        write_atomic(self.pid_file, json.dumps({"pid": proc.pid, "argv": self.argv}))
        return proc

    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.proc = self._spawn()
            except OSError as e:
                log.error("cannot start %s: %s", self.name, e)
                self._started.set()
                self._stop.wait(backoff)
                continue
            if self.on_start:
                self.on_start()
            self._started.set()
            if self.on_line and self.proc.stdout:
                for line in self.proc.stdout:
                    with contextlib.suppress(ValueError):
                        self.on_line(json.loads(line))
            code = self.proc.wait()
            if self._stop.is_set():
                break
            self.restarts += 1
            backoff = 0.2 if time.monotonic() - started > 10 else min(backoff * 2, 5)
            log.warning("%s exited with %s; restarting in %.1f s", self.name, code, backoff)
            self._stop.wait(backoff)
        self.pid_file.unlink(missing_ok=True)

    def send(self, msg: dict) -> None:
        with self._write_lock:
            proc = self.proc
            if proc is None or proc.stdin is None or proc.poll() is not None:
                return  # the restart re-sends the full state through on_start
            try:
                proc.stdin.write((json.dumps(msg) + "\n").encode())
                proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                pass

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def stop(self, timeout: float = 3.0) -> None:
        stop_all([self], timeout)


def stop_all(children: list[Child], timeout: float = 3.0) -> None:
    """SIGTERM every child at once, then SIGKILL what is still there after TIMEOUT."""
    for c in children:
        c._stop.set()
        if c.proc and c.proc.poll() is None:
            c.proc.terminate()
    deadline = time.monotonic() + timeout
    for c in children:
        if c.proc is None:
            continue
        try:
            c.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait()
    for c in children:
        c._thread.join(timeout)
        c.pid_file.unlink(missing_ok=True)


def kill_recorded(pid_dir: Path, marker: str) -> list[int]:
    """Stop processes named in pid files, only when their command line still contains
    MARKER (the state directory): a recycled pid belongs to someone else."""
    killed = []
    for f in pid_dir.glob("*.pid") if pid_dir.is_dir() else []:
        try:
            pid = json.loads(f.read_text())["pid"]
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, KeyError):
            f.unlink(missing_ok=True)
            continue
        if marker in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                killed.append(pid)
        f.unlink(missing_ok=True)
    deadline = time.monotonic() + 3
    for pid in killed:
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return killed
