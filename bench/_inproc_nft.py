"""One sync at a time of the nftables backend, beside its floor, on identical tables.

Two namespaces hold the same objects. In the first, netplane's NftSyncer applies each
change and reports compute time and bytes; its exact netlink transactions are then sent
again, by hand, to the second (the floor: what the kernel costs for the same transaction
with no Python around it). The peer, kube-proxy's nftables mode, is measured for real by
`netplane bench proxy-sync --peers` (it needs an API server).
"""

from __future__ import annotations

import contextlib
import resource
import time
from collections import defaultdict

from netplane.bench._inproc import Values, apply_probe, bench_state, record_syncs, to_series
from netplane.bench._netns import netns
from netplane.bench._results import Label, Series, Skipped
from netplane.bench._scenario import ProbeService, cycle
from netplane.proxy.backend import SyncResult
from netplane.proxy.nft._netlink import Batch, Netlink
from netplane.proxy.nft.sync import NftSyncer
from netplane.testing.netlink import RecordingNetlink


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def _replay(netlink: Netlink, batches: list[Batch]) -> float:
    """The same transactions, by hand (no generation check: another namespace)."""
    t0 = time.perf_counter()
    for batch in batches:
        netlink.commit(batch)
    return time.perf_counter() - t0


def run_inproc_nft(
    services: int, endpoints: int, repeat: int, flush_repeat: int
) -> tuple[list[Series], list[Skipped]]:
    base: dict[str, Label] = {"backend": "nftables", "services": services, "endpoints": endpoints}
    values: Values = defaultdict(list)
    config, state = bench_state(services, endpoints)
    tracker = state.tracker()

    with contextlib.ExitStack() as stack:
        np_ns, floor_ns = (stack.enter_context(netns()) for _ in range(2))
        rec = RecordingNetlink(np_ns.name)
        floor = Netlink(floor_ns.name)
        syncer = NftSyncer(config, rec)  # no conntrack: nothing to clear in an idle namespace
        start = time.perf_counter()
        first = syncer.sync(state.snapshot(), None, full=True)
        values["sync", "netplane", "start"].append(time.perf_counter() - start)
        values["compute", "netplane", "start"].append(first.compute_seconds)
        values["bytes", "netplane", "start"].append(first.bytes)
        values["restore", "floor", "start"].append(_replay(floor, rec.take()))

        def record(change: str, results: list[SyncResult], cpu: float) -> None:
            record_syncs(values, change, results, cpu)
            values["restore", "floor", change].append(_replay(floor, rec.take()))

        def step(probe: ProbeService) -> tuple[SyncResult, float]:
            apply_probe(state, probe, services)
            c0 = _cpu()
            result = syncer.sync(state.snapshot(), tracker.pop())
            return result, _cpu() - c0

        for _ in range(repeat):
            for s in cycle(endpoints):
                parts = [step(st) for st, _ in s.transitions]  # a flap's syncs count as one
                record(s.change, [p[0] for p in parts], sum(p[1] for p in parts))
            c0 = _cpu()
            result = syncer.sync(state.snapshot(), None)  # the periodic sync: writes nothing
            record("noop-resync", [result], _cpu() - c0)
        for _ in range(flush_repeat):
            for ns in (np_ns, floor_ns):
                ns.exec("nft", "flush", "ruleset")
            c0 = _cpu()
            assert syncer.kernel_changed()
            verified = syncer.verify()  # what the daemon does within a second
            values["sync", "netplane", "flush-resync"].append(verified.seconds)
            values["cpu", "netplane", "flush-resync"].append(_cpu() - c0)
            values["restore", "floor", "flush-resync"].append(_replay(floor, rec.take()))

    return to_series(values, base), []
