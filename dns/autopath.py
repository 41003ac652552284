"""Server-side search (CoreDNS's `autopath` plugin).

A pod with ndots:5 asks `blue.<ns>.svc.<zone>` first for `curl example.com`-style names;
when that misses, the server walks the rest of the pod's search list itself and answers
the first hit with a CNAME from the asked name, saving the client its further round trips.
The pod, and so its search list, is found from the query's source address, which is why
CoreDNS requires `pods verified`.
"""

from __future__ import annotations

from dataclasses import dataclass

from netplane.dns.answer import NOERROR, Answer, in_zone, resolve
from netplane.dns.catalog import Catalog
from netplane.dns.records import CNAME, Record


@dataclass(frozen=True, slots=True)
class Pending:
    """No in-zone candidate hit; these out-of-zone names are left to ask upstream."""

    qname: str
    candidates: tuple[str, ...]


class Autopath:
    def __init__(self, host_search: tuple[str, ...] = ()) -> None:
        self.host_search = tuple(s.rstrip(".").lower() for s in host_search)

    def eligible(self, catalog: Catalog, qname: str) -> bool:
        """Could this name's answer depend on the client (so it must not be shared)?"""
        return qname.endswith(f".svc.{catalog.config.zone}")

    def answer(
        self, catalog: Catalog, qname: str, qtype: int, client_ip: str
    ) -> Answer | Pending | None:
        """The server-side search answer, the upstream part still to try, or None to
        answer the query as asked."""
        ns = catalog.pod_namespace(client_ip)
        if ns is None:
            return None
        zone = catalog.config.zone
        first = f"{ns}.svc.{zone}"
        if not qname.endswith("." + first):
            return None
        base = qname[: -len(first) - 1]
        first_try = resolve(catalog, qname, qtype)
        if first_try is None or first_try.rcode != 3:
            return None  # the name as asked exists: nothing to search
        upstream: list[str] = []
        for suffix in (f"svc.{zone}", zone, *self.host_search, ""):
            candidate = f"{base}.{suffix}" if suffix else base
            if not in_zone(catalog, candidate):
                upstream.append(candidate)
                continue
            found = resolve(catalog, candidate, qtype)
            if found is None or found.rcode != NOERROR:
                continue  # NXDOMAIN: the next search domain
            if upstream:
                break  # keep the search order: upstream names come first
            cname = (qname, Record(CNAME, candidate))
            return Answer(NOERROR, (cname, *found.answer), found.authority, found.additional)
        return Pending(qname, tuple(upstream)) if upstream else None
