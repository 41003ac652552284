"""One sync at a time, beside its floor and its peer, on identical rule sets.

Three namespaces hold the same rules. In the first, netplane's Syncer applies each change
and reports compute time, bytes and restores; its exact restore inputs are then replayed
by hand in the second (the floor: what the kernel and iptables-restore cost for the same
transaction, with no Python around it); the third receives what kube-proxy's iptables
mode would write for the same change (KUBE-SERVICES and every top-level chain rewritten,
the filter table rewritten, the changed services' chains) in a single restore, the peer.
After every step the three namespaces hold the same rules again.
"""

from __future__ import annotations

import contextlib
import resource
import time
from collections import defaultdict

from netplane.bench import _workload as w
from netplane.bench._netns import netns
from netplane.bench._results import Label, Series, Skipped
from netplane.bench._scenario import FLUSH, ProbeService, cycle
from netplane.proxy._iptables import Iptables
from netplane.proxy._plan import SERVICE_CHAIN
from netplane.proxy.backend import SyncResult
from netplane.proxy.render import ProxyConfig, Tables, format_restore, render_service
from netplane.proxy.sync import Syncer
from netplane.state import ClusterState
from netplane.testing.kernel import FakeIptables

# kube-proxy restores everything in one call; on the nft variant that is superlinear
# (measured-floors.md: 89 s at 5k services), so the peer's full restores stop here
PEER_FULL_NFT_MAX_SERVICES = 2000


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed_restores(ipt: Iptables, texts: list[str]) -> float:
    t0 = time.perf_counter()
    for text in texts:
        ipt.restore(text)
    return time.perf_counter() - t0


def peer_partial(before: Tables, after: Tables, changed_chains: set[str]) -> str:
    """kube-proxy's partial sync input: every top-level chain, the changed services' chains,
    the whole filter table, and `-X` for chains that went away."""
    nat = {
        c: lines
        for c, lines in after["nat"].items()
        if not SERVICE_CHAIN.match(c) or c in changed_chains
    }
    deleted = {t: sorted(set(before.get(t, {})) - set(after.get(t, {}))) for t in after}
    return format_restore({"filter": after.get("filter", {}), "nat": nat}, deleted)


def _is_jumps(text: str) -> bool:
    """A restore input that only adds the built-in chains' jumps (and the canary)."""
    lines = [x for x in text.splitlines() if x and not x.startswith("*") and x != "COMMIT"]
    return bool(lines) and all(x.startswith(("-I ", ":KUBE-PROXY-CANARY ")) for x in lines)


def _peer_full(texts: list[str], applied: Tables | None) -> list[str]:
    """kube-proxy's full sync: everything in one restore, then its jumps. When netplane
    also used a single restore that is the same input; chunked, it is rebuilt whole."""
    if len(texts) == 1:
        return texts
    assert applied is not None  # the sync succeeded
    return [format_restore(applied), *(t for t in texts if _is_jumps(t))]


Values = dict[tuple[str, str, str], list[float]]  # (metric, impl, change) -> figures


def bench_state(services: int, endpoints: int) -> tuple[ProxyConfig, ClusterState]:
    """The bench node's proxy config, and a synced state of SERVICES x ENDPOINTS."""
    config = ProxyConfig(node_name="bench-node", cluster_cidr=str(w.POD_NET))
    state = ClusterState()
    state.apply(w.objects(w.cluster_docs(services, endpoints)))
    state.mark_synced()
    return config, state


def apply_probe(state: ClusterState, probe: ProbeService, services: int) -> None:
    """Bring the probe service (the last of SERVICES) in STATE to PROBE's state."""
    objs = w.objects(probe.docs(services))
    keys = {o.key for o in objs}
    gone = [
        k
        for k in (
            ("Service", w.NAMESPACE, w.service_name(services)),
            ("EndpointSlice", w.NAMESPACE, f"{w.service_name(services)}-1"),
        )
        if k not in keys
    ]
    state.apply(objs, gone)


def record_syncs(values: Values, change: str, results: list[SyncResult], cpu: float) -> None:
    """netplane's figures for one change (a flap's syncs count as one)."""
    total = sum(r.total_seconds for r in results)
    compute = sum(r.compute_seconds for r in results)
    values["sync", "netplane", change].append(total)
    values["compute", "netplane", change].append(compute)
    values["kernel", "netplane", change].append(total - compute)
    values["bytes", "netplane", change].append(sum(r.bytes for r in results))
    values["restores", "netplane", change].append(sum(r.restores for r in results))
    values["cpu", "netplane", change].append(cpu)


def to_series(values: Values, base: dict[str, Label]) -> list[Series]:
    return [
        Series(metric, _UNITS[metric], {**base, "change": change, "impl": impl}, tuple(v))
        for (metric, impl, change), v in values.items()
    ]


def run_inproc(
    variant: str, services: int, endpoints: int, repeat: int, flush_repeat: int
) -> tuple[list[Series], list[Skipped]]:
    base: dict[str, Label] = {"backend": variant, "services": services, "endpoints": endpoints}
    values: Values = defaultdict(list)
    skipped: list[Skipped] = []
    config, state = bench_state(services, endpoints)
    tracker = state.tracker()
    probe_key = (w.NAMESPACE, w.service_name(services))
    peer_full = not (variant == "nft" and services > PEER_FULL_NFT_MAX_SERVICES)
    if not peer_full:
        skipped.append(
            Skipped(
                f"peer full restores ({variant}, {services} services)",
                f"one iptables-nft-restore of everything takes minutes above "
                f"{PEER_FULL_NFT_MAX_SERVICES} services (measured-floors.md)",
            )
        )

    with contextlib.ExitStack() as stack:
        np_ns, floor_ns, peer_ns = (stack.enter_context(netns()) for _ in range(3))
        rec = FakeIptables(real=Iptables(variant, "ipv4", netns=np_ns.name))  # records
        floor = Iptables(variant, "ipv4", netns=floor_ns.name)
        peer = Iptables(variant, "ipv4", netns=peer_ns.name)
        syncer = Syncer(config, rec)  # no conntrack: nothing to clear in an idle namespace
        syncer.sync(state.snapshot(), None, full=True)
        initial = rec.take()
        _timed_restores(floor, initial)
        _timed_restores(peer, initial)

        def record(
            change: str,
            results: list[SyncResult],
            cpu: float,
            texts: list[str],
            peer_texts: list[str],
        ) -> None:
            record_syncs(values, change, results, cpu)
            values["restore", "floor", change].append(_timed_restores(floor, texts))
            if peer_texts:
                values["restore", "kube-proxy-equivalent", change].append(
                    _timed_restores(peer, peer_texts)
                )
                values["bytes", "kube-proxy-equivalent", change].append(
                    sum(len(t.encode()) for t in peer_texts)
                )
            else:  # keep the peer's rules equal to the others' without timing it
                _timed_restores(peer, texts)

        def step(state_: ProbeService) -> tuple:
            before = syncer.applied
            old = {c for c in (before or {}).get("nat", {}) if SERVICE_CHAIN.match(c)}
            apply_probe(state, state_, services)
            snap = state.snapshot()
            c0 = _cpu()
            result = syncer.sync(snap, tracker.pop())
            cpu = _cpu() - c0
            texts = rec.take()
            after = syncer.applied
            assert after is not None  # the sync succeeded
            mine = (
                set(render_service(snap, probe_key, config).nat_chains)
                if probe_key in snap.services
                else set()
            )
            changed = mine | (old - {c for c in after["nat"] if SERVICE_CHAIN.match(c)})
            return result, cpu, texts, [peer_partial(before or {}, after, changed)]

        for _ in range(repeat):
            for s in cycle(endpoints):
                parts = [step(st) for st, _ in s.transitions]  # a flap's syncs count as one
                record(
                    s.change,
                    [p[0] for p in parts],
                    sum(p[1] for p in parts),
                    [t for p in parts for t in p[2]],
                    [t for p in parts for t in p[3]],
                )
            c0 = _cpu()
            result = syncer.sync(state.snapshot(), None)  # the periodic sync: writes nothing
            texts = rec.take()
            full = _peer_full(texts, syncer.applied) if peer_full else []
            record("noop-resync", [result], _cpu() - c0, texts, full)
        for _ in range(flush_repeat):
            for ns in (np_ns, floor_ns, peer_ns):
                ns.exec(f"iptables-{variant}-restore", "-w", "10", input=FLUSH)
            c0 = _cpu()
            result = syncer.sync(state.snapshot(), None, full=True)
            texts = rec.take()
            full = _peer_full(texts, syncer.applied) if peer_full else []
            record("flush-resync", [result], _cpu() - c0, texts, full)

    return to_series(values, base), skipped


_UNITS = {
    "sync": "s",
    "compute": "s",
    "kernel": "s",
    "bytes": "bytes",
    "restores": "calls",
    "cpu": "s",
    "restore": "s",
}
