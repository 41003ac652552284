"""Child processes of tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM PROC if it still runs, wait up to TIMEOUT seconds, then SIGKILL and reap it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def sigterm_storm(pid: int, count: int = 300) -> None:
    """COUNT SIGTERMs 50 us apart: each can land while the handler of the last still runs
    (a handler that takes a lock then hangs its process: netplane/signals.py)."""
    for _ in range(count):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        time.sleep(0.00005)
