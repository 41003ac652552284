"""The nftables backend: cluster snapshot + changes -> one netlink transaction per sync.

It keeps each service's rendered objects, which service claims each element of the
shared maps, and what the kernel holds of each of our tables (`_plan.Kernel`). A sync
renders the services that changed, plans the difference per table (`_plan.plan`) and
commits it as one transaction over a long-lived netlink socket (`_netlink`):
- partial sync: only the changed services' chains, sets and map elements are compared, so
  an endpoint change writes one service chain and one endpoint chain, in one table;
- full sync (at start, after a failure, when asked): the tables are read back
  (`_kernel.read`) and everything is compared, so a restart with the same objects writes
  nothing and keeps the affinity sets' contents; an empty kernel gets everything in one
  transaction. It also decides how many tables the services are spread over (`_tables`).
Every transaction carries the ruleset generation it was planned against: if anybody
committed in between (the kernel answers ERESTART), our picture of the kernel is stale,
and the sync becomes a full one in the same call.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

from netplane.proxy._conntrack import Conntrack, UdpFlows
from netplane.proxy.backend import Drift, SyncError, SyncInterrupted, SyncResult, VerifyResult
from netplane.proxy.nft import _kernel, _plan
from netplane.proxy.nft._exprs import key_bytes
from netplane.proxy.nft._model import Chain, Element
from netplane.proxy.nft._netlink import Batch, Netlink, NftError
from netplane.proxy.nft._tables import (
    SHARD_SETS,
    SHARED_SETS,
    TABLE,
    assemble,
    chain_table,
    element_table,
    family,
    shard_base,
    shard_count,
    shard_index,
    shard_of,
    table_name,
)
from netplane.proxy.nft.render import EMPTY, ServiceObjects, render_service
from netplane.proxy.render import ProxyConfig, paused_gc, rerender
from netplane.state import Changes, ServiceKey, Snapshot

log = logging.getLogger(__name__)

Claims = dict[tuple[str, bytes], dict[ServiceKey, Element]]
Rendered = list[tuple[ServiceKey, ServiceObjects, ServiceObjects]]  # (key, old, new)
Kernels = dict[str, _plan.Kernel]  # table -> what it holds


class _Written(NamedTuple):
    full: bool
    restores: int
    bytes: int
    written: int
    deleted: int
    compute: float


class NftSyncer:
    """The nftables `Backend` (proxy/backend.py) for one IP family. SHARDS: the number of
    tables the services are spread over (None: by their number, `_tables.shard_count`)."""

    name = "nftables"

    def __init__(
        self,
        config: ProxyConfig,
        netlink: Netlink | None = None,
        conntrack: Conntrack | None = None,
        shards: int | None = None,
    ) -> None:
        self.config = config
        self.family = family(config)
        self.netlink = netlink if netlink is not None else Netlink()
        self._fixed_shards = shards
        self.shards = shards or 1
        self._udp = UdpFlows(config.family, conntrack)
        self._objects: dict[ServiceKey, ServiceObjects] = {}
        self._rendered_all = False
        self._claims: Claims = {}  # (set, key) -> the services that want that element
        self._kernels: Kernels = {}
        self._genid = 0  # the ruleset generation our picture of the kernel is from
        self._intact_at = -1  # the generation intact() last found everything at
        self._pending_full = True
        self._rules = 0

    # ---- state -------------------------------------------------------------------------

    @property
    def needs_full(self) -> bool:
        return self._pending_full

    @property
    def in_sync(self) -> bool:
        return not self._pending_full

    def tables(self) -> list[str]:
        """Our tables, as the last sync left them."""
        return [table_name(i) for i in range(self.shards)]

    # ---- sync --------------------------------------------------------------------------

    def sync(
        self,
        snapshot: Snapshot,
        changes: Changes | None = None,
        *,
        full: bool = False,
        stop: threading.Event | None = None,
    ) -> SyncResult:
        start = time.monotonic()
        fresh = full or self._pending_full
        if changes is None or changes.nodes or not self._rendered_all:
            keys = frozenset(snapshot.services) | frozenset(self._objects)
        else:
            keys = changes.services | changes.endpoints
        with paused_gc():  # ~300k acyclic objects in a full render: collections only cost
            rendered = self._render(snapshot, keys, stop)
            touched = self._store(rendered)
            self._rendered_all = self._rendered_all or keys >= snapshot.services.keys()
            if fresh:
                result = self._full(stop, start)
            else:
                try:
                    result = self._partial(rendered, touched, start)
                except _Stale:
                    log.info("the ruleset changed under us: reading it back (full sync)")
                    result = self._full(stop, start)
        self._udp.update(snapshot, keys)
        return SyncResult(
            full=result.full,
            keys=keys,
            restores=result.restores,
            bytes=result.bytes,
            chains_written=result.written,
            chains_deleted=result.deleted,
            compute_seconds=result.compute,
            total_seconds=time.monotonic() - start,
            rules={TABLE: self._rules},
        )

    def _partial(
        self, rendered: Rendered, touched: set[tuple[str, bytes]], start: float
    ) -> _Written:
        wants: dict[str, _plan.Want] = {}

        def want(table: str) -> _plan.Want:
            found = wants.get(table)
            if found is None:
                found = wants[table] = _plan.Want(self._comment(table))
            return found

        for key, old, new in rendered:
            home = self._table_of(key)
            for name in old.chains:
                want(chain_table(name, home)).chains.setdefault(name, None)
            for name, rules in new.chains.items():
                want(chain_table(name, home)).chains[name] = Chain(name, rules)
            for name in old.sets:
                want(home).sets.setdefault(name, None)
            want(home).sets.update(new.sets)
        for set_name, element_key in touched:
            owner, winner = self._winner(set_name, element_key)
            target = element_table(set_name, self._table_of(owner)) if owner else None
            for table in self._holders(set_name, element_key):
                if table != target:
                    want(table).elements.setdefault(set_name, {})[element_key] = None
            if target is not None:
                want(target).elements.setdefault(set_name, {})[element_key] = winner
        for table, kernel in self._kernels.items():
            if kernel.stale:  # emptied chains whose second has passed go now
                want(table)
        return self._commit(wants, full=False, start=start)

    def _full(self, stop: threading.Event | None, start: float) -> _Written:
        """Read the tables back and write whatever differs from the desired objects; when
        somebody commits in between, read again (a few times)."""
        self._pending_full = True
        for attempt in range(3):
            kernels, _ = self._read(stop)
            if stop is not None and stop.is_set():
                raise SyncInterrupted("stopped before writing")
            existing = [i for t in kernels if (i := shard_index(t)) is not None]
            current = max(existing) + 1 if existing else None
            self.shards = self._fixed_shards or shard_count(len(self._objects), current)
            for table, kernel in kernels.items():  # waiting chains keep their time
                old = self._kernels.get(table)
                if old is not None:
                    kernel.stale.update((n, t) for n, t in old.stale.items() if n in kernel.chains)
            self._kernels = kernels
            try:
                if not kernels and self.shards > 1:
                    return self._commit_each(self._wants(kernels), start, stop)
                wants = self._want_everything(kernels)
                return self._commit(wants, full=True, start=start, drop=self._extra(), stop=stop)
            except _Stale:
                log.info("the ruleset changed while we read it (attempt %d): again", attempt + 1)
        raise SyncError("the ruleset keeps changing under us", partial=False)

    def _extra(self) -> list[str]:
        """Our tables beyond the shard count: deleted whole (their services moved)."""
        return [t for t in self._kernels if (shard_index(t) or 0) >= self.shards]

    def _read(self, stop: threading.Event | None) -> tuple[Kernels, int]:
        """Our tables read back, and the bytes read; our picture is then of this
        generation."""
        try:
            genid = self.netlink.genid()
            ours = [t for t in self.netlink.tables(self.family) if shard_index(t) is not None]
            wanted: dict[str, Iterable[str]] = {
                t: SHARED_SETS if t == TABLE else SHARD_SETS for t in sorted(ours)
            }
            kernels, size = _kernel.read(self.netlink, self.family, wanted, stop)
        except _kernel.Interrupted as e:
            raise SyncInterrupted(str(e)) from None
        except (NftError, OSError) as e:
            self._pending_full = True
            raise SyncError(f"reading the {self.family} tables back: {e}", partial=False) from e
        self._genid = genid
        return kernels, size

    def _want_everything(self, kernels: Kernels) -> dict[str, _plan.Want]:
        return dict(self._wants(kernels))

    def _wants(self, kernels: Kernels) -> Iterator[tuple[str, _plan.Want]]:
        """Each table's full-sync Want, made when asked for (`_commit_each` asks for the
        next one while the kernel works on the one before)."""
        for ruleset in assemble(self.config, self._objects.values(), self.shards):
            elements = {
                name: {key_bytes(k): e for k, e in els.items()}
                for name, els in ruleset.elements.items()
            }
            kernel = kernels.get(ruleset.table, _plan.Kernel())
            yield (
                ruleset.table,
                _plan.everything(ruleset.chains, ruleset.sets, elements, kernel, ruleset.comment),
            )

    def _commit(
        self,
        wants: dict[str, _plan.Want],
        *,
        full: bool,
        start: float,
        drop: Iterable[str] = (),
        stop: threading.Event | None = None,
    ) -> _Written:
        """Plan WANTS (per table) and DROP (tables to delete) into one transaction."""
        now = time.monotonic()
        dropped = list(drop)
        batch, plans = self._encode(wants, dropped, now, stop)
        compute = time.monotonic() - start
        made = self._send(batch, self._genid, full)
        if made is not None:
            self._genid = made  # the kernel checked the generation we planned against
        written, deleted = self._record(plans, dropped, now)
        if full or dropped:
            self._rules = sum(_plan.rule_count(k) for k in self._kernels.values())
        self._pending_full = False
        restores = 1 if len(batch) else 0
        return _Written(full, restores, batch.bytes, written, deleted, compute)

    def _commit_each(
        self, wants: Iterable[tuple[str, _plan.Want]], start: float, stop: threading.Event | None
    ) -> _Written:
        """A full sync into a kernel that holds none of our tables (a node's first start,
        or after `nft flush ruleset`): one transaction per table, each sent while the next
        is encoded. The kernel's work on a transaction (~1.1 s of CPU for 10k services'
        60k chains and 160k rules, in the sending thread with the GIL released) then runs
        beside the encoding of the rest (~1 s), on another core. Nothing of ours is in
        place to keep serving until an atomic switch; each table holds complete services,
        so a service works once its table is in. STOP is looked at before the first
        transaction only: a stop leaves nothing, or every table."""
        now = time.monotonic()
        compute, restores, size, written, deleted = 0.0, 0, 0, 0, 0
        with ThreadPoolExecutor(1, "nft-commit") as sender:
            sending: tuple[Future[int | None], Batch, list] | None = None
            began = start
            for table, want in wants:  # the next table's Want is made here
                batch, plans = self._encode({table: want}, [], now, stop if not sending else None)
                compute += time.monotonic() - began
                if sending is not None:
                    w, d = self._landed(*sending)
                    written, deleted = written + w, deleted + d
                if len(batch):
                    restores, size = restores + 1, size + batch.bytes
                sending = (sender.submit(self._send, batch, self._genid, True, restores > 1),
                           batch, plans)  # fmt: skip
                began = time.monotonic()
            if sending is not None:
                w, d = self._landed(*sending)
                written, deleted = written + w, deleted + d
        self._rules = sum(_plan.rule_count(k) for k in self._kernels.values())
        self._pending_full = False
        return _Written(True, restores, size, written, deleted, compute)

    def _landed(self, sent: Future[int | None], batch: Batch, plans: list) -> tuple[int, int]:
        """Wait for a transaction of `_commit_each`; record what it wrote."""
        made = sent.result()
        if made is not None:
            self._genid = made
        return self._record(plans, [], time.monotonic())

    def _encode(
        self,
        wants: dict[str, _plan.Want],
        dropped: list[str],
        now: float,
        stop: threading.Event | None,
    ) -> tuple[Batch, list]:
        """The transaction for WANTS and DROPPED, and per table what it does to it."""
        batch = Batch(self.family, TABLE)
        plans = []
        for table, want in wants.items():
            if stop is not None and stop.is_set():
                raise SyncInterrupted("stopped before writing")
            kernel = self._kernels.get(table) or _plan.Kernel()
            digest = self._chain_digest
            ops = _plan.plan(kernel, want, digest, _kernel.element_digest, now)
            batch.use(table)
            plans.append((table, kernel, ops, _kernel.build(batch, ops)))
        for table in dropped:
            batch.use(table)
            batch.delete_table()
        return batch, plans

    def _send(self, batch: Batch, genid: int, full: bool, progress: bool = False) -> int | None:
        """Commit BATCH against generation GENID; the generation it made (None: nothing
        to commit). PROGRESS: earlier transactions of this sync are in."""
        try:
            return self.netlink.commit(batch, genid) if len(batch) else None
        except NftError as e:
            if e.errno == errno.ERESTART:
                raise _Stale() from e
            self._pending_full = True
            raise SyncError(str(e), partial=not full, progress=progress) from e
        except OSError as e:
            self._pending_full = True
            raise SyncError(f"netlink: {e}", partial=not full, progress=progress) from e

    def _record(self, plans: list, dropped: list[str], now: float) -> tuple[int, int]:
        """Our picture of the kernel after a transaction of PLANS and DROPPED committed;
        (objects written, objects deleted)."""
        written = deleted = 0
        for table, kernel, ops, digests in plans:
            touched = {
                op.arg if isinstance(op.arg, str) else op.arg.name
                for op in ops
                if op.verb in ("add_chain", "flush_chain", "delete_chain", "add_rules")
            }
            before = sum(kernel.chains[n].count for n in touched if n in kernel.chains)
            _plan.apply(kernel, ops, digests, now)
            self._rules += sum(kernel.chains[n].count for n in touched if n in kernel.chains)
            self._rules -= before
            self._kernels[table] = kernel
            written += sum(1 for op in ops if op.verb in ("add_rules", "add_set", "add_elements"))
            deleted += sum(1 for op in ops if op.verb in ("delete_chain", "delete_set"))
        for table in dropped:
            self._kernels.pop(table, None)
        return written, deleted + len(dropped)

    def _chain_digest(self, chain: Chain) -> int:
        """Only chains read back (contents known by digest) need this: at the first sync
        after a restart, and after drift."""
        return _kernel.chain_digest(chain, self.family)

    def _comment(self, table: str) -> str | None:
        return shard_base(self.config, shard_index(table) or 0).comment

    # ---- rendering and claims ----------------------------------------------------------

    def _table_of(self, key: ServiceKey) -> str:
        return table_name(shard_of(key, self.shards))

    def _render(
        self,
        snapshot: Snapshot,
        keys: Iterable[ServiceKey],
        stop: threading.Event | None = None,
    ) -> Rendered:
        """(key, old objects, new objects) of the services among KEYS that changed (STOP:
        looked at every 512 services; nothing is stored before the end)."""
        return rerender(
            snapshot, keys, self.config, render_service, self._objects, EMPTY, log, stop
        )

    def _store(self, rendered: Rendered) -> set[tuple[str, bytes]]:
        """Record the new objects and their element claims; returns the elements touched."""
        touched: set[tuple[str, bytes]] = set()
        claims = self._claims
        for key, old, new in rendered:
            for set_name, els in old.elements.items():
                for e in els:
                    slot = (set_name, key_bytes(e.key))
                    owners = claims.get(slot)
                    if owners is not None:
                        owners.pop(key, None)
                        if not owners:
                            del claims[slot]
                    touched.add(slot)
            for set_name, els in new.elements.items():
                for e in els:
                    slot = (set_name, key_bytes(e.key))
                    claims.setdefault(slot, {})[key] = e
                    touched.add(slot)
            if new is EMPTY:
                self._objects.pop(key, None)
            else:
                self._objects[key] = new
        return touched

    def _winner(self, set_name: str, key: bytes) -> tuple[ServiceKey | None, Element | None]:
        """The service whose element KEY gets, and the element: the first claimant in
        (namespace, name) order, as the first rule wins in the iptables backend."""
        owners = self._claims.get((set_name, key))
        if not owners:
            return None, None
        owner = min(owners) if len(owners) > 1 else next(iter(owners))
        return owner, owners[owner]

    def _holders(self, set_name: str, key: bytes) -> list[str]:
        """The tables whose SET_NAME holds KEY now."""
        return [t for t, k in self._kernels.items() if key in k.elements.get(set_name, ())]

    # ---- the kernel, read back ---------------------------------------------------------

    def kernel_changed(self) -> bool:
        try:
            return self.netlink.genid() != self._genid
        except (NftError, OSError):
            return True

    def intact(self) -> bool:
        """Our tables and their base chains exist: one GETTABLE dump (a handful of tables)
        and one GETCHAIN per base chain, ms whatever the rule count. `nft flush ruleset`
        or a deleted table fails it; a flushed chain does not, and waits for the periodic
        read-back."""
        if self._pending_full or not self._kernels:
            return True
        try:
            genid = self.netlink.genid()  # before looking: a later commit shows
            if genid == self._intact_at:
                return True
            tables = self.netlink.tables(self.family)
            for table, kernel in self._kernels.items():
                if table not in tables:
                    return False
                for name, chain in kernel.chains.items():
                    if chain.hook is not None and not self.netlink.has_chain(
                        self.family, table, name
                    ):
                        return False
        except (NftError, OSError):
            return False
        self._intact_at = genid
        return True

    def verify(self, stop: threading.Event | None = None) -> VerifyResult:
        """Read our tables back if anybody committed since we last looked; repair what
        drifted (only that) in one transaction."""
        start = time.monotonic()
        if self._pending_full:
            return VerifyResult((), 0, 0, 0.0)  # the next sync compares everything anyway
        if not self.kernel_changed():
            return VerifyResult((), 0, 0, time.monotonic() - start)
        kernels, size = self._read(stop)
        drift = self._drift(kernels)
        if not drift:
            return VerifyResult((), 0, size, time.monotonic() - start)
        log.warning(
            "nftables objects drifted from what was written (%d): %s%s; repairing those",
            len(drift),
            ", ".join(map(str, drift[:10])),
            ", ..." if len(drift) > 10 else "",
        )
        self._kernels = kernels
        try:
            result = self._commit(
                self._want_everything(kernels), full=False, start=start, drop=self._extra()
            )
        except _Stale:
            self._pending_full = True  # changing under us: the next sync reads it again
            return VerifyResult(tuple(drift), 0, size, time.monotonic() - start)
        repaired = result.written + result.deleted
        return VerifyResult(tuple(drift), repaired, size, time.monotonic() - start)

    def _drift(self, kernels: Kernels) -> list[Drift]:
        """What KERNELS (read back) hold differently from what we wrote. Chains found as we
        wrote them take our bookkeeping's rules, so planning the repair compares them
        without encoding them again."""
        out: list[Drift] = []
        for table in kernels.keys() - self._kernels.keys():
            out.append(Drift(table, table, "stale", "table"))
        for table, ours in self._kernels.items():
            kernel = kernels.get(table)
            if kernel is None:
                out.append(Drift(table, table, "missing", "table"))
                continue
            out += _table_drift(table, ours, kernel)
        return out

    # ---- the rest ----------------------------------------------------------------------

    def cleanup(self) -> None:
        cleanup(self.netlink, (self.family,))


def _table_drift(table: str, ours: _plan.Kernel, kernel: _plan.Kernel) -> list[Drift]:
    out: list[Drift] = []
    for name, have in ours.chains.items():
        got = kernel.chains.get(name)
        if got is None:
            out.append(Drift(table, name, "missing"))
        elif got.digest == have.digest and got.hook == have.hook:
            kernel.chains[name] = have
        else:
            kind = "flushed" if got.digest == _EMPTY_DIGEST else "changed"
            out.append(Drift(table, name, kind))
    for name in kernel.chains.keys() - ours.chains.keys():
        out.append(Drift(table, name, "stale"))
    kernel.stale.update((n, t) for n, t in ours.stale.items() if n in kernel.chains)
    for name, signature in ours.sets.items():
        if kernel.sets.get(name) != signature:
            kind = "changed" if name in kernel.sets else "missing"
            out.append(Drift(table, name, kind, "set"))
    for name in kernel.sets.keys() - ours.sets.keys():
        out.append(Drift(table, name, "stale", "set"))
    for name, want_elements in ours.elements.items():
        got_elements = kernel.elements.get(name, {})
        if got_elements != want_elements:
            missing = len(want_elements.keys() - got_elements.keys())
            extra = len(got_elements.keys() - want_elements.keys())
            both = want_elements.keys() & got_elements.keys()
            changed = sum(1 for k in both if want_elements[k] != got_elements[k])
            detail = f"elements: {missing} missing, {extra} extra, {changed} changed"
            out.append(Drift(table, name, "changed", detail))
    return out


_EMPTY_DIGEST = hash(())


class _Stale(Exception):
    """A transaction was refused: the ruleset changed since we looked."""


def cleanup(netlink: Netlink | None = None, families: Iterable[str] = ("ip", "ip6")) -> int:
    """Delete our tables (`kube-proxy`, `kube-proxy-<n>`) of FAMILIES in this namespace;
    returns how many there were."""
    netlink = netlink if netlink is not None else Netlink()
    gone = 0
    for fam in families:
        ours = [t for t in netlink.tables(fam) if shard_index(t) is not None]
        if ours:
            batch = Batch(fam, TABLE)
            for table in ours:
                batch.use(table)
                batch.delete_table()
            netlink.commit(batch)
            gone += len(ours)
    return gone
