"""The pure layers: objects -> index, index -> answers, answers -> wire bytes, autopath."""

from __future__ import annotations

import dataclasses

import dns.message
import dns.rcode

from netplane.dns.answer import NOERROR, NXDOMAIN, resolve
from netplane.dns.autopath import Autopath
from netplane.dns.records import AAAA, PTR, SRV, A, Record, ZoneConfig, build_index, update_index
from netplane.dns.server import Engine
from netplane.model import Endpoint, EndpointSlice, Pod, Service, ServicePort
from netplane.state import ClusterState, Snapshot

Z = "cluster.local"


def _state(*objects) -> ClusterState:
    state = ClusterState()
    state.apply(objects)
    state.mark_synced()
    return state


BLUE = Service("default", "blue", cluster_ips=("10.0.0.1",), ports=(ServicePort(80, name="http"),))
HDLS = Service("default", "h", headless=True, publish_not_ready_addresses=False)
SLICE = EndpointSlice(
    "default",
    "h-1",
    "h",
    endpoints=(
        Endpoint(("10.1.0.1",), hostname="a"),
        Endpoint(("10.1.0.2",), ready=False),
        Endpoint(("10.1.0.3",)),
    ),
)


def _snap(*objects) -> Snapshot:
    return _state(*objects).snapshot()


def test_index_is_pure_and_complete():
    snap = _snap(BLUE, HDLS, SLICE)
    index = build_index(snap, ZoneConfig(), serial=1)
    assert index == build_index(snap, ZoneConfig(), serial=1)
    assert index.get(f"blue.default.svc.{Z}") == (Record(A, "10.0.0.1"),)
    assert index.get(f"_http._tcp.blue.default.svc.{Z}") == (
        Record(SRV, (0, 100, 80, f"blue.default.svc.{Z}")),
    )
    assert index.get(f"h.default.svc.{Z}") == (Record(A, "10.1.0.1"), Record(A, "10.1.0.3"))
    assert index.get(f"10-1-0-2.h.default.svc.{Z}") is None  # not ready
    assert index.get("3.0.1.10.in-addr.arpa") == (Record(PTR, f"10-1-0-3.h.default.svc.{Z}"),)
    assert index.get(f"_tcp.blue.default.svc.{Z}") == ()  # empty non-terminal


def test_publish_not_ready_addresses():
    svc = dataclasses.replace(HDLS, publish_not_ready_addresses=True)
    index = build_index(_snap(svc, SLICE), ZoneConfig(), serial=1)
    assert len(index.get(f"h.default.svc.{Z}")) == 3


def test_headless_without_endpoints_is_nxdomain():
    index = build_index(_snap(HDLS), ZoneConfig(), serial=1)
    assert resolve(index, f"h.default.svc.{Z}", A).rcode == NXDOMAIN


def test_update_rebuilds_only_changed_services_and_reports_changed_names():
    state = _state(BLUE, HDLS, SLICE)
    tracker = state.tracker()
    old = build_index(state.snapshot(), ZoneConfig(), serial=1)
    moved = dataclasses.replace(BLUE, cluster_ips=("10.0.0.9",))
    state.apply([moved])
    new = update_index(old, state.snapshot(), tracker.pop(), serial=2)
    assert new.get(f"blue.default.svc.{Z}") == (Record(A, "10.0.0.9"),)
    assert old.get(f"blue.default.svc.{Z}") == (Record(A, "10.0.0.1"),)  # untouched
    assert new.contributions[("svc", "default", "h")] is old.contributions[("svc", "default", "h")]
    assert {
        f"blue.default.svc.{Z}",
        "1.0.0.10.in-addr.arpa",
        "9.0.0.10.in-addr.arpa",
    } <= new.changed
    assert f"h.default.svc.{Z}" not in new.changed
    state.apply(deletes=[BLUE.key])
    newer = update_index(new, state.snapshot(), tracker.pop(), serial=3)
    assert newer.get(f"blue.default.svc.{Z}") is None
    assert newer.get("9.0.0.10.in-addr.arpa") is None
    full = build_index(state.snapshot(), ZoneConfig(), serial=3)
    assert (newer.names, newer.owners) == (full.names, full.owners)


def test_shared_ptr_names_merge():
    a = Service("a", "x", cluster_ips=("10.0.0.5",))
    b = Service("b", "x", headless=True)
    sl = EndpointSlice("b", "x-1", "x", endpoints=(Endpoint(("10.0.0.5",), hostname="e"),))
    index = build_index(_snap(a, b, sl), ZoneConfig(), serial=1)
    assert len(index.get("5.0.0.10.in-addr.arpa")) == 2


def test_verified_pods():
    pod = Pod("default", "p", pod_ips=("10.244.0.7", "fd00::7"))
    index = build_index(_snap(pod), ZoneConfig(pods="verified"), serial=1)
    assert resolve(index, f"10-244-0-7.default.pod.{Z}", A).answer[0][1] == Record(A, "10.244.0.7")
    assert resolve(index, f"fd00--7.default.pod.{Z}", AAAA).rcode == NOERROR
    assert resolve(index, f"10-244-0-8.default.pod.{Z}", A).rcode == NXDOMAIN
    assert resolve(index, f"10-244-0-7.other.pod.{Z}", A).rcode == NXDOMAIN
    disabled = build_index(_snap(pod), ZoneConfig(), serial=1)
    assert resolve(disabled, f"10-244-0-7.default.pod.{Z}", A).rcode == NXDOMAIN
    assert resolve(disabled, f"pod.{Z}", A).rcode == NOERROR


def test_outside_zone_is_not_ours():
    index = build_index(_snap(BLUE), ZoneConfig(), serial=1)
    assert resolve(index, "example.com", A) is None
    assert resolve(index, "1.0.0.127.in-addr.arpa", PTR) is None


def _ask(engine: Engine, name: str, client: str = "127.0.0.1", rdtype: str = "A"):
    out, _, _ = engine.respond(dns.message.make_query(name, rdtype).to_wire(), (client, 5), None)
    return dns.message.from_wire(out)


def test_engine_cache_survives_unrelated_changes():
    state = _state(BLUE, HDLS, SLICE)
    tracker = state.tracker()
    engine = Engine(ZoneConfig(), None)
    engine.install(build_index(state.snapshot(), ZoneConfig(), serial=1))
    _ask(engine, f"h.default.svc.{Z}.")
    _ask(engine, f"blue.default.svc.{Z}.")
    state.apply([dataclasses.replace(BLUE, cluster_ips=("10.0.0.9",))])
    engine.install(update_index(engine.index, state.snapshot(), tracker.pop(), serial=2))
    assert [k for k in engine._view.cache if k.startswith(b"\x01h")]  # still cached
    assert _ask(engine, f"blue.default.svc.{Z}.").answer[0][0].to_text() == "10.0.0.9"


def test_autopath_walks_the_search_list_on_the_server():
    pod = Pod("default", "client", pod_ips=("10.244.0.7",))
    other = Service("other", "thesvc", cluster_ips=("10.0.0.7",))
    state = _state(BLUE, other, pod)
    config = ZoneConfig(pods="verified")
    engine = Engine(config, None, Autopath(("lan",)))
    engine.autopath.refresh(state.snapshot())
    engine.install(build_index(state.snapshot(), config, serial=1))
    r = _ask(engine, f"thesvc.other.default.svc.{Z}.", client="10.244.0.7")
    assert r.rcode() == dns.rcode.NOERROR
    assert [rr.to_text().split()[-1] for rr in r.answer] == [
        f"thesvc.other.svc.{Z}.", "10.0.0.7"
    ]  # fmt: skip
    assert r.question[0].name.to_text() == f"thesvc.other.default.svc.{Z}."
    # another client (not a pod) gets the plain answer: NXDOMAIN
    r = _ask(engine, f"thesvc.other.default.svc.{Z}.", client="10.9.9.9")
    assert r.rcode() == dns.rcode.NXDOMAIN
    # and the pod still gets the searched answer afterwards (nothing shared was cached)
    r = _ask(engine, f"thesvc.other.default.svc.{Z}.", client="10.244.0.7")
    assert r.rcode() == dns.rcode.NOERROR
    # a name found under the first element is answered as asked
    r = _ask(engine, f"blue.default.svc.{Z}.", client="10.244.0.7")
    assert [rr.rdtype for rr in r.answer] == [1]


def test_incremental_updates_equal_a_full_build():
    """Random adds, changes and deletes (fixed seed): the incremental index never drifts."""
    import random

    rng = random.Random(42)
    state = ClusterState()
    state.mark_synced()
    tracker = state.tracker()
    index = build_index(state.snapshot(), ZoneConfig(), serial=1)
    for step in range(60):
        ns, name = f"ns{rng.randrange(3)}", f"s{rng.randrange(8)}"
        roll = rng.random()
        if roll < 0.4:
            ip = f"10.0.{rng.randrange(4)}.{rng.randrange(4)}"  # shared IPs: merged PTRs
            state.apply([Service(ns, name, cluster_ips=(ip,), ports=(ServicePort(80, name="p"),))])
        elif roll < 0.7:
            state.apply([Service(ns, name, headless=True)])
            eps = tuple(
                Endpoint((f"10.1.0.{rng.randrange(6)}",), hostname=rng.choice(["", "a", "b"]))
                for _ in range(rng.randrange(3))
            )
            state.apply([EndpointSlice(ns, f"{name}-1", name, endpoints=eps)])
        else:
            state.apply(deletes=[("Service", ns, name), ("EndpointSlice", ns, f"{name}-1")])
        index = update_index(index, state.snapshot(), tracker.pop(), serial=step + 2)
        full = build_index(state.snapshot(), ZoneConfig(), serial=step + 2)
        assert index.names == full.names, step
        assert index.owners == full.owners, step


def test_fast_and_slow_paths_agree():
    """The hand parser and the dnslib fallback (taken for EDNS options) answer alike."""
    import dns.edns

    state = _state(BLUE, HDLS, SLICE)
    engine = Engine(ZoneConfig(), None)
    engine.install(build_index(state.snapshot(), ZoneConfig(), serial=1))
    cookie = dns.edns.GenericOption(10, b"12345678")
    for name, rdtype in [
        (f"BLUE.default.svc.{Z}.", "A"),
        (f"_http._tcp.blue.default.svc.{Z}.", "SRV"),
        (f"h.default.svc.{Z}.", "A"),
        (f"nope.default.svc.{Z}.", "A"),
        (f"blue.default.svc.{Z}.", "AAAA"),
        ("1.0.0.10.in-addr.arpa.", "PTR"),
        (f"{Z}.", "ANY"),
        ("example.com.", "A"),
    ]:
        replies = []
        for options in ([], [cookie]):
            q = dns.message.make_query(name, rdtype, use_edns=0, options=options)
            out, _, _ = engine.respond(q.to_wire(), ("127.0.0.1", 5), None)
            replies.append(dns.message.from_wire(out))
        fast, slow = replies
        assert (fast.rcode(), fast.flags) == (slow.rcode(), slow.flags), name
        assert fast.question == slow.question and fast.answer == slow.answer, name
        assert (fast.authority, fast.additional) == (slow.authority, slow.additional), name
        assert fast.question[0].name.to_text() == name  # the asked case comes back
