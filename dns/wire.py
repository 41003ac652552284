"""The wire format: answers compiled once into bytes, queries read by hand.

A compiled answer is everything after the question, with owner names compressed against
the question at offset 12. Since lower-casing a name never changes its length, the same
bytes serve every spelling of the name: a response is the request's ID, a precomputed
header, the request's own question bytes (so the client's case comes back) and the tail.
dnslib builds the records (once per name) and parses anything unusual.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Any

from dnslib import AAAA as AAAA_RD
from dnslib import CNAME as CNAME_RD
from dnslib import NS as NS_RD
from dnslib import PTR as PTR_RD
from dnslib import RR, DNSLabel, DNSRecord
from dnslib import SOA as SOA_RD
from dnslib import SRV as SRV_RD
from dnslib import TXT as TXT_RD
from dnslib import A as A_RD

from netplane.dns.answer import FORMERR, NOTIMP, REFUSED, Answer
from netplane.dns.records import AAAA, CNAME, NS, PTR, SOA, SRV, TXT, A, Record

EDNS_PAYLOAD = 1232  # what we advertise (the DNS flag day 2020 value)
OPT_RR = b"\x00\x00\x29" + struct.pack("!H", EDNS_PAYLOAD) + b"\x00" * 6
QR, AA, TC, RD, RA = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080

_RDATA = {
    A: A_RD,
    AAAA: AAAA_RD,
    CNAME: CNAME_RD,
    PTR: PTR_RD,
    NS: NS_RD,
    TXT: TXT_RD,
    SRV: lambda v: SRV_RD(*v),
    SOA: lambda v: SOA_RD(v[0], v[1], v[2:]),
}


@dataclass(frozen=True, slots=True)
class Query:
    """The parts of a request a response needs."""

    id: bytes  # 2 bytes, as received
    flags: int  # the request's flags word
    question: bytes  # qname wire + qtype + qclass, as received (client's case)
    qname: str  # lower-case, no trailing dot
    qtype: int
    qclass: int
    edns_size: int  # 0 when the request had no OPT record


@dataclass(frozen=True, slots=True)
class Compiled:
    """A response minus ID and question: what the answer cache holds.

    Kept small (a cache entry is mostly this): the header variants are shared between
    all answers with the same flags and counts, and the EDNS form appends OPT at send time.
    """

    heads: tuple[bytes, ...]  # flags+counts for RD 0/1 without EDNS, then with (arcount+1)
    tail: bytes  # answer, authority and additional sections (names compressed)
    cut: int  # len(tail) without the additional section (for truncation)
    depends: tuple[str, ...]  # names whose change invalidates this answer
    rcode: int
    chase: str = ""  # an out-of-zone CNAME target the upstreams may resolve further


_HEADS: dict[tuple[bytes, ...], tuple[bytes, ...]] = {}


def rr(name: str, record: Record, ttl: int) -> RR:
    return RR(name, record.rtype, ttl=ttl, rdata=_RDATA[record.rtype](record.value))


def compile_answer(qname_wire: bytes, qtype: int, answer: Answer, ttl: int) -> Compiled:
    """Pack an answer once and keep the bytes after the question.

    Our own answers are authoritative (AA) and never claim recursion (RA clear), as
    CoreDNS's `kubernetes` plugin answers; only relayed upstream answers set RA."""
    packer = _Packer(qname_wire)
    for name, record in answer.answer:
        packer.record(name, record, ttl)
    for name, record in answer.authority:
        packer.record(name, record, ttl)
    cut = len(packer.out)
    for name, record in answer.additional:
        packer.record(name, record, ttl)
    counts = (1, len(answer.answer), len(answer.authority), len(answer.additional))
    depends = tuple(sorted(answer.depends))
    return Compiled(_heads(QR | AA | answer.rcode, counts), bytes(packer.out), cut, depends,
                    answer.rcode, answer.chase)  # fmt: skip


class _Packer:
    """Records after a question at offset 12, names compressed (RFC 1035 4.1.4).

    By hand rather than with dnslib: a cache miss costs ~5x less. SRV targets are written
    uncompressed (RFC 2782), as dnslib and CoreDNS do."""

    def __init__(self, qname_wire: bytes) -> None:
        self.out = bytearray()
        self.base = 12 + len(qname_wire) + 4
        self.names: dict[str, int] = {}
        parts = [part.lower().decode("latin-1") for part in labels(qname_wire)]
        offset = 12
        for i, part in enumerate(parts):
            self.names[".".join(parts[i:])] = offset
            offset += 1 + len(part)

    def name(self, name: str, compress: bool = True) -> None:
        labels = name.split(".") if name else []
        out = self.out
        for i in range(len(labels)):
            suffix = ".".join(labels[i:])
            offset = self.names.get(suffix)
            if offset is not None and compress:
                out += struct.pack("!H", 0xC000 | offset)
                return
            here = self.base + len(out)
            if here < 0x4000:
                self.names.setdefault(suffix, here)
            label = labels[i].encode("latin-1")
            if not 0 < len(label) < 64:
                raise ValueError(f"{name!r}: bad label length")
            out.append(len(label))
            out += label
        out.append(0)

    def record(self, owner: str, record: Record, ttl: int) -> None:
        self.name(owner)
        out = self.out
        out += struct.pack("!HHIH", record.rtype, 1, ttl, 0)
        start = len(out)
        value: Any = record.value  # its type follows rtype (see Record)
        rtype = record.rtype
        if rtype == A:
            out += socket.inet_pton(socket.AF_INET, value)
        elif rtype == AAAA:
            out += socket.inet_pton(socket.AF_INET6, value)
        elif rtype in (CNAME, PTR, NS):
            self.name(value)
        elif rtype == SRV:
            out += struct.pack("!HHH", *value[:3])
            self.name(value[3], compress=False)
        elif rtype == SOA:
            self.name(value[0])
            self.name(value[1])
            out += struct.pack("!IIIII", *value[2:])
        elif rtype == TXT:
            text = value.encode()
            out.append(len(text))
            out += text
        else:
            raise ValueError(f"cannot pack record type {rtype}")
        struct.pack_into("!H", out, start - 2, len(out) - start)


def _heads(flags: int, counts: tuple[int, int, int, int]) -> tuple[bytes, ...]:
    qd, an, ns, ar = counts
    heads = tuple(
        struct.pack("!HHHHH", flags | (RD if rd else 0), qd, an, ns, ar + edns)
        for edns in (0, 1)
        for rd in (0, 1)
    )
    return _HEADS.setdefault(heads, heads)


def bare(rcode: int, aa: bool = False) -> Compiled:
    """A response with no records (SERVFAIL, REFUSED, NOTIMP...)."""
    return Compiled(_heads(QR | (AA if aa else 0) | rcode, (1, 0, 0, 0)), b"", 0, (), rcode)


def labels(qname_wire: bytes) -> list[bytes]:
    labels, pos = [], 0
    while qname_wire[pos]:
        n = qname_wire[pos]
        labels.append(qname_wire[pos + 1 : pos + 1 + n])
        pos += n + 1
    return labels


def assemble(
    query_id: bytes, flags: int, question: bytes, c: Compiled, edns: int, limit: int
) -> bytes:
    """The response bytes; when larger than `limit`, without the additional section, and
    truncated (TC, no records) only when the answer itself does not fit (RFC 2181 s. 9)."""
    if edns:
        out = query_id + c.heads[3 if flags & RD else 2] + question + c.tail + OPT_RR
    else:
        out = query_id + c.heads[1 if flags & RD else 0] + question + c.tail
    if len(out) <= limit:
        return out
    head = c.heads[(2 if edns else 0) + (1 if flags & RD else 0)]
    word, qd, an, ns, _ = struct.unpack("!HHHHH", head)
    opt = OPT_RR if edns else b""
    arcount = 1 if edns else 0
    out = query_id + struct.pack("!HHHHH", word, qd, an, ns, arcount) + question + c.tail[: c.cut]
    if len(out) + len(opt) <= limit:
        return out + opt
    return query_id + struct.pack("!HHHHH", word | TC, qd, 0, 0, arcount) + question + opt


def parse_question(data: bytes, qend: int) -> str | None:
    """Walk the labels of the question name by hand; None when it is not a plain name."""
    pos, labels = 12, []
    while True:
        n = data[pos]
        if n == 0:
            break
        if n > 63 or pos + 1 + n >= qend or 46 in data[pos + 1 : pos + 1 + n]:
            return None  # a "." inside a label: the slow path refuses it
        labels.append(data[pos + 1 : pos + 1 + n])
        pos += n + 1
    if pos + 1 != qend or qend - 12 > 255:
        return None
    return b".".join(labels).lower().decode("latin-1")


def error_response(data: bytes, rcode: int) -> bytes:
    """A header-only error reply for a request whose question cannot be trusted."""
    flags = QR | (struct.unpack("!H", data[2:4])[0] & (RD | 0x7800)) | rcode
    return data[:2] + struct.pack("!HHHHH", flags, 0, 0, 0, 0)


def parse_slow(data: bytes) -> Query | int | None:
    """Anything the fast path declined: a `Query`, an rcode to reply with, or None to drop."""
    if len(data) < 12 or data[2] & 0x80:
        return None  # too short to answer, or a response: never answer (reflection loops)
    try:
        msg = DNSRecord.parse(data)
    except Exception:  # dnslib raises several types on garbage; all mean FORMERR
        return FORMERR
    if msg.header.opcode != 0:
        return NOTIMP
    if len(msg.questions) != 1:
        return FORMERR
    q = msg.questions[0]
    labels = list(q.qname.label)
    if any(len(label) > 63 for label in labels) or sum(len(x) + 1 for x in labels) + 1 > 255:
        return FORMERR
    if any(b"." in label for label in labels):
        return REFUSED  # legal, but no cluster name has one, and names are text inside
    qname_wire = b"".join(bytes([len(x)]) + x for x in labels) + b"\x00"
    opt = [r for r in msg.ar if r.rtype == 41]
    edns = max(512, opt[0].rclass) if opt else 0
    return Query(
        id=data[:2],
        flags=msg.header.bitmap,
        question=qname_wire + struct.pack("!HH", q.qtype, q.qclass),
        qname=b".".join(labels).lower().decode("latin-1"),
        qtype=q.qtype,
        qclass=q.qclass,
        edns_size=edns,
    )


def label(name: str) -> DNSLabel:
    """A name we hold as text (latin-1 decoded wire labels) back as dnslib's labels."""
    return DNSLabel([part.encode("latin-1") for part in name.split(".")] if name else [])
