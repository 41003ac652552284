"""The I/O half of forwarding: asking upstream servers, with a cache of their replies.

Like CoreDNS's `forward` + `cache` plugins: upstreams are tried in order, a truncated
upstream answer is retried over TCP, positive answers live for their smallest TTL and
negative ones for the SOA minimum (RFC 2308), both capped. Remaining TTLs are counted
down in what the cache hands out. What to ask and how to answer is decided elsewhere
(upstream.py); without upstreams the engine answers REFUSED: never an open resolver.
"""

from __future__ import annotations

import logging
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass

from dnslib import QTYPE, DNSHeader, DNSQuestion, DNSRecord

from netplane.dns.answer import NXDOMAIN, SERVFAIL
from netplane.dns.wire import label

log = logging.getLogger(__name__)
MAX_TTL = 3600
MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class _Entry:
    expires: float
    stored: float
    reply: DNSRecord


class Forwarder:
    def __init__(self, upstreams: list[tuple[str, int]], timeout: float = 2.0) -> None:
        self.upstreams = upstreams
        self.timeout = timeout
        self._cache: dict[tuple[str, int, int], _Entry] = {}
        self._lock = threading.Lock()
        self.hits = {"success": 0, "denial": 0}
        self.misses = 0

    def lookup(self, qname: str, qtype: int, qclass: int = 1) -> DNSRecord | None:
        """The upstream's reply, from the cache while its TTL lasts; None on failure."""
        key = (qname, qtype, qclass)
        now = time.monotonic()
        with self._lock:
            entry = self._cache.get(key)
        if entry is not None and entry.expires > now:
            kind = "denial" if entry.reply.header.rcode == NXDOMAIN or not entry.reply.rr else ""
            self.hits[kind or "success"] += 1
            return _aged(entry.reply, int(now - entry.stored))
        self.misses += 1
        reply = self._ask(qname, qtype, qclass)
        ttl = _cache_ttl(reply) if reply is not None else 0
        if ttl > 0:
            with self._lock:
                if len(self._cache) >= MAX_ENTRIES:
                    self._cache.clear()
                self._cache[key] = _Entry(now + ttl, now, reply)
        return reply

    def _ask(self, qname: str, qtype: int, qclass: int) -> DNSRecord | None:
        request = DNSRecord(
            DNSHeader(id=random.getrandbits(16), rd=1),
            q=DNSQuestion(label(qname), qtype, qclass),
        )
        wire = request.pack()
        for host, port in self.upstreams:
            try:
                data = exchange(wire, host, port, self.timeout, tcp=False)
                reply = DNSRecord.parse(data)
                if reply.header.tc:
                    reply = DNSRecord.parse(exchange(wire, host, port, self.timeout, tcp=True))
            except (OSError, Exception) as e:  # a bad upstream must not stop the next one
                log.debug("upstream %s:%d failed for %s: %s", host, port, qname, e)
                continue
            if reply.header.id == request.header.id and reply.header.rcode != SERVFAIL:
                return reply
        return None


def exchange(wire: bytes, host: str, port: int, timeout: float, tcp: bool) -> bytes:
    """One query's reply over UDP (connected: a refusal is an error at once, not a timeout)
    or TCP (length-framed); OSError when there is none."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
    with socket.socket(family, kind) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        if not tcp:
            s.send(wire)
            return s.recv(65535)
        s.sendall(struct.pack("!H", len(wire)) + wire)
        head = _recv_exact(s, 2)
        return _recv_exact(s, struct.unpack("!H", head)[0])


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed early")
        buf += chunk
    return buf


def _cache_ttl(reply: DNSRecord) -> int:
    if reply.header.rcode not in (0, NXDOMAIN):
        return 0
    if reply.rr:
        return min(MAX_TTL, *(r.ttl for r in reply.rr))
    soa = [r for r in reply.auth if r.rtype == QTYPE.SOA]
    return min(MAX_TTL, soa[0].ttl, soa[0].rdata.times[-1]) if soa else 0


def _aged(reply: DNSRecord, age: int) -> DNSRecord:
    copy = DNSRecord.parse(reply.pack())
    for r in (*copy.rr, *copy.auth, *copy.ar):
        if r.rtype != QTYPE.OPT:
            r.ttl = max(0, r.ttl - age)
    return copy
