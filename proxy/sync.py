"""The iptables backend: cluster snapshot + changes -> iptables-restore transactions.

It keeps each service's rendered rules and what it knows the kernel holds of our chains
(`_known`: the lines as written, or None for a chain that exists with contents it does
not know). Every sync is the same three steps: render the services that changed, compare
the desired chains with `_known` (`_plan.diff`), and apply the difference as one or more
transactions (`_apply`), recording each committed transaction in `_known` as it goes.
- partial sync (the default): only the chains of re-rendered services are compared, so an
  endpoint change writes that service's chains and nothing else;
- full sync (at start, after a failed partial restore, when asked): `_known` is rebuilt
  from `iptables-save` (chain names only), so every chain is rewritten and stale service
  chains are deleted; on the nft variant big writes are cut into chunks (`_plan.chunked`);
- resumed full sync: after a chunk failed, the next sync writes what is still unknown,
  from the failed chunk on, instead of starting over;
- verify: `iptables-save` read back and compared (`_plan.drift`); drifted chains are
  marked unknown and rewritten, nothing else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator

from netplane.proxy import _plan
from netplane.proxy._conntrack import Conntrack, UdpFlows
from netplane.proxy._iptables import VARIANTS, Iptables, RestoreError, Runner
from netplane.proxy._plan import Transaction
from netplane.proxy.backend import SyncError, SyncInterrupted, SyncResult, VerifyResult
from netplane.proxy.render import (
    EMPTY_RULES,
    TOP_LEVEL_CHAINS,
    ProxyConfig,
    ServiceRules,
    Tables,
    assemble,
    paused_gc,
    render_service,
    rerender,
)
from netplane.state import Changes, ServiceKey, Snapshot

log = logging.getLogger(__name__)

CHUNK_SERVICES = 250  # per iptables-nft-restore call; proxy/README.md has the sweep
STREAM_BATCH = 250  # services rendered per piece streamed into iptables-restore
_TABLES = ("nat", "filter")

Rendered = list[tuple[ServiceKey, ServiceRules, ServiceRules]]  # (key, old, new)

# What the next sync must do besides the changes (Syncer._pending).
_FULL = "full"  # rebuild _known from the kernel and rewrite everything
_RESUME = "resume"  # write every chain whose contents are not known (a full sync's rest)


class Syncer:
    """The iptables `Backend` (proxy/backend.py) for one IP family."""

    name = "iptables"

    def __init__(
        self,
        config: ProxyConfig,
        iptables: Runner,
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
        self._rendered_all = False  # _rules covers every service of the last snapshot
        self._udp = UdpFlows(config.family, conntrack)
        self._desired: Tables | None = None  # what the snapshot asks for
        self._counts: dict[str, int] = {t: 0 for t in _TABLES}  # rules per table in _desired
        self._known: dict[str, dict[str, tuple[str, ...] | None]] = {t: {} for t in _TABLES}
        self._jumps: dict[str, list[str]] | None = None  # built-in jumps to add (None: look)
        self._pending: str | None = _FULL
        self._fingerprint: object = None  # the kernel's, after our last write or read-back
        self._intact_at: object = None  # the fingerprint intact() last found everything at

    # ---- state -------------------------------------------------------------------------

    @property
    def needs_full(self) -> bool:
        return self._pending is not None

    @property
    def in_sync(self) -> bool:
        """The last sync succeeded (so the kernel holds what the syncer last wrote)."""
        return self._pending is None

    @property
    def applied(self) -> Tables | None:
        """A copy of what the last successful sync left in the kernel (None: not in sync)."""
        if self._pending is not None:
            return None
        return {t: dict(chains) for t, chains in self._known.items()}  # type: ignore[arg-type]

    # ---- sync --------------------------------------------------------------------------

    def sync(
        self,
        snapshot: Snapshot,
        changes: Changes | None = None,
        *,
        full: bool = False,
        stop: threading.Event | None = None,
    ) -> SyncResult:
        """Bring the kernel to SNAPSHOT, rendering only the services CHANGES names.

        CHANGES=None renders every service. FULL (or a pending full sync) rewrites every
        chain; a pending resume writes what a failed full sync left unknown; otherwise
        only the chains that changed.
        """
        start = time.monotonic()
        fresh = full or self._pending == _FULL
        resumed = not fresh and self._pending == _RESUME
        if fresh or resumed or changes is None or changes.nodes or not self._rendered_all:
            # everything: also what a failed sync had taken (its UDP flows, its rules)
            keys = frozenset(snapshot.services) | frozenset(self._rules)
        else:
            keys = changes.services | changes.endpoints
        # the generation from which on every commit must be ours for the one after this
        # sync to count as ours (a fresh sync rewrites everything: from now)
        since = self.iptables.fingerprint() if fresh else self._fingerprint
        if fresh:
            self._pending = _FULL  # until the last transaction is in
            saved = self._read_names(stop)
            self._known = {
                t: dict.fromkeys((c for c in saved.chains.get(t, ()) if _plan.ours(t, c)), None)
                for t in _TABLES
            }
            self._jumps = _plan.missing_jumps(saved)
        if fresh and not (self.chunk and len(snapshot.services) > self.chunk):
            txs: list[Transaction] = [self._streamed(snapshot, keys)]
        else:
            with paused_gc():  # ~200k acyclic objects per full render: collections only cost
                desired, candidates = self._desired_state(snapshot, keys)
            if fresh or resumed:
                candidates = None  # compare every chain
            write, deleted = _plan.diff(desired, self._known, candidates)
            txs = self._plan(write, deleted)
        kind = "full" if fresh else "resume" if resumed else "partial"
        spent = [time.monotonic() - start]
        restores, sent, written, gone = self._apply(txs, kind, stop, spent, since)
        self._pending = None
        self._udp.update(snapshot, keys)
        return SyncResult(
            full=fresh or resumed,
            keys=keys,
            restores=restores,
            bytes=sent,
            chains_written=written,
            chains_deleted=gone,
            compute_seconds=spent[0],
            total_seconds=time.monotonic() - start,
            rules=dict(self._counts),
            resumed=resumed,
        )

    def _read_names(self, stop: threading.Event | None) -> _plan.Saved:
        try:
            return _plan.parse_save(self.iptables.save(stop=stop), all_rules=False)
        except RestoreError as e:
            raise SyncError(str(e), partial=False) from e

    def _plan(self, write: Tables, deleted: dict[str, list[str]]) -> list[Transaction]:
        """Transactions for WRITE/DELETED (chunked when big on nft), plus missing jumps."""
        if self.chunk and len(write.get("nat", ())) > self.chunk:
            groups = (self._rules[k].nat_chains for k in sorted(self._rules))
            txs = _plan.chunked(write, deleted, self._known, groups, self.chunk)
        else:
            txs = _plan.single(write, deleted)
        if self._jumps is None:
            self._jumps = self._look_up_jumps()
        return _plan.with_jumps(txs, self._jumps) if self._jumps else txs

    def _look_up_jumps(self) -> dict[str, list[str]]:
        """The missing built-in jumps, listing only the chains they live in (after a failed
        transaction that carried some: it may have committed one table and not another)."""
        chains: dict[str, frozenset[str]] = {}
        rules: dict[str, tuple[str, ...]] = {}
        for table, chain in [*_plan.builtin_chains(), ("mangle", _plan.CANARY)]:
            lines = self.iptables.list_rules(table, chain)
            if lines is not None:
                chains[table] = chains.get(table, frozenset()) | {chain}
                rules[table] = rules.get(table, ()) + tuple(lines)
        return _plan.missing_jumps(_plan.Saved(chains, rules))

    def _apply(
        self,
        txs: Iterable[Transaction],
        kind: str,
        stop: threading.Event | None,
        spent: list[float],
        since: object = None,
    ) -> tuple[int, int, int, int]:
        """Run TXS in order, recording each committed one in `_known`; returns (restores,
        bytes, chains written, chains deleted). A failure leaves the failed transaction's
        chains unknown and what comes next pending (`_RESUME` when this sync got somewhere
        in a full or resumed sync, `_FULL` otherwise). Then `_fingerprint` moves on from
        SINCE (see `_adopt`)."""
        restores = sent = written = gone = commits = 0
        for tx in txs:
            if stop is not None and stop.is_set():
                self._pending = self._pending or _RESUME
                raise SyncInterrupted(f"stopped after {restores} transactions")
            try:
                if isinstance(tx.text, str):
                    self.iptables.restore(tx.text, stop=stop)
                    sent += len(tx.text.encode())
                    commits += tx.text.count("COMMIT\n")
                else:
                    sent += self.iptables.restore_stream(_timed(tx.text, spent), stop=stop)
                    commits += 3  # at most one per table: nat, filter, mangle (canary)
            except (RestoreError, SyncInterrupted) as e:
                self._forget(tx)
                if isinstance(e, SyncInterrupted):
                    self._pending = self._pending or _RESUME
                    raise
                if kind != "partial" and restores:
                    self._pending = _RESUME
                else:
                    self._pending = _FULL
                raise SyncError(str(e), partial=kind == "partial", progress=restores > 0) from e
            restores += 1
            for table, chains in tx.written.items():
                self._known.setdefault(table, {}).update(chains)
                written += len(chains)
            for table, names in tx.deleted.items():
                for c in names:
                    self._known.get(table, {}).pop(c, None)
                gone += len(names)
            if tx.jumps:
                self._jumps = {}
        self._adopt(since, commits)
        return restores, sent, written, gone

    def _adopt(self, since: object, commits: int) -> None:
        """Take the kernel's fingerprint as ours after our COMMITS since SINCE, unless more
        happened meanwhile. On the nft variant the generation counts commits (one per
        table COMMIT, none for an empty one): a gap larger than ours is a foreign write
        that landed between our last look and now, e.g. a flush right after our commit
        (the bench's flush-resync at 10k: it went unseen until the periodic read-back,
        139 s). Then `_fingerprint` stays at SINCE, so `kernel_changed()` reports it.
        Legacy's fingerprint (sizes) counts nothing: taken as is, as before."""
        now = self.iptables.fingerprint()
        if isinstance(since, int) and isinstance(now, int) and now - since > commits:
            log.info("another program wrote to the tables during our sync; checking them")
            self._fingerprint = since
        else:
            self._fingerprint = now

    def _forget(self, tx: Transaction) -> None:
        """After TX failed (or was cut short): its chains' contents are unknown."""
        if not isinstance(tx.text, str):  # a streamed one: rendering may not have finished
            self._rendered_all = False
        for table, chains in tx.written.items():
            self._known.setdefault(table, {}).update(dict.fromkeys(chains, None))
        for table, names in tx.deleted.items():
            self._known.setdefault(table, {}).update(dict.fromkeys(names, None))
        if tx.jumps:
            self._jumps = None

    def _streamed(self, snapshot: Snapshot, keys: frozenset[ServiceKey]) -> Transaction:
        """A one-call full sync whose input is rendered while iptables-restore parses it,
        so the cold render (~0.3 s of CPU at 10k services) runs beside the parse."""
        written: dict[str, dict[str, tuple[str, ...]]] = {}
        deleted: dict[str, list[str]] = {}

        def batches() -> Iterator[dict[str, tuple[str, ...]]]:
            order = sorted(keys | self._rules.keys())
            with paused_gc():  # ~200k acyclic objects per full render: collections only cost
                for i in range(0, len(order), STREAM_BATCH):
                    batch = order[i : i + STREAM_BATCH]
                    self._store(self._render(snapshot, [k for k in batch if k in keys]))
                    yield {
                        c: lines
                        for k in batch
                        if k in self._rules
                        for c, lines in self._rules[k].nat_chains.items()
                    }
            self._rendered_all = True

        def finish() -> _plan.Finish:
            desired = self._assemble()
            write, gone = _plan.diff(desired, self._known)
            written.update(write)
            deleted.update(gone)
            return desired, gone, self._jumps or {}

        head = TOP_LEVEL_CHAINS["nat"]
        pieces = _plan.streamed_full(head, batches(), finish)
        return Transaction(pieces, written, deleted, jumps=True)

    # ---- rendering ---------------------------------------------------------------------

    def _render(self, snapshot: Snapshot, keys: Iterable[ServiceKey]) -> Rendered:
        """(key, old rules, new rules) of the services among KEYS whose rules changed."""
        return rerender(snapshot, keys, self.config, render_service, self._rules, EMPTY_RULES, log)

    def _store(self, rendered: Rendered) -> None:
        for key, _, new in rendered:
            if new is EMPTY_RULES:
                self._rules.pop(key, None)
            else:
                self._rules[key] = new

    def _assemble(self) -> Tables:
        self._desired = assemble(self.config, [self._rules[k] for k in sorted(self._rules)])
        self._counts = {t: sum(map(len, c.values())) for t, c in self._desired.items()}
        return self._desired

    def _desired_state(
        self, snapshot: Snapshot, keys: frozenset[ServiceKey]
    ) -> tuple[Tables, dict[str, set[str]] | None]:
        """Render KEYS and update the desired tables; also the chains that may have changed
        per table (None: compare everything).

        When no service's lines in the shared chains changed (the common case: endpoints
        moved), the tables are patched in place with the services' own chains instead of
        assembling every service again and copying 60,000-chain dicts: that keeps a
        one-endpoint change at 10k services in about a millisecond of Python.
        """
        rendered = self._render(snapshot, keys)
        self._store(rendered)
        self._rendered_all = self._rendered_all or keys >= snapshot.services.keys()
        if self._desired is None or any(old.shared != new.shared for _, old, new in rendered):
            return self._assemble(), None
        nat = self._desired["nat"]
        candidates: set[str] = set()
        for _, old, new in rendered:
            for chain in old.nat_chains:
                if chain not in new.nat_chains:
                    candidates.add(chain)
                    self._counts["nat"] -= len(nat.pop(chain, ()))
            for chain, lines in new.nat_chains.items():
                candidates.add(chain)
                self._counts["nat"] += len(lines) - len(nat.get(chain, ()))
                nat[chain] = lines
        return self._desired, {"nat": candidates}

    # ---- the kernel, read back ---------------------------------------------------------

    def kernel_changed(self) -> bool:
        fingerprint = self.iptables.fingerprint()
        return fingerprint is not None and fingerprint != self._fingerprint

    def intact(self) -> bool:
        """The built-in chains' jumps into our chains and the canary are in place: one
        `iptables -S CHAIN` per built-in chain (7 calls; the nft variant lists one chain
        without the table's other rules: ms at 10k services). A flush of a table (`-F`,
        a restore without --noflush) takes these with it; a flush of one of our own
        chains only does not, and waits for the periodic read-back."""
        if self._pending is not None or self._desired is None:
            return True
        fingerprint = self.iptables.fingerprint()  # before looking: a later write shows
        if fingerprint is not None and fingerprint == self._intact_at:
            return True
        if self._look_up_jumps():
            return False
        self._intact_at = fingerprint
        return True

    def verify(self, stop: threading.Event | None = None) -> VerifyResult:
        """Read our tables back, compare with what we wrote, rewrite what drifted."""
        start = time.monotonic()
        if self._pending is not None or self._desired is None:
            return VerifyResult((), 0, 0, 0.0)  # the next sync rewrites everything anyway
        fingerprint = self.iptables.fingerprint()  # before reading: a later write shows
        try:
            text = self.iptables.save(stop=stop)
        except RestoreError as e:
            log.warning("cannot read the rules back: %s", e)
            return VerifyResult((), 0, 0, time.monotonic() - start)
        kernel = _plan.parse_chains(text)
        drift = _plan.drift(self._desired, kernel, self.config.family)
        repaired = 0
        if drift:
            log.warning(
                "rules drifted from what was written (%d): %s%s; repairing those",
                len(drift),
                ", ".join(map(str, drift[:10])),
                ", ..." if len(drift) > 10 else "",
            )
            candidates: dict[str, set[str]] = {t: set() for t in _TABLES}
            for d in drift:
                if d.kind == "jump" or d.table not in candidates:
                    continue
                candidates[d.table].add(d.chain)
                self._known[d.table][d.chain] = None
            self._jumps = _plan.missing_jumps(_plan.saved_of(kernel))
            write, deleted = _plan.diff(self._desired, self._known, candidates)
            txs = self._plan(write, deleted)
            _, _, repaired, _ = self._apply(txs, "partial", stop, [0.0], fingerprint)
        else:
            self._fingerprint = fingerprint
        return VerifyResult(tuple(drift), repaired, len(text), time.monotonic() - start)

    # ---- the rest ----------------------------------------------------------------------

    def cleanup(self) -> None:
        cleanup_runner(self.iptables)


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


def cleanup_runner(runner: Runner) -> int:
    """Remove our chains (`_plan.ours`) and the jumps to them from RUNNER's tables; returns
    how many rules and chains went (kubelet's and other programs' chains stay)."""
    dump = runner.save()
    text = _plan.cleanup_restore(dump)
    if not text:
        return 0
    count = _plan.count_ours(dump)
    runner.restore(text)
    return count


def cleanup(variant: str = "auto") -> None:
    """`netplane proxy cleanup`: our chains, both families, in the caller's namespace.

    'auto' cleans whichever variants hold rules.
    """
    for family in ("ipv4", "ipv6"):
        cleanup_family(family, variant)


def cleanup_family(family: str, variant: str = "auto") -> None:
    """Our chains of one family, in the caller's namespace ('auto': both variants)."""
    for v in VARIANTS if variant == "auto" else (variant,):
        try:
            count = cleanup_runner(Iptables(v, family))
        except RestoreError as e:
            log.debug("skipping %s %s: %s", v, family, e)
            continue
        if count:
            log.info("removed %d netplane rules/chains (%s, %s)", count, v, family)
