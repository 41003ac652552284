"""The engine (bytes in, bytes or an upstream action out) and the upstream seam, in-process."""

from __future__ import annotations

import dataclasses

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from dnslib import QTYPE, RR, A, DNSRecord

from netplane.dns.autopath import Autopath
from netplane.dns.catalog import build_catalog, delta
from netplane.dns.engine import Engine, entry_size
from netplane.dns.records import ZoneConfig
from netplane.dns.tcp import Connection
from netplane.dns.upstream import CHASE, FORWARD, SEARCH, Upstream, perform
from netplane.model import Endpoint, EndpointPort, EndpointSlice, Pod, Service, ServicePort
from netplane.state import ClusterState

Z = "cluster.local"
DEFAULT = ZoneConfig()
BLUE = Service("default", "blue", cluster_ips=("10.0.0.1",), ports=(ServicePort(80, name="http"),))
HDLS = Service("default", "h", headless=True)
SLICE = EndpointSlice(
    "default",
    "h-1",
    "h",
    endpoints=tuple(
        Endpoint((f"10.1.0.{i}",), hostname=f"backend-host-number-{i}") for i in range(5)
    ),
    ports=(),
)
EXT = Service("testns", "external", type="ExternalName", external_name="ext.interwebs.test")


def _state(*objects) -> ClusterState:
    state = ClusterState()
    state.apply(objects)
    state.mark_synced()
    return state


def _engine(*objects, config=DEFAULT, **kw) -> Engine:
    engine = Engine(config, **kw)
    engine.install(build_catalog(_state(*objects).snapshot(), config, serial=1))
    return engine


def _ask(engine: Engine, name: str, rdtype="A", client="127.0.0.1", tcp=False, **kw):
    wire = dns.message.make_query(name, rdtype, **kw).to_wire()
    out, _, _ = engine.respond(wire, (client, 5), tcp)
    return out if not isinstance(out, bytes) else dns.message.from_wire(out)


def test_servfail_before_first_load():
    engine = Engine(ZoneConfig())
    assert _ask(engine, f"blue.default.svc.{Z}.").rcode() == dns.rcode.SERVFAIL


def test_authoritative_answers_never_set_ra_even_with_upstreams():
    for engine in (_engine(BLUE), _engine(BLUE, upstream=True)):
        r = _ask(engine, f"blue.default.svc.{Z}.")
        assert r.flags & dns.flags.AA and not r.flags & dns.flags.RA
        r = _ask(engine, f"nope.default.svc.{Z}.")
        assert r.rcode() == dns.rcode.NXDOMAIN and not r.flags & dns.flags.RA


@pytest.mark.parametrize("rdtype", ["AXFR", "IXFR"])
def test_zone_transfers_are_refused(rdtype):
    assert _ask(_engine(BLUE), f"{Z}.", rdtype, tcp=True).rcode() == dns.rcode.REFUSED


def test_truncation_drops_additional_records_first():
    """6 SRV + 6 additional A over UDP without EDNS: the SRVs fit alone, so no TC."""
    eps = tuple(Endpoint((f"10.1.0.{i}",), hostname=f"backend-host-number-{i}") for i in range(6))
    sl = EndpointSlice("default", "h-1", "h", endpoints=eps, ports=(EndpointPort(80, name="http"),))
    engine = _engine(HDLS, sl)
    name = f"_http._tcp.h.default.svc.{Z}."
    wire = dns.message.make_query(name, "SRV", use_edns=False).to_wire()
    full, _, _ = engine.respond(wire, ("127.0.0.1", 5), True)
    assert len(full) > 512 and len(dns.message.from_wire(full).additional) == 6
    r = _ask(engine, name, "SRV", use_edns=False)
    assert not r.flags & dns.flags.TC
    assert len(r.answer[0]) == 6 and not r.additional
    big = EndpointSlice("default", "h-1", "h", ports=(EndpointPort(80, name="http"),),
                        endpoints=tuple(Endpoint((f"10.1.1.{i}",)) for i in range(60)))  # fmt: skip
    r = _ask(_engine(HDLS, big), f"h.default.svc.{Z}.", use_edns=False)
    assert r.flags & dns.flags.TC and not r.answer  # the answer itself does not fit


def test_out_of_zone_with_and_without_upstreams():
    assert _ask(_engine(BLUE), "example.com.").rcode() == dns.rcode.REFUSED
    action = _ask(_engine(BLUE, upstream=True), "example.com.")
    assert isinstance(action, Upstream) and action.kind == FORWARD
    assert action.names == ("example.com",) and action.limit == 512


def _upstream_reply(name: str, qtype: int, rcode: int = 0, ip: str = "192.0.2.7"):
    reply = DNSRecord.question(name, QTYPE[qtype]).reply()
    reply.header.rcode = rcode
    if rcode == 0:
        reply.add_answer(RR(name, QTYPE.A, rdata=A(ip), ttl=60))
    return reply


def test_external_name_is_chased_through_the_upstream():
    engine = _engine(EXT, upstream=True)
    action = _ask(engine, f"external.testns.svc.{Z}.")
    assert action.kind == CHASE and action.names == ("ext.interwebs.test",)
    out = dns.message.from_wire(perform(action, lambda n, t: _upstream_reply(n, t)))
    assert [(rr.rdtype, rr[0].to_text()) for rr in out.answer] == [
        (dns.rdatatype.CNAME, "ext.interwebs.test."),
        (dns.rdatatype.A, "192.0.2.7"),
    ]
    assert out.question[0].name.to_text() == f"external.testns.svc.{Z}."
    failed = dns.message.from_wire(perform(action, lambda n, t: None))
    assert failed.rcode() == dns.rcode.NOERROR and len(failed.answer) == 1  # the CNAME alone
    assert _ask(_engine(EXT), f"external.testns.svc.{Z}.").rcode() == dns.rcode.NOERROR


def test_cache_survives_unrelated_changes():
    state = _state(BLUE, HDLS, SLICE)
    tracker = state.tracker()
    snap = state.snapshot()
    engine = Engine(ZoneConfig())
    catalog = build_catalog(snap, ZoneConfig(), serial=1)
    engine.install(catalog)
    _ask(engine, f"h.default.svc.{Z}.")
    _ask(engine, f"blue.default.svc.{Z}.")
    state.apply([dataclasses.replace(BLUE, cluster_ips=("10.0.0.9",))])
    d = delta(catalog, snap, state.snapshot(), tracker.pop(), serial=2)
    engine.install(catalog.apply(d), d.changed)
    assert [k for k in engine._view.cache if k.startswith(b"\x01h")]  # still cached
    assert _ask(engine, f"blue.default.svc.{Z}.").answer[0][0].to_text() == "10.0.0.9"


def test_cache_is_bounded_in_bytes():
    engine = _engine(BLUE, cache_bytes=20_000)
    for i in range(500):
        _ask(engine, f"nope{i}.default.svc.{Z}.")
    used = sum(entry_size(k, c) for k, c in engine._view.cache.items())
    assert used == engine.cache_used <= 20_000
    assert 20 < len(engine._view.cache) < 60
    assert b"\x07nope499" in b"".join(engine._view.cache)  # the newest stay


def test_autopath_walks_the_search_list_on_the_server():
    pod = Pod("default", "client", pod_ips=("10.244.0.7",))
    other = Service("other", "thesvc", cluster_ips=("10.0.0.7",))
    config = ZoneConfig(pods="verified")
    engine = _engine(BLUE, other, pod, config=config, autopath=Autopath(("lan",)))
    r = _ask(engine, f"thesvc.other.default.svc.{Z}.", client="10.244.0.7")
    assert r.rcode() == dns.rcode.NOERROR
    assert [rr.to_text().split()[-1] for rr in r.answer] == [f"thesvc.other.svc.{Z}.", "10.0.0.7"]
    assert r.question[0].name.to_text() == f"thesvc.other.default.svc.{Z}."
    r = _ask(engine, f"thesvc.other.default.svc.{Z}.", client="10.9.9.9")  # not a pod
    assert r.rcode() == dns.rcode.NXDOMAIN
    r = _ask(engine, f"thesvc.other.default.svc.{Z}.", client="10.244.0.7")  # nothing shared
    assert r.rcode() == dns.rcode.NOERROR
    r = _ask(engine, f"blue.default.svc.{Z}.", client="10.244.0.7")
    assert [rr.rdtype for rr in r.answer] == [1]


def test_autopath_upstream_candidates_are_an_action():
    pod = Pod("default", "client", pod_ips=("10.244.0.7",))
    config = ZoneConfig(pods="verified")
    engine = _engine(pod, config=config, autopath=Autopath(("lan",)), upstream=True)
    action = _ask(engine, f"www.example.test.default.svc.{Z}.", client="10.244.0.7")
    assert action.kind == SEARCH and action.names == ("www.example.test.lan", "www.example.test")
    asked = []

    def lookup(name, qtype):
        asked.append(name)
        return _upstream_reply(name, qtype, rcode=3 if name.endswith(".lan") else 0)

    out = dns.message.from_wire(perform(action, lookup))
    assert asked == ["www.example.test.lan", "www.example.test"]
    assert [rr[0].to_text() for rr in out.answer] == ["www.example.test.", "192.0.2.7"]
    none = dns.message.from_wire(perform(action, lambda n, t: None))
    assert none.rcode() == dns.rcode.NXDOMAIN  # the fallback: the name as asked


def test_fast_and_slow_paths_agree():
    """The hand parser and the dnslib fallback (taken for EDNS options) answer alike."""
    engine = _engine(BLUE, HDLS, SLICE)
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
        fast, slow = (
            _ask(engine, name, rdtype, use_edns=0, options=options) for options in ([], [cookie])
        )
        assert (fast.rcode(), fast.flags) == (slow.rcode(), slow.flags), name
        assert fast.question == slow.question and fast.answer == slow.answer, name
        assert (fast.authority, fast.additional) == (slow.authority, slow.additional), name
        assert fast.question[0].name.to_text() == name  # the asked case comes back


def test_tcp_framing_and_deadlines():
    conn = Connection(("127.0.0.1", 5), now=0.0)
    q = b"\x12\x34" + b"x" * 30
    framed = len(q).to_bytes(2, "big") + q
    assert conn.feed(framed + framed[:5], 1.0) == [q]  # one whole, one begun
    assert conn.started == 1.0 and not conn.idle
    assert conn.feed(b"", 2.0) == [] and conn.started == 1.0  # trickling: the timer stays
    assert conn.expired(4.5)  # the whole message is late, whatever trickled in
    assert conn.feed(framed[5:] + framed, 1.5) == [q, q] and conn.started is None
    assert conn.idle and not conn.expired(5.0) and conn.expired(12.0)
    assert conn.eviction_rank()[0] == 0
    busy = Connection(("127.0.0.1", 6), now=0.0)
    busy.feed(framed[:3], 0.5)
    assert busy.eviction_rank() == (1, 0.5)
