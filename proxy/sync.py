"""The syncer: cluster snapshot + changes -> iptables-restore transactions in the kernel.

It keeps what it last applied and each service's rendered rules, so a sync renders only the
services the ChangeTracker reported and writes only the chains whose lines changed (when
only endpoints changed, KUBE-SERVICES is not rewritten). A full sync (at start, after a
failure, when asked) rewrites every chain and garbage-collects stale service chains found
in the kernel. On the nft variant big writes are cut into chunks (see `_plan.chunked`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from netplane.proxy import _plan
from netplane.proxy._conntrack import Conntrack, Flow, flows, stale
from netplane.proxy._iptables import VARIANTS, Iptables, RestoreError, count_ours
from netplane.proxy.render import (
    TOP_LEVEL_CHAINS,
    ProxyConfig,
    ServiceRules,
    Tables,
    assemble,
    paused_gc,
    render_service,
)
from netplane.state import Changes, ServiceKey, Snapshot

log = logging.getLogger(__name__)

_EMPTY = ServiceRules()
CHUNK_SERVICES = 250  # per iptables-nft-restore call; proxy/README.md has the sweep
STREAM_BATCH = 250  # services rendered per piece streamed into iptables-restore

Rendered = list[tuple[ServiceKey, ServiceRules | None, ServiceRules]]  # (key, old, new)


class SyncError(RuntimeError):
    """A restore failed; `partial` tells which kind (metrics count them apart)."""

    def __init__(self, message: str, partial: bool) -> None:
        super().__init__(message)
        self.partial = partial


@dataclass(frozen=True, slots=True)
class SyncResult:
    full: bool
    keys: frozenset[ServiceKey]  # services rendered in this sync
    restores: int  # iptables-restore calls
    bytes: int  # sent to iptables-restore
    chains_written: int
    chains_deleted: int
    compute_seconds: float  # render + assemble + plan (pure Python)
    total_seconds: float
    rules: dict[str, int] = field(default_factory=dict)  # table -> rules now in place


_CANARY_TABLES = ("mangle", "nat", "filter")


class Syncer:
    def __init__(
        self,
        config: ProxyConfig,
        iptables: Iptables,
        conntrack: Conntrack | None = None,
        chunk: int | None = None,
    ) -> None:
        self.config = config
        self.iptables = iptables
        self.conntrack = conntrack
        # chunking only helps the nft variant; legacy rewrites the whole table per call
        self.chunk = (
            chunk if chunk is not None else (CHUNK_SERVICES if iptables.variant == "nft" else 0)
        )
        self._rules: dict[ServiceKey, ServiceRules] = {}
        self._flows: dict[ServiceKey, frozenset[Flow]] = {}
        self._desired: Tables | None = None  # what the snapshot asks for
        self._counts: dict[str, int] = {"nat": 0, "filter": 0}  # rules per table in _desired
        self._applied: Tables | None = None  # what the last successful sync wrote
        self.needs_full = True

    @property
    def applied(self) -> Tables | None:
        """A copy of what the last successful sync left in the kernel (None: unknown).

        A copy because the syncer patches its tables in place on the next sync.
        """
        if self._applied is None:
            return None
        return {table: dict(chains) for table, chains in self._applied.items()}

    @property
    def in_sync(self) -> bool:
        """The last sync succeeded (so the kernel holds what the syncer last wrote)."""
        return self._applied is not None

    def canary_present(self) -> bool:
        """False when someone flushed one of our tables.

        Checked in every table that has one (mangle first: it is the cheapest to list): legacy
        iptables commits each table separately, so a flush can land between two commits of a
        resync and leave one table's canary standing over another table's empty chains.
        """
        return all(self.iptables.chain_exists(t, _plan.CANARY) for t in _CANARY_TABLES)

    def sync(
        self, snapshot: Snapshot, changes: Changes | None = None, full: bool = False
    ) -> SyncResult:
        """Bring the kernel to SNAPSHOT, rendering only the services CHANGES names.

        CHANGES=None renders every service. A full sync (FULL, the first one, or the one
        after a failure) writes every chain; otherwise only the chains that changed.
        """
        start = time.monotonic()
        full = full or self.needs_full or self._applied is None
        if changes is None or changes.nodes or not self._rules:
            keys = frozenset(snapshot.services) | frozenset(self._rules)
        else:
            keys = changes.services | changes.endpoints
        if full and not (
            self.chunk and len(set(snapshot.services) | set(self._rules)) > self.chunk
        ):
            return self._sync_streamed(snapshot, keys, start)  # one call: stream it
        with paused_gc():  # ~200k acyclic objects per full render: collections only cost
            desired, previous = self._desired_state(snapshot, keys)
        jumps = None
        if full:
            try:
                saved = _plan.parse_save(self.iptables.save(), all_rules=False)
            except RestoreError as e:
                raise SyncError(str(e), partial=False) from e
            existing = {t: saved.chains.get(t, frozenset()) for t in desired}
            write = desired
            deleted = _plan.stale_chains(desired, existing)
            jumps = _plan.missing_jumps(saved)
        else:
            existing = {t: self._applied.get(t, {}).keys() for t in desired}
            write, deleted = _plan.changes(desired, self._applied, previous)
        if self.chunk and len(write.get("nat", ())) > self.chunk:
            groups = (self._rules[k].nat_chains for k in sorted(self._rules))
            texts = _plan.chunked(write, deleted, existing, groups, self.chunk)
        else:
            texts = _plan.single(write, deleted)
        if jumps:
            texts = _plan.append_lines(texts, jumps)
        compute = time.monotonic() - start
        self.needs_full = True  # until this sync is known to have succeeded
        try:
            for text in texts:
                self.iptables.restore(text)
        except RestoreError as e:
            self._applied = None
            raise SyncError(str(e), partial=not full) from e
        self._applied = desired
        self.needs_full = False
        self._clear_stale_udp(snapshot, keys)
        return SyncResult(
            full=full,
            keys=keys,
            restores=len(texts),
            bytes=sum(len(t.encode()) for t in texts),
            chains_written=sum(len(c) for c in write.values()),
            chains_deleted=sum(len(d) for d in deleted.values()),
            compute_seconds=compute,
            total_seconds=time.monotonic() - start,
            rules=dict(self._counts),
        )

    def _sync_streamed(
        self, snapshot: Snapshot, keys: frozenset[ServiceKey], start: float
    ) -> SyncResult:
        """A one-call full sync whose restore input is rendered while iptables-restore
        parses it, so the cold render (~0.3 s of CPU at 10k services) runs beside the
        parse instead of before it. Same bookkeeping and failure handling as `sync`.
        """
        try:
            saved = _plan.parse_save(self.iptables.save(), all_rules=False)
        except RestoreError as e:
            raise SyncError(str(e), partial=False) from e
        compute = [0.0]
        counts: dict[str, int] = {}
        pieces = _timed(self._full_pieces(snapshot, keys, saved, counts), compute)
        self.needs_full = True  # until this sync is known to have succeeded
        with paused_gc():  # ~200k acyclic objects per full render: collections only cost
            try:
                sent = _restore_stream(self.iptables, pieces)
            except RestoreError as e:
                self._applied = None
                for _ in pieces:  # finish rendering: the bookkeeping must cover every service
                    pass
                raise SyncError(str(e), partial=False) from e
        self._applied = self._desired
        self.needs_full = False
        self._clear_stale_udp(snapshot, keys)
        return SyncResult(
            full=True,
            keys=keys,
            restores=1,
            bytes=sent,
            chains_written=counts["written"],
            chains_deleted=counts["deleted"],
            compute_seconds=compute[0],
            total_seconds=time.monotonic() - start,
            rules=dict(self._counts),
        )

    def _full_pieces(
        self,
        snapshot: Snapshot,
        keys: frozenset[ServiceKey],
        saved: _plan.Saved,
        counts: dict[str, int],
    ) -> Iterator[str]:
        """Render KEYS in batches (every service's chains are written: a full sync), then
        assemble; `_plan.streamed_full` makes restore text of it as it comes."""

        def batches() -> Iterator[dict[str, tuple[str, ...]]]:
            order = sorted(keys | self._rules.keys())
            for i in range(0, len(order), STREAM_BATCH):
                batch = order[i : i + STREAM_BATCH]
                self._store(self._render(snapshot, [k for k in batch if k in keys]))
                yield {
                    c: lines
                    for k in batch
                    if k in self._rules
                    for c, lines in self._rules[k].nat_chains.items()
                }

        def finish() -> _plan.Finish:
            desired = self._assemble()
            existing = {t: saved.chains.get(t, frozenset()) for t in desired}
            deleted = _plan.stale_chains(desired, existing)
            counts["written"] = sum(len(c) for c in desired.values())
            counts["deleted"] = sum(len(d) for d in deleted.values())
            return desired, deleted, _plan.missing_jumps(saved)

        return _plan.streamed_full(TOP_LEVEL_CHAINS["nat"], batches(), finish)

    def _render(self, snapshot: Snapshot, keys: Iterable[ServiceKey]) -> Rendered:
        """(key, old rules, new rules) of the services among KEYS whose rules changed."""
        rendered: Rendered = []
        for key in keys:
            old = self._rules.get(key)
            if key not in snapshot.services:
                if old is not None:
                    rendered.append((key, old, _EMPTY))
                continue
            try:
                new = render_service(snapshot, key, self.config)
            except (ValueError, KeyError) as e:  # one bad service must not stop the rest
                log.error("service %s/%s: cannot program it: %s", *key, e)
                continue
            if new is not old:  # the renderer returns the very same object when unchanged
                rendered.append((key, old, new))
        return rendered

    def _store(self, rendered: Rendered) -> None:
        for key, _, new in rendered:
            if new is _EMPTY:
                del self._rules[key]
            else:
                self._rules[key] = new

    def _assemble(self) -> Tables:
        self._desired = assemble(self.config, [self._rules[k] for k in sorted(self._rules)])
        self._counts = {t: sum(map(len, c.values())) for t, c in self._desired.items()}
        return self._desired

    def _desired_state(
        self, snapshot: Snapshot, keys: frozenset[ServiceKey]
    ) -> tuple[Tables, dict[str, dict[str, tuple[str, ...] | None]] | None]:
        """Render KEYS and update the desired tables; also the previous lines of the chains
        that may have changed (None: compare everything).

        When no service's lines in the shared chains changed (the common case: endpoints
        moved), the tables are patched in place with the services' own chains instead of
        assembling every service again and copying 60,000-chain dicts: that keeps a
        one-endpoint change at 10k services in about a millisecond of Python.
        """
        rendered = self._render(snapshot, keys)
        self._store(rendered)
        if self._desired is None or any(
            old is None or old.shared != new.shared for _, old, new in rendered
        ):
            return self._assemble(), None
        nat = self._desired["nat"]
        previous: dict[str, tuple[str, ...] | None] = {}
        for _, old, new in rendered:
            for chain in old.nat_chains:
                if chain not in new.nat_chains:
                    previous.setdefault(chain, nat.get(chain))
                    self._counts["nat"] -= len(nat.pop(chain, ()))
            for chain, lines in new.nat_chains.items():
                previous.setdefault(chain, nat.get(chain))
                self._counts["nat"] += len(lines) - len(nat.get(chain, ()))
                nat[chain] = lines
        return self._desired, {"nat": previous}

    def _clear_stale_udp(self, snapshot: Snapshot, keys: frozenset[ServiceKey]) -> None:
        for key in keys:
            before = self._flows.get(key, frozenset())
            after = flows(snapshot, key, self.config.family)
            if after:
                self._flows[key] = after
            else:
                self._flows.pop(key, None)
            if self.conntrack is None:
                continue
            for flow in stale(before, after):
                log.debug("clearing UDP conntrack entries of %s %s", key, flow)
                self.conntrack.clear(flow)


def _timed(pieces: Iterator[str], spent: list[float]) -> Iterator[str]:
    """PIECES, adding the time spent producing them to SPENT[0] (the sync's Python cost)."""
    while True:
        begin = time.monotonic()
        try:
            piece = next(pieces)
        except StopIteration:
            spent[0] += time.monotonic() - begin
            return
        spent[0] += time.monotonic() - begin
        yield piece


def _restore_stream(iptables: Iptables, pieces: Iterator[str]) -> int:
    """Stream when the runner can (Iptables); anything else gets the joined text."""
    stream = getattr(iptables, "restore_stream", None)
    if stream is not None:
        return stream(pieces)
    text = "".join(pieces)
    iptables.restore(text)
    return len(text.encode())


def cleanup(variant: str = "auto") -> None:
    """Remove every KUBE-* / netplane chain and the rules jumping to them (both families).

    Runs in the caller's network namespace. 'auto' cleans whichever variants hold rules.
    """
    variants = VARIANTS if variant == "auto" else (variant,)
    for v in variants:
        for family in ("ipv4", "ipv6"):
            ipt = Iptables(v, family)
            try:
                dump = ipt.save()
            except RestoreError as e:
                log.debug("skipping %s %s: %s", v, family, e)
                continue
            text = cleanup_restore(dump)
            if text:
                log.info("removing %d netplane rules/chains (%s, %s)", count_ours(dump), v, family)
                ipt.restore(text)


def cleanup_restore(dump: str) -> str:
    """Pure: the restore input that undoes everything of ours found in an iptables-save DUMP."""
    saved = _plan.parse_save(dump)
    out = []
    for table, chains in saved.chains.items():
        ours = sorted(c for c in chains if _plan.OURS_CHAIN.match(c))
        unjump = [
            "-D" + line[2:]
            for line in saved.rules.get(table, ())
            if line.split()[1] not in ours and _plan.targets([line]) & set(ours)
        ]
        if ours or unjump:
            out.append(f"*{table}")
            out += [f":{c} - [0:0]" for c in ours]
            out += unjump
            out += [f"-X {c}" for c in ours]
            out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""
