"""Coverage-guided fuzzing of the answering function (atheris + libFuzzer).

    python tests/dns/fuzz_engine.py [libFuzzer options] [corpus dirs]

Every input goes to `Engine.respond` as one UDP or TCP request from a pod (autopath on,
upstreams on); actions are performed against a canned upstream. `check` fails on any
reply that does not parse, does not answer the request's ID and question, or exceeds
what the transport carries. The suite replays the kept corpus (fuzz_corpus/) and fuzzes
for a bounded time (test_fuzz.py).
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
from dnslib import QTYPE, RR, A, DNSHeader, DNSQuestion, DNSRecord


def build():
    from netplane.dns.autopath import Autopath
    from netplane.dns.catalog import build_catalog
    from netplane.dns.engine import Engine
    from netplane.dns.records import ZoneConfig
    from netplane.model import parse_object
    from netplane.state import ClusterState

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import lab_objects  # the lab the server tests use

    state = ClusterState()
    state.apply([o for doc in lab_objects() for o in parse_object(doc, strict=False)])
    state.mark_synced()
    config = ZoneConfig(pods="verified")
    engine = Engine(config, upstream=True, autopath=Autopath(("lan",)), cache_bytes=1 << 20)
    engine.install(build_catalog(state.snapshot(), config, 1))
    return engine


def _upstream(name: str, qtype: int):
    """A canned upstream: NXDOMAIN for nx* and the .lan search domain, a failure for
    fail*, else an A record."""
    from netplane.dns.wire import label

    if name.startswith("fail"):
        return None
    reply = DNSRecord(DNSHeader(qr=1, rd=1, ra=1), q=DNSQuestion(label(name), qtype))
    if name.startswith("nx") or name.endswith(".lan"):
        reply.header.rcode = 3
    else:
        reply.add_answer(RR(label(name), QTYPE.A, rdata=A("192.0.2.1"), ttl=60))
    return reply


def check(engine, data: bytes) -> None:
    """Answer `data` and fail (AssertionError) on a reply a client could not use."""
    from netplane.dns.upstream import Upstream, perform

    tcp = bool(data) and data[-1] & 1 == 1
    client = "10.244.0.7" if len(data) % 3 else "127.0.0.1"  # a pod (autopath) or not
    out, _, _ = engine.respond(data, (client, 5353), tcp)
    if isinstance(out, Upstream):
        name, rdtype, rdclass = _asked(data)
        assert out.query.question == name + struct.pack("!HH", rdtype, rdclass)
        out = perform(out, _upstream)
    if out is None:  # dropped: only what is too short to answer, or a response
        assert len(data) < 12 or data[2] & 0x80, data
        return
    assert isinstance(out, bytes) and len(out) >= 12
    assert out[:2] == data[:2] and out[2] & 0x80  # our ID, QR set
    try:
        reply = dns.message.from_wire(out)
    except dns.exception.DNSException as e:
        raise AssertionError(f"unparsable reply {out!r} to {data!r}: {e}") from e
    limit = 65535 if tcp else 512
    if reply.edns >= 0:
        limit = 65535 if tcp else max(512, _request_payload(data))
    assert len(out) <= limit, (len(out), limit)
    if reply.question:
        name, rdtype, rdclass = _asked(data)
        answered = reply.question[0]
        assert answered.name.to_wire() == name, (answered.name, name)  # the client's own case
        assert (answered.rdtype, answered.rdclass) == (rdtype, rdclass)
        for rrset in reply.answer:  # answers are for the question or its CNAME chain
            assert rrset.name == answered.name or any(
                rr.target == rrset.name for r in reply.answer for rr in r if hasattr(rr, "target")
            ), (answered.name, rrset.name)


def _asked(data: bytes) -> tuple[bytes, int, int]:
    """The request's question as dnspython reads it, else as dnslib does (more lenient
    with the other sections, as the engine's fallback parser is)."""
    try:
        q = dns.message.from_wire(data, ignore_trailing=True).question[0]
        return q.name.to_wire(), q.rdtype, q.rdclass
    except (dns.exception.DNSException, IndexError, ValueError):
        q = DNSRecord.parse(data).questions[0]
        labels = list(q.qname.label)
        return b"".join(bytes([len(x)]) + x for x in labels) + b"\0", q.qtype, q.qclass


def _request_payload(data: bytes) -> int:
    try:
        request = dns.message.from_wire(data, ignore_trailing=True)
    except dns.exception.DNSException:
        return 512
    return request.payload if request.edns >= 0 else 512


def main() -> None:
    import atheris

    with atheris.instrument_imports(include=["netplane.dns"]):
        import netplane.dns.answer
        import netplane.dns.autopath
        import netplane.dns.catalog
        import netplane.dns.engine
        import netplane.dns.records
        import netplane.dns.upstream
        import netplane.dns.wire  # noqa: F401
    engine = build()
    atheris.Setup(sys.argv, lambda data: check(engine, data))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
