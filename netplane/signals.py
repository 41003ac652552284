"""Stop signals acted on outside the signal handler.

A Python signal handler runs in the main thread between two of its bytecodes, so possibly
while that thread holds a lock: inside `Event.wait()` or `Event.set()` it holds the
event's own (non-reentrant) lock, inside `Thread.start()` the threading module's. A
handler that sets an event or starts a thread then waits for ever on a lock its own
thread holds: a DNS server sent 300 SIGTERMs 50 us apart hung in 5 of 20 runs, a worker
in 4 of 20, and only SIGKILL ended them (a hung worker keeps its SO_REUSEPORT share of
the port and answers nothing). Here the Python handler does nothing; CPython's C-level
handler writes the signal's number to a pipe (`signal.set_wakeup_fd`) and a thread of
ours, which holds nothing the main thread might, runs the callback.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def on_signals(callback: Callable[[int], None], *signums: int) -> None:
    """Call CALLBACK(signum) from a thread of its own for each of SIGNUMS received.

    Call from the main thread, once per process (it takes the process's one wakeup fd).
    A child forked afterwards must call `forget()` before it handles signals itself."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)  # a full pipe drops the byte, never blocks the handler
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)  # first: no signal goes unseen
    wanted = frozenset(signums)
    threading.Thread(
        target=_relay, args=(read_end, wanted, callback), name="signals", daemon=True
    ).start()
    for signum in signums:
        signal.signal(signum, _nothing)


def forget() -> None:
    """In a forked child: stop writing signals to the parent's pipe (its fd number may be
    closed and reused for something else in the child)."""
    signal.set_wakeup_fd(-1)


def _nothing(_signum: int, _frame: object) -> None:
    """The Python-level handler: everything happens in `_relay`."""


def _relay(fd: int, wanted: frozenset[int], callback: Callable[[int], None]) -> None:
    while True:
        for signum in os.read(fd, 64):
            if signum in wanted:
                callback(signum)


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Inside, SIGTERM unwinds like Ctrl-C (KeyboardInterrupt), so that every `finally`
    removes what a run made (a killed benchmark once left 147 namespaces behind). Once:
    a second SIGTERM (`pkill` again, `timeout` then its caller) would interrupt that cleanup."""

    def unwind(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, unwind)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
