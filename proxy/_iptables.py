"""Running iptables-restore / iptables-save, and choosing the legacy or nft variant.

The only module that executes iptables binaries. Commands run in the caller's network
namespace, or inside `netns` (tests) through `ip netns exec`.
"""

from __future__ import annotations

import logging
import queue
import re
import subprocess
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

VARIANTS = ("legacy", "nft")
OURS = re.compile(r"KUBE-|netplane")


class RestoreError(RuntimeError):
    """iptables-restore refused the input; `line` is the failing input line when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


@dataclass(frozen=True, slots=True)
class Iptables:
    """One binary family: (variant, IP family), optionally inside a named netns."""

    variant: str = "nft"  # legacy | nft
    family: str = "ipv4"  # ipv4 | ipv6
    netns: str | None = None
    wait: int = 30  # seconds to wait for the xtables lock (one lock for all namespaces)

    def _cmd(self, tool: str) -> list[str]:
        base = "ip6tables" if self.family == "ipv6" else "iptables"
        argv = [f"{base}-{self.variant}{tool}"]
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else argv

    def _run(self, argv: list[str], input: str | None = None) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(argv, input=input, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:  # missing binary, hung lock holder
            raise RestoreError(f"{' '.join(argv[:1])}: {e}") from e

    def _restore_argv(self) -> list[str]:
        return [*self._cmd("-restore"), "--noflush", "--counters", "-w", str(self.wait)]

    def restore(self, text: str) -> None:
        """Apply TEXT as one `--noflush --counters` transaction per table."""
        proc = self._run(self._restore_argv(), text)
        if proc.returncode != 0:
            raise self._failure(proc.stderr, text)

    def restore_stream(self, pieces: Iterable[str]) -> int:
        """Like `restore("".join(PIECES))`, but iptables-restore starts at once and parses
        each piece while the caller produces the next; returns the bytes sent.

        Nothing reaches the kernel before a table's COMMIT, so this is as atomic as
        `restore`. A writer thread feeds the pipe (its blocking writes release the GIL)
        so that producing pieces never waits for iptables-restore to read. Stops taking
        pieces once iptables-restore has failed. Subclasses that override `restore`
        (recorders, test doubles) get the joined text through it instead.
        """
        if type(self).restore is not Iptables.restore:
            text = "".join(pieces)
            self.restore(text)
            return len(text.encode())
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
                    data = piece.encode()
                    sent.append(data)
                    feed.put(data)
                if not feed.close(600):  # it stopped reading (a hung lock holder?)
                    raise subprocess.TimeoutExpired(proc.args, 600)
                proc.wait(600)
            except BaseException as e:  # a failing producer or a hung lock: commit nothing
                proc.kill()
                feed.close()
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

    def save(self, table: str | None = None) -> str:
        argv = self._cmd("-save") + (["-t", table] if table else [])
        proc = self._run(argv)
        if proc.returncode != 0:
            raise RestoreError(f"{argv[-3 if table else -1]} failed: {proc.stderr.strip()}")
        return proc.stdout

    def command(self, *args: str) -> subprocess.CompletedProcess:
        """`iptables ARGS` (no check: callers look at the return code)."""
        return self._run([*self._cmd(""), "-w", str(self.wait), *args])

    def chain_exists(self, table: str, chain: str) -> bool:
        return self.command("-t", table, "-S", chain).returncode == 0


class _Feeder:
    """Writes queued bytes to a process's stdin from a thread; closing ends its input."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self._stdin = proc.stdin
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.broken = False  # the reader went away (iptables-restore failed and exited)
        self._thread = threading.Thread(target=self._run, name="restore-feed", daemon=True)
        self._thread.start()

    def put(self, data: bytes) -> None:
        self._queue.put(data)

    def close(self, timeout: float | None = None) -> bool:
        """End the input; False when the writer is still blocked after TIMEOUT seconds."""
        self._queue.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            while (data := self._queue.get()) is not None:
                self._stdin.write(data)
        except (BrokenPipeError, ValueError):
            self.broken = True
            while self._queue.get() is not None:  # let close() finish
                pass
        finally:
            try:
                self._stdin.close()
            except BrokenPipeError:
                self.broken = True


def count_ours(save_output: str) -> int:
    """Chains and rules that kube-proxy or netplane created in an iptables-save dump."""
    return sum(
        1 for line in save_output.splitlines() if line[:1] in (":", "-") and OURS.search(line)
    )


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
