"""One question -> one answer, from a `Catalog`: pure, no I/O, no wire format.

Decides NXDOMAIN versus NODATA, chases in-zone CNAMEs (and says which out-of-zone target
is left for the upstream), adds SRV/NS targets to the additional section. Answers for the
reverse zones of the service (and pod) CIDRs authoritatively. Returns None for names we
do not own, which the server forwards (or refuses).
"""

from __future__ import annotations

from dataclasses import dataclass

from netplane.dns.catalog import Catalog
from netplane.dns.records import AAAA, CNAME, NS, SRV, A, Record, soa

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
IXFR, AXFR, ANY = 251, 252, 255
RRs = tuple[tuple[str, Record], ...]


@dataclass(frozen=True, slots=True)
class Answer:
    rcode: int
    answer: RRs = ()
    authority: RRs = ()
    additional: RRs = ()
    depends: frozenset[str] = frozenset()  # names whose change invalidates this answer
    chase: str = ""  # an out-of-zone CNAME target the upstream may resolve further


def in_zone(catalog: Catalog, qname: str) -> bool:
    zone = catalog.config.zone
    return qname == zone or qname.endswith("." + zone)


def _negative(catalog: Catalog, rcode: int, depends: set[str], zone: str = "") -> Answer:
    """NXDOMAIN/NODATA with the zone's SOA. The SOA's serial is not a dependency: a
    cached negative answer may carry the serial it was made with for its TTL."""
    zone = zone or catalog.config.zone
    authority = ((zone, soa(zone, catalog.config.ttl, catalog.serial)),)
    return Answer(rcode, authority=authority, depends=frozenset(depends))


def _addresses(catalog: Catalog, name: str, depends: set[str]) -> RRs:
    depends.add(name)
    return tuple((name, r) for r in catalog.get(name) or () if r.rtype in (A, AAAA))


def resolve(catalog: Catalog, qname: str, qtype: int) -> Answer | None:
    """The authoritative answer for (qname, qtype), or None when the name is not ours."""
    records = catalog.get(qname)
    depends = {qname}
    if records is None:
        if in_zone(catalog, qname):
            return _negative(catalog, NXDOMAIN, depends)
        reverse = catalog.reverse_authority(qname)
        if reverse is None:
            return None
        zone, whole_address = reverse
        return _negative(catalog, NXDOMAIN if whole_address else NOERROR, depends, zone)
    answer: list[tuple[str, Record]] = []
    name = qname
    for _ in range(8):  # follow in-zone CNAMEs, bounded against loops
        cname = next((r for r in records if r.rtype == CNAME), None)
        if cname is None or qtype in (CNAME, ANY):
            break
        answer.append((name, cname))
        name = str(cname.value)
        depends.add(name)
        records = catalog.get(name)
        if records is None:
            if in_zone(catalog, name):  # a dangling in-zone alias
                return Answer(NXDOMAIN, tuple(answer), _negative(catalog, 0, set()).authority,
                              depends=frozenset(depends))  # fmt: skip
            return Answer(NOERROR, tuple(answer), depends=frozenset(depends), chase=name)
    matching = [(name, r) for r in records if qtype == ANY or r.rtype == qtype]
    if not matching and not answer:
        return _negative(catalog, NOERROR, depends, _owner_zone(catalog, qname))
    answer += matching
    additional: list[tuple[str, Record]] = []
    for _, r in matching:
        if r.rtype == SRV:
            additional += _addresses(catalog, r.value[3], depends)
        elif r.rtype == NS:
            additional += _addresses(catalog, str(r.value), depends)
    return Answer(NOERROR, tuple(answer), (), tuple(dict.fromkeys(additional)), frozenset(depends))


def _owner_zone(catalog: Catalog, name: str) -> str:
    if in_zone(catalog, name):
        return catalog.config.zone
    reverse = catalog.reverse_authority(name)
    return reverse[0] if reverse else catalog.config.zone
