"""One question -> one answer, from an `Index`: pure, no I/O, no wire format.

Decides NXDOMAIN versus NODATA, chases in-zone CNAMEs, adds SRV/NS targets to the
additional section and synthesises insecure pod names. Returns None for names the zone
does not own, which the server forwards (or refuses).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from netplane.dns.records import AAAA, CNAME, NS, SOA, SRV, A, Index, Record

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
ANY = 255
RRs = tuple[tuple[str, Record], ...]


@dataclass(frozen=True, slots=True)
class Answer:
    rcode: int
    answer: RRs = ()
    authority: RRs = ()
    additional: RRs = ()
    depends: frozenset[str] = frozenset()  # names whose change invalidates this answer


def _insecure_pod(zone: str, qname: str) -> tuple[Record, ...] | None:
    parts = qname[: -len(zone) - 1].split(".")
    if len(parts) == 2 and parts[1] == "pod":
        return ()  # <ns>.pod.<zone> exists
    if len(parts) != 3 or parts[2] != "pod":
        return None
    dashed = parts[0]
    text = dashed.replace("-", ".") if dashed.count("-") == 3 else dashed.replace("-", ":")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return (Record(AAAA if ip.version == 6 else A, str(ip)),)


def _lookup(index: Index, qname: str) -> tuple[Record, ...] | None:
    records = index.names.get(qname)
    zone = index.config.zone
    if records is None and index.config.pods == "insecure" and qname.endswith(f".pod.{zone}"):
        records = _insecure_pod(zone, qname)
    return records


def in_zone(index: Index, qname: str) -> bool:
    zone = index.config.zone
    return qname == zone or qname.endswith("." + zone)


def _negative(index: Index, rcode: int, depends: set[str]) -> Answer:
    zone = index.config.zone
    soa = tuple((zone, r) for r in index.names.get(zone, ()) if r.rtype == SOA)
    return Answer(rcode, authority=soa, depends=frozenset({*depends, zone}))


def _addresses(index: Index, name: str, depends: set[str]) -> RRs:
    depends.add(name)
    return tuple((name, r) for r in index.names.get(name, ()) if r.rtype in (A, AAAA))


def resolve(index: Index, qname: str, qtype: int) -> Answer | None:
    """The authoritative answer for (qname, qtype), or None when the name is not ours."""
    records = _lookup(index, qname)
    depends = {qname}
    if records is None:
        return _negative(index, NXDOMAIN, depends) if in_zone(index, qname) else None
    answer: list[tuple[str, Record]] = []
    name = qname
    for _ in range(8):  # follow in-zone CNAMEs, bounded against loops
        cname = next((r for r in records if r.rtype == CNAME), None)
        if cname is None or qtype in (CNAME, ANY):
            break
        answer.append((name, cname))
        name = cname.value
        depends.add(name)
        records = _lookup(index, name) if in_zone(index, name) else None
        if records is None:
            return Answer(NOERROR, tuple(answer), depends=frozenset(depends))
    matching = [(name, r) for r in records if qtype == ANY or r.rtype == qtype]
    if not matching and not answer:
        return _negative(index, NOERROR, depends)
    answer += matching
    additional: list[tuple[str, Record]] = []
    for _, r in matching:
        if r.rtype == SRV:
            additional += _addresses(index, r.value[3], depends)
        elif r.rtype == NS:
            additional += _addresses(index, r.value, depends)
    return Answer(NOERROR, tuple(answer), (), tuple(dict.fromkeys(additional)), frozenset(depends))
