"""Answers that need the upstream servers, as values: the seam between answering and I/O.

The engine never talks to the network. When an answer needs the upstreams it returns an
`Upstream` action saying which names to ask, in which order, and what to answer when none
of them gives anything. The server loop performs it (`perform`, from a thread pool, with
the forwarder's cache) and `finish` turns each upstream reply into the response bytes.
Three kinds, one shape:
- FORWARD: a name outside the zone, asked as it is; the reply is relayed (SERVFAIL when
  every upstream failed).
- SEARCH: autopath's out-of-zone candidates; the first with an answer is returned behind a
  CNAME from the asked name, else the fallback (the name answered as asked).
- CHASE: an ExternalName (or another in-zone CNAME) pointing out of the zone; the target's
  records follow our CNAME chain, else the fallback (the chain alone).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from dnslib import CNAME as CNAME_RD
from dnslib import QTYPE, RR, DNSHeader, DNSLabel, DNSQuestion, DNSRecord

from netplane.dns.answer import NOERROR, SERVFAIL
from netplane.dns.wire import AA, OPT_RR, QR, RA, RD, TC, Query, label, labels

FORWARD, SEARCH, CHASE = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Upstream:
    kind: int
    query: Query
    limit: int  # the largest response the client takes on this transport
    names: tuple[str, ...]  # asked in this order
    ttl: int = 5  # of the CNAME a search adds
    fallback: bytes = b""  # SEARCH / CHASE: the response when no name answers (for CHASE,
    # our own answer: the CNAME chain the upstream's records are appended to)


Lookup = Callable[[str, int], "DNSRecord | None"]


def perform(action: Upstream, lookup: Lookup) -> bytes:
    """Ask the upstreams (through `lookup`, which may block) and build the response."""
    for name in action.names:
        out = finish(action, name, lookup(name, action.query.qtype))
        if out is not None:
            return out
    return action.fallback or respond(action.query, None, action.limit)


def finish(action: Upstream, name: str, reply: DNSRecord | None) -> bytes | None:
    """The response for the upstream's `reply` to `name`; None: try the next name."""
    query = action.query
    if action.kind == FORWARD:
        return respond(query, reply, action.limit)
    if reply is None:
        return None
    if action.kind == SEARCH:
        if reply.header.rcode != NOERROR or not reply.rr:
            return None  # autopath moves on, as the client's own search would
        cname = RR(_qname(query), QTYPE.CNAME, ttl=action.ttl, rdata=CNAME_RD(label(name)))
        found = DNSRecord(DNSHeader(rcode=NOERROR), q=reply.q)
        found.rr, found.auth, found.ar = [cname, *reply.rr], reply.auth, reply.ar
        return respond(query, found, action.limit)
    # CHASE: our chain, then whatever the upstream says about its target
    chained = DNSRecord(DNSHeader(rcode=reply.header.rcode), q=reply.q)
    chained.rr = [*DNSRecord.parse(action.fallback).rr, *reply.rr]
    chained.auth, chained.ar = ([], reply.ar) if reply.rr else (reply.auth, reply.ar)
    return respond(query, chained, action.limit, authoritative=True)


def respond(
    query: Query, reply: DNSRecord | None, limit: int, authoritative: bool = False
) -> bytes:
    """`reply`'s sections under the client's own ID, flags and question (SERVFAIL if None).

    Too large for `limit`: the additional section goes first; TC only when the answer
    itself does not fit (RFC 2181 section 9)."""
    rcode = SERVFAIL if reply is None else reply.header.rcode
    flags = QR | RA | (query.flags & RD) | (AA if authoritative else 0) | rcode
    sections = (
        ([], [], [])
        if reply is None
        else (reply.rr, reply.auth, [r for r in reply.ar if r.rtype != QTYPE.OPT])
    )
    opt = OPT_RR if query.edns_size else b""
    for additional in (sections[2], []):
        body = DNSRecord(DNSHeader(id=0), q=DNSQuestion(_qname(query), query.qtype))
        body.rr, body.auth, body.ar = list(sections[0]), list(sections[1]), list(additional)
        tail = body.pack()[12 + len(query.question) :] + opt
        counts = (1, len(body.rr), len(body.auth), len(body.ar) + (1 if opt else 0))
        out = query.id + struct.pack("!HHHHH", flags, *counts) + query.question + tail
        if len(out) <= limit:
            return out
    head = struct.pack("!HHHHH", flags | TC, 1, 0, 0, 1 if opt else 0)
    return query.id + head + query.question + opt


def _qname(query: Query) -> DNSLabel:
    """The question's name from its wire bytes (lower-cased: a str would be re-encoded by
    dnslib as IDNA/UTF-8 and no longer have the length of the client's question)."""
    return DNSLabel(labels(query.question[:-4].lower()))
