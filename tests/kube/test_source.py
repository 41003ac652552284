"""The API source against a fake API server speaking the real list/watch protocol, through
the `kubernetes` client and a kubeconfig file."""

from __future__ import annotations

import logging
import os

import pytest

from netplane.kube.source import KubeApiSource
from netplane.model import parse_object
from netplane.state import ClusterState
from netplane.testing.fakeapi import (
    FakeApiServer,
    make_node,
    make_pod,
    make_service,
    make_slice,
    synthetic_cluster,
)

# How long the API server stays away in the outage test (a minute in the issue; seconds here).
API_DOWN_SECONDS = float(os.environ.get("NETPLANE_TEST_API_DOWN", "2"))


def server_view(api: FakeApiServer, kinds=("Service", "EndpointSlice")) -> dict:
    return {
        o.key: o
        for kind in kinds
        for raw in list(api._objects[kind].values())
        for o in parse_object(raw)
    }


def state_view(state: ClusterState) -> dict:
    snap = state.snapshot()
    objects = [
        *snap.services.values(),
        *(s for slices in snap.slices.values() for s in slices),
        *snap.pods.values(),
        *snap.nodes.values(),
    ]
    return {o.key: o for o in objects}


def converged(state: ClusterState, api: FakeApiServer, kinds=("Service", "EndpointSlice")):
    return lambda: state_view(state) == server_view(api, kinds)


def test_initial_list_is_paged_complete_and_marks_synced(api, run_source, wait_until):
    api.load(synthetic_cluster(230, 5))
    state, _ = run_source()
    assert state.wait_synced(15)
    assert wait_until(converged(state, api))
    assert len(state.snapshot().services) == 230
    lists = [q for path, q in api.requests if path == "/api/v1/services" and "watch" not in q]
    assert len(lists) == 5  # 230 items in pages of 50
    assert all(q["limit"] == "50" for q in lists)
    assert sum("continue" in q for q in lists) == 4


def test_expired_continue_token_restarts_the_list(api, run_source, wait_until):
    api.load(synthetic_cluster(120, 2))
    api.expire_continues = 2  # the list's second page answers 410 twice
    state, _ = run_source()
    assert state.wait_synced(15)
    assert wait_until(converged(state, api))
    assert api.expire_continues == 0


def test_not_synced_until_every_kind_is_listed(api, run_source, wait_until):
    api.stop()  # nothing answers yet
    state, _ = run_source()
    assert not wait_until(lambda: state.synced, timeout=0.5)
    api.load(synthetic_cluster(3, 2))
    api.start()
    assert state.wait_synced(15)
    assert wait_until(converged(state, api))


def test_watch_applies_each_change_and_only_that(api, run_source, wait_until):
    api.load(synthetic_cluster(20, 3))
    state, _ = run_source()
    assert state.wait_synced(15)
    tracker = state.tracker()
    api.put(make_service("web", "blue", "10.108.244.161"))
    assert tracker.wait(10)
    assert wait_until(lambda: ("web", "blue") in state.snapshot().services)
    changes = tracker.pop()
    assert changes.services == {("web", "blue")} and not changes.endpoints
    api.put(make_slice("web", "blue", "blue-x1", ["10.244.1.7"]))
    assert wait_until(lambda: state.snapshot().slices_for(("web", "blue")))
    api.put(make_slice("web", "blue", "blue-x1", ["10.244.1.8"]))
    assert wait_until(
        lambda: (
            state.snapshot().slices_for(("web", "blue"))[0].endpoints[0].addresses
            == ("10.244.1.8",)
        )
    )
    api.delete("EndpointSlice", "web", "blue-x1")
    api.delete("Service", "web", "blue")
    assert wait_until(converged(state, api))
    assert ("web", "blue") not in state.snapshot().services
    tracker.pop()
    assert not tracker.pending()  # nothing else moved


def test_dropped_watches_lose_no_change(api, run_source, wait_until):
    api.load(synthetic_cluster(10, 2))
    state, _ = run_source()
    assert state.wait_synced(15)
    for round_ in range(5):
        for i in range(10):
            api.put(make_service("drop", f"s{round_}-{i}", f"10.100.{round_}.{i + 1}"))
            if i == 4:
                api.drop_connections()  # mid-burst: some events were never sent
        api.delete("Service", "ns0", "svc0") if round_ == 0 else None
        api.drop_connections()
    assert wait_until(converged(state, api))


@pytest.mark.parametrize("as_http", [False, True], ids=["error-event", "http-410"])
def test_gone_relists_and_removes_what_was_deleted_meanwhile(api, run_source, as_http, wait_until):
    api.load(synthetic_cluster(30, 2))
    api.watch_gone_http = as_http
    state, _ = run_source()
    assert state.wait_synced(15)
    assert wait_until(converged(state, api))
    api.stop()  # disconnected while the cluster changes and etcd compacts
    for i in range(10):
        api.delete("Service", f"ns{i}", f"svc{i}")
        api.delete("EndpointSlice", f"ns{i}", f"svc{i}-abcde")
    api.put(make_service("late", "added", "10.100.9.9"))
    api.compact()
    api.start()
    assert wait_until(converged(state, api))
    assert ("ns3", "svc3") not in state.snapshot().services


def test_error_410_event_on_an_open_watch_relists(api, run_source, wait_until):
    api.load(synthetic_cluster(10, 2))
    state, _ = run_source()
    assert state.wait_synced(15)
    api.delete("Service", "ns1", "svc1")
    api.expire_watches()  # the watch may or may not have sent the delete before the 410
    api.delete("Service", "ns2", "svc2")
    assert wait_until(converged(state, api))


def test_api_server_gone_leaves_state_untouched_then_resumes(api, run_source, caplog, wait_until):
    caplog.set_level(logging.WARNING, logger="netplane.kube.source")
    api.load(synthetic_cluster(40, 3))
    state, _ = run_source()
    assert state.wait_synced(15)
    assert wait_until(converged(state, api))
    before = state.snapshot()
    tracker = state.tracker()
    api.stop()
    wait_until(lambda: False, timeout=API_DOWN_SECONDS)  # the outage
    after = state.snapshot()
    assert after.generation == before.generation and not tracker.pending()
    assert dict(after.services) == dict(before.services)
    retries = [r for r in caplog.records if "retry #" in r.getMessage()]
    assert retries, "the outage was noticed"
    # back-off, not a busy loop: 2 reflectors, >= 25 ms mean wait at the start, capped at 0.4 s
    assert len(retries) < 2 * (API_DOWN_SECONDS / 0.025 + 5)
    api.put(make_service("after", "outage", "10.100.7.7"))
    api.start()
    assert wait_until(lambda: ("after", "outage") in state.snapshot().services)
    assert wait_until(converged(state, api))


def test_slow_responses_still_converge(api, run_source, wait_until):
    api.load(synthetic_cluster(60, 2))
    api.delay = 0.2
    state, _ = run_source()
    assert state.wait_synced(30)
    api.put(make_service("slow", "svc", "10.100.3.3"))
    assert wait_until(converged(state, api), timeout=30)


def test_bookmarks_move_the_watch_forward(api, run_source, wait_until):
    api.load(synthetic_cluster(5, 1))
    state, _ = run_source(kinds={"Service"})
    assert state.wait_synced(15)
    listed_rv = api.resource_version
    for i in range(5):  # changes to a kind nobody watches move the global resourceVersion
        api.put(make_node(f"n{i}", f"192.168.0.{i + 1}", f"10.244.{i}.0/24"))

    def resumed_later() -> bool:
        watches = [q for p, q in api.requests if p == "/api/v1/services" and "watch" in q]
        return any(int(q["resourceVersion"]) > listed_rv for q in watches)

    assert wait_until(resumed_later)  # the next watch started from a bookmark's version
    assert all(q.get("allowWatchBookmarks") == "true" for _, q in api.requests if "watch" in q)


def test_rejected_object_keeps_the_last_good_version(api, run_source, wait_until):
    api.put(make_service("app", "web", "10.100.1.1"))
    state, _ = run_source(kinds={"Service"})
    assert state.wait_synced(15)
    broken = make_service("app", "web", "10.100.1.1")
    broken["spec"]["ports"][0]["port"] = 99999
    api.put(broken)
    api.put(make_service("app", "marker", "10.100.1.2"))
    assert wait_until(lambda: ("app", "marker") in state.snapshot().services)
    assert state.snapshot().services[("app", "web")].ports[0].port == 80


def test_pods_and_nodes_when_asked(api, run_source, wait_until):
    api.load([make_node("pi-red", "192.168.0.152", "10.244.0.0/24")])
    api.load([make_pod("default", "blue-1", "10.244.0.5", "pi-red")])
    kinds = ("Pod", "Node")
    state, _ = run_source(kinds=set(kinds))
    assert state.wait_synced(15)
    assert wait_until(converged(state, api, kinds))
    api.put(make_pod("default", "blue-2", "10.244.0.6", "pi-red"))
    api.delete("Pod", "default", "blue-1")
    assert wait_until(converged(state, api, kinds))
    assert state.snapshot().nodes["pi-red"].internal_ips == ("192.168.0.152",)


def test_stop_ends_every_thread_promptly(api, run_source):
    api.load(synthetic_cluster(5, 1))
    run_source(kinds={"Service", "EndpointSlice", "Pod", "Node"})[0].wait_synced(15)
    # the fixture's finalizer asserts that the source thread ended


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="Ingress"):
        KubeApiSource(None, {"Service", "Ingress"})  # type: ignore[arg-type]
