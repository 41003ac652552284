"""`netplane dns lookup`: a stub resolver's search walk, made visible."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from dnslib import QTYPE, RCODE, DNSRecord

from netplane.dns.search import search_names


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    rcode: str
    answers: tuple[str, ...]

    @property
    def found(self) -> bool:
        return self.rcode == "NOERROR" and bool(self.answers)

    def describe(self) -> str:
        result = "; ".join(self.answers) if self.answers else "no records"
        return f"{self.name:<50} {self.rcode:<9} {result}"


def walk(
    name: str, searches: tuple[str, ...], ndots: int, server: tuple[str, int], qtype: str,
    timeout: float,
) -> Iterator[Step]:  # fmt: skip
    """Query each candidate in glibc's order until one has records (NXDOMAIN and NODATA
    move on to the next candidate; a server failure stops, as in glibc's res_search)."""
    host, port = server
    for candidate in search_names(name, searches, ndots):
        q = DNSRecord.question(candidate, qtype)
        try:
            reply = DNSRecord.parse(q.send(host, port, timeout=timeout))
            if reply.header.tc:
                reply = DNSRecord.parse(q.send(host, port, tcp=True, timeout=timeout))
        except OSError as e:
            yield Step(candidate, f"error: {e}", ())
            return
        answers = tuple(f"{QTYPE[r.rtype]} {r.rdata}" for r in reply.rr)
        step = Step(candidate, RCODE[reply.header.rcode], answers)
        yield step
        if step.found or step.rcode not in ("NOERROR", "NXDOMAIN"):
            return
