"""The syncer's incremental bookkeeping, without a kernel: after any sequence of changes the
patched desired state equals a from-scratch render, and the restore inputs it sent bring a
model kernel to exactly that state."""

from __future__ import annotations

import gc
import random
import threading

import pytest

from netplane import sources
from netplane.model import Endpoint, EndpointPort, EndpointSlice, Service, ServicePort
from netplane.proxy import _plan, daemon
from netplane.proxy.backend import SyncInterrupted
from netplane.proxy.daemon import SyncLoop
from netplane.proxy.metrics import Metrics
from netplane.proxy.render import ProxyConfig, assemble, render_service
from netplane.proxy.sync import Syncer
from netplane.state import ClusterState
from netplane.testing.kernel import FakeIptables

CONFIG = ProxyConfig("node-a", cluster_cidr="10.244.0.0/16")


def ours(kernel: FakeIptables) -> dict:
    """The fake kernel's nat and filter chains that the syncer owns."""
    return {t: {c: tuple(r) for c, r in kernel.tables[t].items() if _plan.ours(t, c)}
            for t in ("nat", "filter")}  # fmt: skip


def objects(i: int, endpoints: int, node_port: bool = False):
    name = f"svc-{i}"
    port = ServicePort(80, "TCP", "http", 8080, 30000 + i if node_port else 0)
    svc = Service("ns", name, type="NodePort" if node_port else "ClusterIP",
                  cluster_ips=(f"10.96.0.{i + 1}",), ports=(port,))  # fmt: skip
    eps = tuple(Endpoint((f"10.244.{i}.{k + 1}",), node_name="node-a") for k in range(endpoints))
    slice_ = EndpointSlice("ns", f"{name}-1", name, endpoints=eps,
                           ports=(EndpointPort(8080, "TCP", "http"),))  # fmt: skip
    return svc, slice_


def test_random_changes_match_a_fresh_render() -> None:
    rng = random.Random(7)
    state = ClusterState()
    tracker = state.tracker()
    for i in range(20):
        state.apply(objects(i, rng.randint(0, 4)))
    ipt = FakeIptables()
    syncer = Syncer(CONFIG, ipt, chunk=3)
    assert syncer.sync(state.snapshot(), tracker.pop()).full
    for step in range(60):
        i = rng.randrange(25)
        action = rng.choice(["endpoints", "endpoints", "nodeport", "delete"])
        if action == "delete":
            state.apply(
                deletes=[("Service", "ns", f"svc-{i}"), ("EndpointSlice", "ns", f"svc-{i}-1")]
            )
        else:
            state.apply(objects(i, rng.randint(0, 5), node_port=action == "nodeport"))
        result = syncer.sync(state.snapshot(), tracker.pop(), full=step % 17 == 16)
        snapshot = state.snapshot()
        fresh = assemble(
            CONFIG, [render_service(snapshot, k, CONFIG) for k in sorted(snapshot.services)]
        )
        assert syncer.applied == fresh, step
        assert ours(ipt) == fresh, step
        assert result.rules == {t: sum(map(len, c.values())) for t, c in fresh.items()}


def test_endpoint_change_sends_only_that_service() -> None:
    state = ClusterState()
    tracker = state.tracker()
    for i in range(50):
        state.apply(objects(i, 3))
    ipt = FakeIptables()
    syncer = Syncer(CONFIG, ipt)
    syncer.sync(state.snapshot(), tracker.pop())
    ipt.take()
    state.apply(objects(7, 2)[1:])
    result = syncer.sync(state.snapshot(), tracker.pop())
    assert result.keys == {("ns", "svc-7")} and result.restores == 1
    nat = ipt.texts[0].split("*nat\n")[1]
    assert ":KUBE-SERVICES" not in nat
    assert result.chains_deleted == 1


def test_collector_comes_back_while_the_first_lists_never_arrive(monkeypatch) -> None:
    """The daemon starts with the collector off (run_daemon) until its first sync; an API
    server that never answers must not keep it off, or each retry's garbage stays."""
    monkeypatch.setattr(sources, "FIRST_LOAD_GC_PAUSE", 0.0)
    state = ClusterState()  # never synced: no list arrives
    loop = SyncLoop(state, state.tracker(), Syncer(CONFIG, FakeIptables()), Metrics(), "node-a")
    stop = threading.Event()
    runner = threading.Thread(target=loop.run, args=(stop,))
    gc.disable()
    try:
        runner.start()
        for _ in range(100):
            if gc.isenabled():
                break
            stop.wait(0.05)
        assert gc.isenabled()
    finally:
        stop.set()
        runner.join(timeout=10)
        gc.enable()
    assert not runner.is_alive()


def test_loop_counts_failures_and_recovers_with_a_full_sync() -> None:
    state = ClusterState()
    tracker = state.tracker()
    state.apply(objects(1, 2))
    ipt = FakeIptables()
    metrics = Metrics()
    loop = SyncLoop(state, tracker, Syncer(CONFIG, ipt), metrics, "node-a")
    assert loop.sync_once(full=True)
    state.apply(objects(1, 1)[1:])
    ipt.fail_next()
    assert not loop.sync_once(full=False)
    assert metrics.partial_failures._value.get() == 1 and metrics.failures._value.get() == 1
    assert loop.backend.needs_full
    assert loop.sync_once(full=False)  # forced full by the failure
    assert metrics.full._sum.get() > 0 and ours(ipt)["nat"] == loop.backend.applied["nat"]
    assert metrics.last_success is not None


def test_full_sync_resumes_from_the_failed_chunk_and_converges() -> None:
    """Every 3rd restore refused: a 20-service full sync in chunks of 3 services (9 calls)
    converges by going on from each failed chunk; starting over would never get past the
    third call."""
    state = ClusterState()
    tracker = state.tracker()
    for i in range(20):
        state.apply(objects(i, 2))
    state.mark_synced()
    ipt = FakeIptables(fail_every=3)
    metrics = Metrics()
    loop = SyncLoop(state, tracker, Syncer(CONFIG, ipt, chunk=3), metrics, "node-a")
    attempts = [loop.sync_once(full=True)]
    while not attempts[-1]:
        assert loop.backend.needs_full and len(attempts) < 10
        attempts.append(loop.sync_once())
    assert ipt.refused >= 3 and metrics.failures._value.get() == ipt.refused
    assert metrics.partial_failures._value.get() == 0
    assert ipt.calls - ipt.refused <= 10  # each transaction committed once (9) + slack
    snapshot = state.snapshot()
    fresh = assemble(
        CONFIG, [render_service(snapshot, k, CONFIG) for k in sorted(snapshot.services)]
    )
    assert ours(ipt) == fresh and loop.backend.applied == fresh


def test_stop_between_chunks_leaves_a_consistent_kernel_and_a_restart_converges() -> None:
    state = ClusterState()
    for i in range(20):
        state.apply(objects(i, 2))
    ipt = FakeIptables()
    stop = threading.Event()
    syncer = Syncer(CONFIG, ipt, chunk=3)
    # SIGTERM arrives while the third chunk is being written
    ipt.after_restore = lambda _: len(ipt.texts) == 3 and stop.set()
    with pytest.raises(SyncInterrupted):
        syncer.sync(state.snapshot(), full=True, stop=stop)
    assert len(ipt.texts) == 3  # stopped before the fourth transaction
    # every state the fake accepted is consistent; a new process picks up from here
    ipt.after_restore = None
    restarted = Syncer(CONFIG, ipt, chunk=3)
    restarted.sync(state.snapshot())
    snapshot = state.snapshot()
    fresh = assemble(
        CONFIG, [render_service(snapshot, k, CONFIG) for k in sorted(snapshot.services)]
    )
    assert ours(ipt) == fresh and restarted.verify().drift == ()


def test_verify_repairs_only_what_drifted() -> None:
    state = ClusterState()
    for i in range(5):
        state.apply(objects(i, 2, node_port=i == 0))
    ipt = FakeIptables()
    syncer = Syncer(CONFIG, ipt)
    syncer.sync(state.snapshot())
    assert not syncer.kernel_changed() and syncer.verify().drift == ()
    victim = next(c for c in ours(ipt)["nat"] if c.startswith("KUBE-SVC-"))
    ipt.foreign(
        f"*nat\n-F {victim}\n-A KUBE-SERVICES -j RETURN\nCOMMIT\n*filter\n-F INPUT\nCOMMIT\n"
    )
    assert syncer.kernel_changed()
    ipt.take()
    found = syncer.verify()
    assert {(d.table, d.chain, d.kind) for d in found.drift} >= {
        ("nat", victim, "flushed"),
        ("nat", "KUBE-SERVICES", "changed"),
    }
    assert {d.kind for d in found.drift if d.table == "filter"} == {"jump"}
    [text] = ipt.take()  # one partial restore: those two chains and the filter jumps
    assert {line[1:].split()[0] for line in text.splitlines() if line.startswith(":")} == {
        victim,
        "KUBE-SERVICES",
    }
    assert text.count("-I INPUT ") == 3
    assert syncer.verify().drift == () and not syncer.kernel_changed()


def test_periodic_read_back_yields_to_a_change() -> None:
    state = ClusterState()
    tracker = state.tracker()
    state.apply(objects(1, 2))
    ipt = FakeIptables(save_seconds=30)  # a slow read-back (10k services, busy machine)
    loop = SyncLoop(state, tracker, Syncer(CONFIG, ipt), Metrics(), "node-a")
    assert loop.sync_once(full=True)
    stop = threading.Event()
    state.apply(objects(1, 1)[1:])  # a change is waiting
    assert loop.verify_once(stop, yielding=True) is daemon._YIELDED
    assert loop.sync_once() and not loop.backend.needs_full
    ipt.save_seconds = 0.01
    assert loop.verify_once(stop, yielding=True).drift == ()
    ipt.save_seconds = 30
    stop.set()  # SIGTERM during a read-back
    with pytest.raises(SyncInterrupted):
        loop.verify_once(stop)


def test_periodic_syncs_are_partial_and_full_rewrites_come_only_when_due() -> None:
    state = ClusterState()
    tracker = state.tracker()
    for i in range(5):
        state.apply(objects(i, 2))
    state.mark_synced()
    ipt = FakeIptables()
    metrics = Metrics()
    # a periodic sync every 50 ms, no read-back, no full rewrite
    loop = SyncLoop(state, tracker, Syncer(CONFIG, ipt), metrics, "node-a", min_sync_period=0,
                    sync_period=0.05, full_sync_period=0, verify_period=3600)  # fmt: skip
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    try:
        while metrics.partial._sum.get() == 0 or len(ipt.texts) < 1:
            stop.wait(0.01)
        stop.wait(0.5)  # ~10 periodic syncs
        assert len(ipt.texts) == 1  # the first (full) sync wrote; the periodic ones did not
        loop.full_sync_period = 0.2  # now due: one full rewrite, then partial ones again
        stop.wait(0.5)
    finally:
        stop.set()
        thread.join(5)
    fulls = [t for t in ipt.texts if ":KUBE-SERVICES" in t]
    assert 2 <= len(fulls) <= 6, len(fulls)  # the first, then one per 0.2 s at most


def test_full_sync_freezes_the_heap_without_a_collection(monkeypatch: pytest.MonkeyPatch) -> None:
    """No full collection between a full sync and the changes after it (0.7 s of CPU over
    ~990k objects at 10k services, which the first change waited for); the heap frozen at
    one full sync is unfrozen and collected at the start of the next one."""
    calls: list[str] = []
    frozen = [0]

    def freeze() -> None:
        calls.append("freeze")
        frozen[0] = 1

    def unfreeze() -> None:
        calls.append("unfreeze")
        frozen[0] = 0

    monkeypatch.setattr(daemon.gc, "freeze", freeze)
    monkeypatch.setattr(daemon.gc, "unfreeze", unfreeze)
    monkeypatch.setattr(daemon.gc, "get_freeze_count", lambda: frozen[0])
    monkeypatch.setattr(daemon.gc, "collect", lambda *a: calls.append("collect") or 0)
    state = ClusterState()
    tracker = state.tracker()
    state.apply(objects(1, 2))
    loop = SyncLoop(state, tracker, Syncer(CONFIG, FakeIptables()), Metrics(), "node-a")
    assert loop.sync_once(full=True)
    assert calls == ["freeze"]  # the first: nothing frozen yet, and no collection
    state.apply(objects(1, 1)[1:])
    assert loop.sync_once()
    assert calls == ["freeze"]  # a partial sync leaves the collector alone
    assert loop.sync_once(full=True)
    assert calls == ["freeze", "unfreeze", "collect", "freeze"]
