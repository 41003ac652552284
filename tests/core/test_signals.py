"""A storm of stop signals stops a daemon whose main thread lives inside Event.wait()."""

from __future__ import annotations

import signal
import subprocess
import sys

from netplane.testing.procs import sigterm_storm

# The main thread spends most of its time holding the event's lock (each wait() takes it),
# also while it shuts down (until the test has sent its last signal): with
# `signal.signal(SIGTERM, lambda *_: stop.set())` this hung in 10 of 10 runs.
DAEMON = """
import os, signal, sys, threading
from netplane import signals
stop = threading.Event()
signals.on_signals(lambda signum: stop.set(), signal.SIGTERM, signal.SIGINT)
print("up", flush=True)
while not stop.wait(0.0001):
    pass
while not os.path.exists(sys.argv[1]):  # shutting down, still waiting for things
    stop.wait(0.0001)
"""


def test_a_storm_of_sigterms_stops_the_daemon_every_time(tmp_path):
    for i in range(10):
        stormed = tmp_path / f"stormed{i}"
        proc = subprocess.Popen(
            [sys.executable, "-c", DAEMON, str(stormed)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout.readline() == "up\n"
            sigterm_storm(proc.pid)
            stormed.touch()
            assert proc.wait(5) == 0
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()


def test_a_child_forked_after_forget_writes_nothing_into_its_own_files(tmp_path):
    """A forked DNS worker closes the parent's descriptors and opens its own: the parent's
    wakeup fd number then names one of the child's files, where each signal would write a
    byte, unless the child called `forget()`."""
    code = """
import os, signal, sys, threading
from netplane import signals
signals.on_signals(lambda signum: None, signal.SIGTERM)
pid = os.fork()
if pid == 0:
    signals.forget()
    os.closerange(3, 1024)
    files = [open(os.path.join(sys.argv[1], str(i)), "wb", buffering=0) for i in range(8)]
    signal.signal(signal.SIGUSR1, lambda *_: None)
    os.kill(os.getpid(), signal.SIGUSR1)
    os._exit(0)
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path)], timeout=20).returncode == 0
    assert {f.stat().st_size for f in tmp_path.iterdir()} == {0}


def test_sigterm_unwinds_once_so_a_second_one_cannot_cut_the_cleanup_short():
    code = """
import os, signal, time
from netplane.signals import sigterm_unwinds
try:
    with sigterm_unwinds():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # `pkill` again while the namespaces go
            time.sleep(0.05)
            print("cleaned", flush=True)
except KeyboardInterrupt as e:
    print(e)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert done.stdout == f"cleaned\nsignal {signal.SIGTERM.value}\n", done.stderr
