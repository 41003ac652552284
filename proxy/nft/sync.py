"""The nftables backend: cluster snapshot + changes -> one netlink transaction per sync.

It keeps each service's rendered objects, which service claims each element of the
shared maps, and what the kernel holds of our table (`_plan.Kernel`). A sync renders the
services that changed, plans the difference (`_plan.plan`) and commits it as one
transaction over a long-lived netlink socket (`_netlink`):
- partial sync: only the changed services' chains, sets and map elements are compared, so
  an endpoint change writes one service chain and one endpoint chain;
- full sync (at start, after a failure, when asked): the table is read back (`_kernel.read`)
  and everything is compared, so a restart with the same objects writes nothing and keeps
  the affinity sets' contents; an empty kernel gets everything in one transaction.
Every transaction carries the ruleset generation it was planned against: if anybody
committed in between (the kernel answers ERESTART), our picture of the kernel is stale,
and the sync becomes a full one in the same call.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Iterable
from typing import NamedTuple

from netplane.proxy._conntrack import Conntrack, UdpFlows
from netplane.proxy.backend import Drift, SyncError, SyncInterrupted, SyncResult, VerifyResult
from netplane.proxy.nft import _kernel, _plan
from netplane.proxy.nft._exprs import key_bytes
from netplane.proxy.nft._model import Chain, Element, SetDef
from netplane.proxy.nft._netlink import Batch, Netlink, NftError
from netplane.proxy.nft.render import (
    EMPTY,
    SHARED_SETS,
    TABLE,
    ServiceObjects,
    base,
    family,
    render_service,
)
from netplane.proxy.render import ProxyConfig, paused_gc
from netplane.state import Changes, ServiceKey, Snapshot

log = logging.getLogger(__name__)

Claims = dict[tuple[str, bytes], dict[ServiceKey, Element]]
Rendered = list[tuple[ServiceKey, ServiceObjects, ServiceObjects]]  # (key, old, new)


class _Written(NamedTuple):
    full: bool
    restores: int
    bytes: int
    written: int
    deleted: int
    compute: float


class NftSyncer:
    """The nftables `Backend` (proxy/backend.py) for one IP family."""

    name = "nftables"

    def __init__(
        self,
        config: ProxyConfig,
        netlink: Netlink | None = None,
        conntrack: Conntrack | None = None,
    ) -> None:
        self.config = config
        self.family = family(config)
        self.netlink = netlink if netlink is not None else Netlink()
        self._udp = UdpFlows(config.family, conntrack)
        self._objects: dict[ServiceKey, ServiceObjects] = {}
        self._rendered_all = False
        self._claims: Claims = {}  # (set, key) -> the services that want that element
        self._kernel = _plan.Kernel()
        self._genid = 0  # the ruleset generation our picture of the kernel is from
        self._pending_full = True
        self._rules = 0

    # ---- state -------------------------------------------------------------------------

    @property
    def needs_full(self) -> bool:
        return self._pending_full

    @property
    def in_sync(self) -> bool:
        return not self._pending_full

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
            rendered = self._render(snapshot, keys)
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
        want = _plan.Want(base(self.config).comment)
        for _, old, new in rendered:
            for name in old.chains:
                want.chains.setdefault(name, None)
            for name, rules in new.chains.items():
                want.chains[name] = Chain(name, rules)
            for name in old.sets:
                want.sets.setdefault(name, None)
            want.sets.update(new.sets)
        for set_name, key in touched:
            winner = self._winner(set_name, key)
            want.elements.setdefault(set_name, {})[key] = winner
        return self._commit(want, full=False, start=start)

    def _full(self, stop: threading.Event | None, start: float) -> _Written:
        """Read the table back and write whatever differs from the desired objects; when
        somebody commits in between, read again (a few times)."""
        self._pending_full = True
        for attempt in range(3):
            kernel, _ = self._read(stop)
            if stop is not None and stop.is_set():
                raise SyncInterrupted("stopped before writing")
            # chains already waiting for deletion keep their time (not another second)
            kernel.stale.update((n, t) for n, t in self._kernel.stale.items() if n in kernel.chains)
            self._kernel = kernel
            try:
                return self._commit(self._want_everything(kernel), full=True, start=start)
            except _Stale:
                log.info("the ruleset changed while we read it (attempt %d): again", attempt + 1)
        raise SyncError("the ruleset keeps changing under us", partial=False)

    def _read(self, stop: threading.Event | None) -> tuple[_plan.Kernel, int]:
        """Our table read back, and the generation it is from."""
        try:
            genid = self.netlink.genid()
            kernel, size = _kernel.read(self.netlink, self.family, TABLE, SHARED_SETS, stop)
        except _kernel.Interrupted as e:
            raise SyncInterrupted(str(e)) from None
        except (NftError, OSError) as e:
            self._pending_full = True
            raise SyncError(f"reading {self.family} {TABLE} back: {e}", partial=False) from e
        self._genid = genid
        return kernel, size

    def _want_everything(self, kernel: _plan.Kernel) -> _plan.Want:
        fixed = base(self.config)
        chains: dict[str, Chain] = dict(fixed.chains)
        sets: dict[str, SetDef] = dict(fixed.sets)
        for objects in self._objects.values():
            for name, rules in objects.chains.items():
                chains[name] = Chain(name, rules)
            sets.update(objects.sets)
        elements: dict[str, dict[bytes, Element]] = {name: {} for name in SHARED_SETS}
        for set_name, key in self._claims:
            winner = self._winner(set_name, key)
            if winner is not None:
                elements[set_name][key] = winner
        return _plan.everything(chains, sets, elements, kernel, fixed.comment)

    def _commit(self, want: _plan.Want, *, full: bool, start: float) -> _Written:
        now = time.monotonic()
        ops = _plan.plan(self._kernel, want, self._chain_digest, _kernel.element_digest, now)
        batch = Batch(self.family, TABLE)
        digests = _kernel.build(batch, ops)
        compute = time.monotonic() - start
        try:
            made = self.netlink.commit(batch, self._genid) if len(batch) else None
        except NftError as e:
            if e.errno == errno.ERESTART:
                raise _Stale() from e
            self._pending_full = True
            raise SyncError(str(e), partial=not full) from e
        except OSError as e:
            self._pending_full = True
            raise SyncError(f"netlink: {e}", partial=not full) from e
        if made is not None:
            self._genid = made  # the kernel checked the generation we planned against
        _plan.apply(self._kernel, ops, digests, _kernel.element_digest, now)
        self._pending_full = False
        written = sum(1 for op in ops if op.verb in ("add_rules", "add_set", "add_elements"))
        deleted = sum(1 for op in ops if op.verb in ("delete_chain", "delete_set"))
        self._rules = sum(len(c.rules or ()) for c in self._kernel.chains.values())
        return _Written(full, 1 if len(batch) else 0, batch.bytes, written, deleted, compute)

    def _chain_digest(self, chain: Chain) -> int:
        """Only chains read back (contents known by digest) need this: at the first sync
        after a restart, and after drift."""
        return _kernel.chain_digest(chain, self.family)

    # ---- rendering and claims ----------------------------------------------------------

    def _render(self, snapshot: Snapshot, keys: Iterable[ServiceKey]) -> Rendered:
        """(key, old objects, new objects) of the services among KEYS that changed."""
        rendered: Rendered = []
        for key in keys:
            old = self._objects.get(key, EMPTY)
            new = EMPTY
            if key in snapshot.services:
                try:
                    new = render_service(snapshot, key, self.config)
                except (ValueError, KeyError) as e:  # one bad service must not stop the rest
                    log.error("service %s/%s: cannot program it: %s", *key, e)
                    continue
            if new is not old:
                rendered.append((key, old, new))
        return rendered

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

    def _winner(self, set_name: str, key: bytes) -> Element | None:
        """The element for KEY: the first claimant's in (namespace, name) order, as the
        first rule wins in the iptables backend."""
        owners = self._claims.get((set_name, key))
        if not owners:
            return None
        return owners[min(owners)] if len(owners) > 1 else next(iter(owners.values()))

    # ---- the kernel, read back ---------------------------------------------------------

    def kernel_changed(self) -> bool:
        try:
            return self.netlink.genid() != self._genid
        except (NftError, OSError):
            return True

    def verify(self, stop: threading.Event | None = None) -> VerifyResult:
        """Read our table back if anybody committed since we last looked; repair what
        drifted (only that) in one transaction."""
        start = time.monotonic()
        if self._pending_full:
            return VerifyResult((), 0, 0, 0.0)  # the next sync compares everything anyway
        if not self.kernel_changed():
            return VerifyResult((), 0, 0, time.monotonic() - start)
        kernel, size = self._read(stop)
        drift = self._drift(kernel)
        if not drift:
            return VerifyResult((), 0, size, time.monotonic() - start)
        log.warning(
            "nftables objects drifted from what was written (%d): %s%s; repairing those",
            len(drift),
            ", ".join(map(str, drift[:10])),
            ", ..." if len(drift) > 10 else "",
        )
        self._kernel = kernel
        try:
            result = self._commit(self._want_everything(kernel), full=False, start=start)
        except _Stale:
            self._pending_full = True  # changing under us: the next sync reads it again
            return VerifyResult(tuple(drift), 0, size, time.monotonic() - start)
        repaired = result.written + result.deleted
        return VerifyResult(tuple(drift), repaired, size, time.monotonic() - start)

    def _drift(self, kernel: _plan.Kernel) -> list[Drift]:
        """What KERNEL (read back) holds differently from what we wrote. Chains found as
        we wrote them take our bookkeeping's rules, so planning the repair compares
        them without encoding them again."""
        ours = self._kernel
        if not kernel.table:
            return [Drift(TABLE, TABLE, "missing", "table")]
        out: list[Drift] = []
        for name, have in ours.chains.items():
            got = kernel.chains.get(name)
            if got is None:
                out.append(Drift(TABLE, name, "missing"))
            elif got.digest == have.digest and got.hook == have.hook:
                kernel.chains[name] = have
            else:
                kind = "flushed" if got.digest == _EMPTY_DIGEST else "changed"
                out.append(Drift(TABLE, name, kind))
        for name in kernel.chains.keys() - ours.chains.keys():
            out.append(Drift(TABLE, name, "stale"))
        kernel.stale.update((n, t) for n, t in ours.stale.items() if n in kernel.chains)
        for name, signature in ours.sets.items():
            if kernel.sets.get(name) != signature:
                kind = "changed" if name in kernel.sets else "missing"
                out.append(Drift(TABLE, name, kind, "set"))
        for name in kernel.sets.keys() - ours.sets.keys():
            out.append(Drift(TABLE, name, "stale", "set"))
        for name, have_elements in ours.elements.items():
            got_elements = kernel.elements.get(name, {})
            if got_elements != have_elements:
                missing = len(have_elements.keys() - got_elements.keys())
                extra = len(got_elements.keys() - have_elements.keys())
                changed = sum(
                    1
                    for k in have_elements.keys() & got_elements.keys()
                    if have_elements[k] != got_elements[k]
                )
                detail = f"elements: {missing} missing, {extra} extra, {changed} changed"
                out.append(Drift(TABLE, name, "changed", detail))
        return out

    # ---- the rest ----------------------------------------------------------------------

    def cleanup(self) -> None:
        cleanup(self.netlink, (self.family,))


_EMPTY_DIGEST = hash(())


class _Stale(Exception):
    """A partial sync's transaction was refused: the ruleset changed since we looked."""


def cleanup(netlink: Netlink | None = None, families: Iterable[str] = ("ip", "ip6")) -> int:
    """Delete our table (`ip kube-proxy`, `ip6 kube-proxy`) in this namespace, each of
    FAMILIES; returns how many there were."""
    netlink = netlink if netlink is not None else Netlink()
    gone = 0
    for fam in families:
        if TABLE in netlink.tables(fam):
            batch = Batch(fam, TABLE)
            batch.delete_table()
            netlink.commit(batch)
            gone += 1
    return gone
