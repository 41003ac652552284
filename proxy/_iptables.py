"""Running iptables-restore / iptables-save, and choosing the legacy or nft variant.

The only module that executes iptables binaries. `Runner` is the interface the syncer
reaches the kernel through; `Iptables` is the real one (commands run in the caller's
network namespace, or inside `netns` through `ip netns exec`), and
`netplane.testing.kernel.FakeIptables` the one test double. Every call that can take
long takes a `stop` event: setting it kills the tool, which commits nothing (a restore
is applied by one atomic kernel call at COMMIT, or not at all).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import select
import subprocess
import tempfile
import threading
import time
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from netplane.proxy._fingerprint import Fingerprint
from netplane.proxy._plan import count_ours
from netplane.proxy.backend import SyncInterrupted

log = logging.getLogger(__name__)

VARIANTS = ("legacy", "nft")
TIMEOUT = 600.0  # seconds for one tool run (a hung xtables lock holder must not hang us)
_POLL = 0.05  # seconds between looks at the stop event while a tool runs


class RestoreError(RuntimeError):
    """iptables-restore refused the input; `line` is the failing input line when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


class Runner(Protocol):
    """How the iptables backend reaches the kernel (see the module docstring)."""

    @property
    def variant(self) -> str:
        """legacy | nft"""
        ...

    @property
    def family(self) -> str:
        """ipv4 | ipv6"""
        ...

    def restore(self, text: str, stop: threading.Event | None = None) -> None:
        """Apply TEXT (`--noflush --counters`, one transaction per table)."""
        ...

    def restore_stream(self, pieces: Iterable[str], stop: threading.Event | None = None) -> int:
        """`restore("".join(PIECES))`, parsed while PIECES are produced; returns bytes sent."""
        ...

    def save(self, table: str | None = None, stop: threading.Event | None = None) -> str:
        """`iptables-save` (of TABLE, or all)."""
        ...

    def list_rules(self, table: str, chain: str) -> list[str] | None:
        """`iptables -S CHAIN` lines (`-A ...` only), or None when the chain does not exist.
        Cheap on the nft variant whatever the table size; legacy reads the whole table."""
        ...

    def fingerprint(self) -> Hashable | None:
        """O(1): a value that changes whenever the tables change (None: unknown)."""
        ...


@dataclass(frozen=True, slots=True)
class Iptables:
    """The real runner for one binary family: (variant, IP family), optionally in a netns."""

    variant: str = "nft"  # legacy | nft
    family: str = "ipv4"  # ipv4 | ipv6
    netns: str | None = None
    wait: int = 30  # seconds to wait for the xtables lock (one lock for all namespaces)
    _fingerprint: Fingerprint | None = field(default=None, init=False, repr=False, compare=False)

    def _cmd(self, tool: str) -> list[str]:
        base = "ip6tables" if self.family == "ipv6" else "iptables"
        argv = [f"{base}-{self.variant}{tool}"]
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else argv

    def _run(self, argv: list[str], stop: threading.Event | None = None) -> tuple[int, str, str]:
        """(exit code, stdout, stderr) of a tool that reads no input; a STOP request kills
        it (SyncInterrupted). Input goes through `restore_stream`'s feeder instead:
        `communicate()` retried after a timeout stops writing what is left of its input."""
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        except OSError as e:  # missing binary
            raise RestoreError(f"{argv[0]}: {e}") from e
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                out, err = proc.communicate(timeout=_POLL if stop else TIMEOUT)
                return proc.returncode, out, err
            except subprocess.TimeoutExpired:
                interrupted = stop is not None and stop.is_set()
                if interrupted or time.monotonic() > deadline:
                    proc.kill()
                    proc.communicate()
                    if interrupted:
                        raise SyncInterrupted(f"{argv[0]} stopped") from None
                    raise RestoreError(f"{argv[0]}: no answer in {TIMEOUT:.0f} s") from None

    def _restore_argv(self) -> list[str]:
        return [*self._cmd("-restore"), "--noflush", "--counters", "-w", str(self.wait)]

    def restore(self, text: str, stop: threading.Event | None = None) -> None:
        self.restore_stream((text,), stop)

    def restore_stream(self, pieces: Iterable[str], stop: threading.Event | None = None) -> int:
        """Like `restore("".join(PIECES))`, but iptables-restore starts at once and parses
        each piece while the caller produces the next; returns the bytes sent.

        Nothing reaches the kernel before a table's COMMIT, so this is as atomic as
        `restore`. A writer thread feeds the pipe (its blocking writes release the GIL)
        so that producing pieces never waits for iptables-restore to read. Stops taking
        pieces once iptables-restore has failed.
        """
        sent: list[bytes] = []
        with tempfile.TemporaryFile() as err:  # a file: a chatty stderr cannot block it
            try:
                proc = subprocess.Popen(
                    self._restore_argv(),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
            except OSError as e:
                raise RestoreError(f"{self._cmd('-restore')[-1]}: {e}") from e
            feed = _Feeder(proc)
            try:
                for piece in pieces:
                    if feed.broken:
                        break
                    if stop is not None and stop.is_set():
                        raise SyncInterrupted("restore stopped before its COMMIT")
                    data = piece.encode()
                    sent.append(data)
                    feed.put(data)
                feed.end()
                _wait(proc, stop, feed)
            except BaseException as e:  # a failing producer, a stop, a hung lock: commit nothing
                proc.kill()
                feed.end()
                feed.join()
                proc.wait()
                if isinstance(e, subprocess.TimeoutExpired):
                    raise RestoreError(f"{self._cmd('-restore')[-1]}: {e}") from e
                raise
            if proc.returncode != 0:
                err.seek(0)
                text = b"".join(sent).decode()
                raise self._failure(err.read().decode(errors="replace"), text)
        return sum(map(len, sent))

    def _failure(self, stderr: str, text: str) -> RestoreError:
        err = stderr.strip()
        m = re.search(r"line:? (\d+)", err)
        line = int(m.group(1)) if m else None
        detail = ""
        if line is not None:
            lines = text.splitlines()
            if 0 < line <= len(lines):
                detail = f" (input line {line}: {lines[line - 1]!r})"
        return RestoreError(f"{self._cmd('-restore')[-1]} failed: {err}{detail}", line)

    def save(self, table: str | None = None, stop: threading.Event | None = None) -> str:
        argv = self._cmd("-save") + (["-t", table] if table else [])
        code, out, err = self._run(argv, stop)
        if code != 0:
            raise RestoreError(f"{' '.join(argv[-3 if table else -1 :])} failed: {err.strip()}")
        return out

    def list_rules(self, table: str, chain: str) -> list[str] | None:
        code, out, _ = self._run([*self._cmd(""), "-w", str(self.wait), "-t", table, "-S", chain])
        if code != 0:
            return None
        return [line for line in out.splitlines() if line.startswith("-A ")]

    def fingerprint(self) -> Hashable | None:
        probe = self._fingerprint
        if probe is None:
            probe = Fingerprint(self.variant, self.family, self.netns)
            object.__setattr__(self, "_fingerprint", probe)
        return probe.read()


def _wait(proc: subprocess.Popen, stop: threading.Event | None, feed: _Feeder) -> None:
    """Wait until FEED has written everything and PROC exited (TimeoutExpired after
    TIMEOUT: a hung lock holder?); a STOP request raises SyncInterrupted at once."""
    deadline = time.monotonic() + TIMEOUT
    with _ExitWatch(proc) as exited:
        while True:
            if feed.join(_POLL) and exited(_POLL):  # everything written, the tool gone
                return
            if stop is not None and stop.is_set():
                raise SyncInterrupted("restore stopped before its COMMIT")
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(proc.args, TIMEOUT)


class _ExitWatch(contextlib.AbstractContextManager):
    """`exited(timeout)`: True (and the process reaped) as soon as PROC exits.

    `Popen.wait(timeout)` polls with sleeps that double up to 50 ms: it saw a 40 ms tool
    exit after 51-52 ms (median of 15, load 14), where a pidfd, which wakes `poll` the
    moment the process exits, saw it after 43-46 ms; a one-endpoint change's restore takes
    15-100 ms. Without pidfds (Linux < 5.3) it falls back to `Popen.wait`.
    """

    def __init__(self, proc: subprocess.Popen) -> None:
        self._proc = proc
        self._poll: select.poll | None = None
        self._fd = -1
        try:
            self._fd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):  # an old kernel, or already reaped
            return
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)

    def __call__(self, timeout: float) -> bool:
        if self._poll is not None and not self._poll.poll(timeout * 1000):
            return False
        try:
            self._proc.wait(0 if self._poll is not None else timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)


class _Feeder:
    """Writes queued bytes to a process's stdin from a thread; closing ends its input."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None, "started with stdin=PIPE"
        self._stdin = proc.stdin
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.broken = False  # the reader went away (iptables-restore failed and exited)
        self._ended = False
        self._thread = threading.Thread(target=self._run, name="restore-feed", daemon=True)
        self._thread.start()

    def put(self, data: bytes) -> None:
        self._queue.put(data)

    def end(self) -> None:
        """No more input: the writer closes the pipe once the queue is written (once)."""
        if not self._ended:
            self._ended = True
            self._queue.put(None)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the writer to finish; False when it is still writing after TIMEOUT."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            while (data := self._queue.get()) is not None:
                self._stdin.write(data)
        except (BrokenPipeError, ValueError):
            self.broken = True
            while self._queue.get() is not None:  # drain up to end()
                pass
        finally:
            try:
                self._stdin.close()
            except BrokenPipeError:
                self.broken = True


def system_is_nft(netns: str | None = None) -> bool:
    argv = ["iptables", "--version"]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return True
    return "nf_tables" in out


def detect_variant(requested: str = "auto", family: str = "ipv4", netns: str | None = None) -> str:
    """kube-proxy's choice: the variant that holds our rules, else what `iptables` is.

    A node switched between variants keeps working: the variant that already holds more
    KUBE-/netplane rules wins, so a restart does not leave a second, stale rule set
    shadowing the first.
    """
    if requested in VARIANTS:
        return requested
    counts = {}
    for v in VARIANTS:
        try:
            counts[v] = count_ours(Iptables(v, family, netns).save())
        except RestoreError:
            counts[v] = 0
    if counts["legacy"] > counts["nft"]:
        chosen = "legacy"
    elif counts["nft"] > counts["legacy"]:
        chosen = "nft"
    else:
        chosen = "nft" if system_is_nft(netns) else "legacy"
    log.info(
        "iptables variant: %s (our rules: legacy %d, nft %d)",
        chosen,
        counts["legacy"],
        counts["nft"],
    )
    return chosen
