"""Change tracking: exactly which services changed between two syncs, as kube-proxy knows."""

from __future__ import annotations

import threading

from netplane.model import Endpoint, EndpointSlice, Pod, Service, ServicePort
from netplane.state import ClusterState


def svc(name="a", port=80, ns="default"):
    return Service(
        namespace=ns, name=name, cluster_ips=("10.96.0.1",), ports=(ServicePort(port=port),)
    )


def eps(name="a-1", service="a", ips=("10.0.0.1",), ns="default"):
    return EndpointSlice(
        namespace=ns,
        name=name,
        service_name=service,
        endpoints=tuple(Endpoint(addresses=(ip,)) for ip in ips),
    )


def test_service_and_endpoint_changes_are_tracked_separately():
    state = ClusterState()
    tracker = state.tracker()
    state.apply([svc(), eps()])
    changes = tracker.pop()
    assert changes.services == {("default", "a")} and changes.endpoints == {("default", "a")}
    assert set(changes.first_change) == {("default", "a")}
    assert not tracker.pop()

    state.apply([eps(ips=("10.0.0.2",))])
    changes = tracker.pop()
    assert changes.services == frozenset() and changes.endpoints == {("default", "a")}


def test_no_op_updates_are_not_changes():
    state = ClusterState()
    state.apply([svc(), eps()])
    tracker = state.tracker()
    assert state.apply([svc(), eps()]) == 0
    assert not tracker.pending()


def test_slice_moving_to_another_service_touches_both():
    state = ClusterState()
    state.apply([svc("a"), svc("b"), eps("s", "a")])
    tracker = state.tracker()
    state.apply([eps("s", "b")])
    assert tracker.pop().endpoints == {("default", "a"), ("default", "b")}
    snap = state.snapshot()
    assert snap.slices_for(("default", "a")) == () and len(snap.slices_for(("default", "b"))) == 1


def test_deletes_and_snapshot_isolation():
    state = ClusterState()
    state.apply(
        [svc(), eps("a-1"), eps("a-2", ips=("10.0.0.9",)), Pod(namespace="default", name="p")]
    )
    before = state.snapshot()
    tracker = state.tracker()
    state.apply(
        deletes=[
            ("EndpointSlice", "default", "a-1"),
            ("Pod", "default", "p"),
            ("Service", "default", "missing"),
        ]
    )
    changes = tracker.pop()
    assert changes.endpoints == {("default", "a")} and changes.pods == {("default", "p")}
    assert [s.name for s in state.snapshot().slices_for(("default", "a"))] == ["a-2"]
    assert [s.name for s in before.slices_for(("default", "a"))] == ["a-1", "a-2"]


def test_wait_wakes_on_change_and_times_out_otherwise():
    state = ClusterState()
    tracker = state.tracker()
    assert tracker.wait(0.01) is False
    threading.Timer(0.05, lambda: state.apply([svc()])).start()
    assert tracker.wait(5) is True


def test_each_consumer_has_its_own_feed():
    state = ClusterState()
    proxy, dns = state.tracker(), state.tracker()
    state.apply([svc()])
    assert proxy.pop().services == {("default", "a")}
    assert dns.pop().services == {("default", "a")}
