"""The pure layers: objects -> catalog -> answers, deltas, reverse zones, autopath."""

from __future__ import annotations

import dataclasses
import ipaddress
import random

from netplane.dns.answer import NOERROR, NXDOMAIN, resolve
from netplane.dns.catalog import build_catalog, delta
from netplane.dns.records import AAAA, PTR, SOA, SRV, A, Record, ZoneConfig, reverse_name
from netplane.model import Endpoint, EndpointSlice, Pod, RawObject, Service, ServicePort
from netplane.state import ClusterState

Z = "cluster.local"
DEFAULT = ZoneConfig()
BLUE = Service("default", "blue", cluster_ips=("10.0.0.1",), ports=(ServicePort(80, name="http"),))
BLUE_EPS = EndpointSlice("default", "blue-1", "blue", endpoints=(Endpoint(("10.2.0.1",)),))
HDLS = Service("default", "h", headless=True)
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


def _state(*objects) -> ClusterState:
    state = ClusterState()
    state.apply(objects)
    state.mark_synced()
    return state


def _catalog(*objects, config=DEFAULT):
    return build_catalog(_state(*objects).snapshot(), config, serial=1)


def test_records_are_derived_per_service():
    cat = _catalog(BLUE, BLUE_EPS, HDLS, SLICE)
    assert cat.get(f"blue.default.svc.{Z}") == (Record(A, "10.0.0.1"),)
    assert cat.get(f"_http._tcp.blue.default.svc.{Z}") == (
        Record(SRV, (0, 100, 80, f"blue.default.svc.{Z}")),
    )
    assert cat.get(f"h.default.svc.{Z}") == (Record(A, "10.1.0.1"), Record(A, "10.1.0.3"))
    assert cat.get(f"10-1-0-2.h.default.svc.{Z}") is None  # not ready
    assert cat.get("3.0.1.10.in-addr.arpa") == (Record(PTR, f"10-1-0-3.h.default.svc.{Z}"),)
    assert cat.get(f"_tcp.blue.default.svc.{Z}") == ()  # empty non-terminal


def test_endpoints_of_clusterip_services_have_names_and_ptrs():
    """As CoreDNS: every ready endpoint IP has a PTR to its endpoint name, which resolves."""
    cat = _catalog(BLUE, BLUE_EPS)
    assert cat.get("1.0.2.10.in-addr.arpa") == (Record(PTR, f"10-2-0-1.blue.default.svc.{Z}"),)
    assert cat.get(f"10-2-0-1.blue.default.svc.{Z}") == (Record(A, "10.2.0.1"),)
    assert cat.get(f"blue.default.svc.{Z}") == (Record(A, "10.0.0.1"),)  # still the VIP
    assert cat.get("1.0.0.10.in-addr.arpa") == (Record(PTR, f"blue.default.svc.{Z}"),)


def test_publish_not_ready_addresses():
    svc = dataclasses.replace(HDLS, publish_not_ready_addresses=True)
    assert len(_catalog(svc, SLICE).get(f"h.default.svc.{Z}")) == 3


def test_headless_without_endpoints_is_nxdomain():
    assert resolve(_catalog(HDLS), f"h.default.svc.{Z}", A).rcode == NXDOMAIN


def test_namespace_without_services_is_nodata():
    ns = RawObject("Namespace", "", "empty", {})
    cat = _catalog(BLUE, ns)
    for name in (f"empty.svc.{Z}", f"default.svc.{Z}"):
        answer = resolve(cat, name, A)
        assert (answer.rcode, answer.answer) == (NOERROR, ()), name
        assert answer.authority[0][1].rtype == SOA
    assert resolve(cat, f"nosuch.svc.{Z}", A).rcode == NXDOMAIN


def test_reverse_zones_of_the_service_cidr_are_ours():
    cat = _catalog(BLUE, config=ZoneConfig(reverse_cidrs=("10.96.0.0/12", "fd00:10:96::/112")))
    unknown = resolve(cat, "7.0.96.10.in-addr.arpa", PTR)
    assert unknown.rcode == NXDOMAIN
    assert unknown.authority[0][0] == "10.in-addr.arpa"  # the label-aligned zone above /12
    assert resolve(cat, "96.10.in-addr.arpa", PTR).rcode == NOERROR  # a partial name: NODATA
    assert resolve(cat, "7.0.0.11.in-addr.arpa", PTR) is None  # not ours: forwarded/REFUSED
    assert resolve(cat, "7.0.0.10.in-addr.arpa", PTR) is None  # 10.0/16 is outside the /12
    v6 = ipaddress.ip_address("fd00:10:96::7").reverse_pointer
    assert resolve(cat, v6, PTR).rcode == NXDOMAIN
    assert resolve(cat, "1.0.0.10.in-addr.arpa", PTR).rcode == NOERROR  # known: outside, ours


def test_shared_ptr_names_merge():
    a = Service("a", "x", cluster_ips=("10.0.0.5",))
    b = Service("b", "x", headless=True)
    sl = EndpointSlice("b", "x-1", "x", endpoints=(Endpoint(("10.0.0.5",), hostname="e"),))
    assert len(_catalog(a, b, sl).get("5.0.0.10.in-addr.arpa")) == 2


def test_verified_pods():
    pod = Pod("default", "p", pod_ips=("10.244.0.7", "fd00::7"))
    cat = _catalog(pod, config=ZoneConfig(pods="verified"))
    assert resolve(cat, f"10-244-0-7.default.pod.{Z}", A).answer[0][1] == Record(A, "10.244.0.7")
    assert resolve(cat, f"fd00--7.default.pod.{Z}", AAAA).rcode == NOERROR
    assert resolve(cat, f"10-244-0-8.default.pod.{Z}", A).rcode == NXDOMAIN
    assert resolve(cat, f"10-244-0-7.other.pod.{Z}", A).rcode == NXDOMAIN
    assert cat.pod_namespace("10.244.0.7") == "default"
    disabled = _catalog(pod)
    assert resolve(disabled, f"10-244-0-7.default.pod.{Z}", A).rcode == NXDOMAIN
    assert resolve(disabled, f"pod.{Z}", A).rcode == NOERROR


def test_outside_zone_is_not_ours():
    cat = _catalog(BLUE)
    assert resolve(cat, "example.com", A) is None
    assert resolve(cat, "1.0.0.127.in-addr.arpa", PTR) is None


def test_external_name_out_of_zone_leaves_the_target_to_chase():
    ext = Service("testns", "external", type="ExternalName", external_name="ext.interwebs.test")
    answer = resolve(_catalog(ext), f"external.testns.svc.{Z}", A)
    assert answer.rcode == NOERROR and answer.chase == "ext.interwebs.test"
    assert [r.rtype for _, r in answer.answer] == [5]


def test_delta_reports_changed_names_and_leaves_the_old_catalog_alone():
    state = _state(BLUE, HDLS, SLICE)
    tracker = state.tracker()
    old_snap = state.snapshot()
    old = build_catalog(old_snap, ZoneConfig(), serial=1)
    state.apply([dataclasses.replace(BLUE, cluster_ips=("10.0.0.9",))])
    d = delta(old, old_snap, state.snapshot(), tracker.pop(), serial=2)
    new = old.apply(d)
    assert new.get(f"blue.default.svc.{Z}") == (Record(A, "10.0.0.9"),)
    assert old.get(f"blue.default.svc.{Z}") == (Record(A, "10.0.0.1"),)  # untouched
    assert {f"blue.default.svc.{Z}", "1.0.0.10.in-addr.arpa", "9.0.0.10.in-addr.arpa"} <= d.changed
    assert f"h.default.svc.{Z}" not in d.changed
    assert new.get("1.0.0.10.in-addr.arpa") is None
    assert new.services.base is old.services  # the base stays shared


def test_incremental_updates_equal_a_full_build():
    """Random adds, changes and deletes (fixed seed): deltas never drift from a rebuild."""
    rng = random.Random(42)
    state = _state()
    tracker = state.tracker()
    snap = state.snapshot()
    cat = build_catalog(snap, ZoneConfig(pods="verified"), serial=1)
    names: set[str] = set()
    for step in range(80):
        ns, name = f"ns{rng.randrange(3)}", f"s{rng.randrange(8)}"
        roll = rng.random()
        if roll < 0.35:
            ip = f"10.0.{rng.randrange(4)}.{rng.randrange(4)}"  # shared IPs: merged PTRs
            state.apply([Service(ns, name, cluster_ips=(ip,), ports=(ServicePort(80, name="p"),))])
        elif roll < 0.6:
            state.apply([Service(ns, name, headless=True)])
            eps = tuple(
                Endpoint((f"10.1.0.{rng.randrange(6)}",), hostname=rng.choice(["", "a", "b"]))
                for _ in range(rng.randrange(3))
            )
            state.apply([EndpointSlice(ns, f"{name}-1", name, endpoints=eps)])
        elif roll < 0.75:
            ip = f"10.244.0.{rng.randrange(4)}"
            state.apply([Pod(ns, f"p{rng.randrange(4)}", pod_ips=(ip,))])
        else:
            state.apply(deletes=[("Service", ns, name), ("EndpointSlice", ns, f"{name}-1")])
        new_snap = state.snapshot()
        d = delta(cat, snap, new_snap, tracker.pop(), serial=step + 2)
        cat, snap = cat.apply(d), new_snap
        full = build_catalog(snap, ZoneConfig(pods="verified"), serial=step + 2)
        names |= set(d.changed) | {reverse_name(ip) for ip in full.reverse}
        names |= {f"10-244-0-{i}.{n}.pod.{Z}" for i in range(4) for n in ("ns0", "ns1", "ns2")}
        for qname in names:
            assert cat.get(qname) == full.get(qname), (step, qname)
        assert cat.namespaces == full.namespaces
