"""The seam between the daemon loop and a kernel backend (iptables today, nftables next).

The loop (`proxy/daemon.py`) owns the schedule: when to sync, when to look at the kernel,
how long to back off after a failure, when to stop. A backend owns the kernel: what to
write, how, and how to read it back. `netplane.proxy.sync.Syncer` (iptables) is the first
implementation; proxy/README.md ("Backends") states the contract in prose.

Every backend keeps these rules; the loop relies on them:
- Kernel transactions are atomic, and every state between two of them is consistent (no
  jump to a chain, map or set that does not exist).
- `sync(full=False)` writes only what changed since the last successful sync: there is no
  periodic full rewrite. A full sync (at start, after a failed transaction, when asked)
  checks everything it owns.
- A failed transaction raises `SyncError` (one per failed transaction: the loop counts
  them in `..._restore_failures_total`) and changes nothing else. A full sync that fails
  part-way continues from the failed transaction on the next call (the transactions
  before it stay done); `needs_full` tells the loop a full sync is due.
- `stop`: long syncs check it between transactions and raise `SyncInterrupted`; what is
  in the kernel then is consistent, and the next process's first (full) sync picks up.
- `kernel_changed()` is O(1) (it runs every second): did anybody write to the tables we
  own since we last wrote or verified them?
- `intact()` is cheap (milliseconds whatever the rule count): are the few things whose
  loss takes every service down (the jumps from the built-in chains, our tables and base
  chains) still there? The loop asks it instead of a read-back while foreign writes are
  frequent and harmless.
- `verify()` reads back what we own, compares it with what we last wrote, repairs what
  drifted (only that) and says what it found.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol

from netplane.state import Changes, ServiceKey, Snapshot


class SyncError(RuntimeError):
    """A kernel transaction failed (nothing of it applied).

    `partial`: it belonged to a partial sync (kube-proxy counts those apart too);
    `progress`: earlier transactions of the same sync were committed, so retrying soon
    moves forward (the loop resets its back-off).
    """

    def __init__(self, message: str, partial: bool, progress: bool = False) -> None:
        super().__init__(message)
        self.partial = partial
        self.progress = progress


class SyncInterrupted(Exception):
    """The stop event was set between two transactions; the kernel is consistent."""


@dataclass(frozen=True, slots=True)
class SyncResult:
    full: bool
    keys: frozenset[ServiceKey]  # services rendered in this sync
    restores: int  # kernel transactions (iptables-restore calls)
    bytes: int  # sent to the kernel tools
    chains_written: int  # chains (nftables: chains, sets and map elements) written
    chains_deleted: int
    compute_seconds: float  # render + plan (pure Python)
    total_seconds: float
    rules: dict[str, int] = field(default_factory=dict)  # table -> rules now in place
    resumed: bool = False  # continued a full sync that failed part-way


@dataclass(frozen=True, slots=True)
class Drift:
    """One thing the kernel holds differently from what we last wrote."""

    table: str
    chain: str
    kind: str  # missing | flushed | changed | stale | jump
    detail: str = ""

    def __str__(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.table} {self.chain} {self.kind}{extra}"


@dataclass(frozen=True, slots=True)
class VerifyResult:
    drift: tuple[Drift, ...]  # empty: the kernel holds exactly what we wrote
    repaired: int  # chains (and jumps) rewritten to repair it
    read_bytes: int  # size of the read-back
    seconds: float


class Backend(Protocol):
    """What the daemon loop drives. See the module docstring for the rules."""

    name: str  # "iptables" | "nftables": log lines and `netplane proxy run --backend`

    @property
    def needs_full(self) -> bool:
        """A full sync is due: nothing written yet, or a transaction failed."""
        ...

    def sync(
        self,
        snapshot: Snapshot,
        changes: Changes | None = None,
        *,
        full: bool = False,
        stop: threading.Event | None = None,
    ) -> SyncResult:
        """Bring the kernel to SNAPSHOT, rendering the services CHANGES names (None: all).

        Raises SyncError (one failed transaction) or SyncInterrupted (STOP was set).
        """
        ...

    def kernel_changed(self) -> bool:
        """O(1): somebody may have written to our tables since we last wrote or verified."""
        ...

    def intact(self) -> bool:
        """Cheap: the entry points into our rules are all there (False: a read-back is due
        now). Checked once per kernel generation; True when nothing is written yet."""
        ...

    def verify(self, stop: threading.Event | None = None) -> VerifyResult:
        """Read back what we own, repair what drifted (raises SyncError when the repair
        fails: the next sync is then full)."""
        ...

    def cleanup(self) -> None:
        """Remove everything this kind of backend writes (another backend is starting)."""
        ...
