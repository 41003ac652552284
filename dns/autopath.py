"""Server-side search (CoreDNS's `autopath` plugin).

A pod with ndots:5 asks `blue.<ns>.svc.<zone>` first for `curl example.com`-style names;
when that misses, the server walks the rest of the pod's search list itself and answers
the first hit with a CNAME from the asked name, saving the client its further round trips.
The pod, and so its search list, is found from the query's source address, which is why
CoreDNS requires `pods verified`.
"""

from __future__ import annotations

from dataclasses import dataclass

from dnslib import CNAME as CNAME_RD
from dnslib import QTYPE, RR, DNSRecord

from netplane.dns.answer import NOERROR, Answer, in_zone, resolve
from netplane.dns.forward import Forwarder, respond
from netplane.dns.records import CNAME, Index, Record
from netplane.dns.wire import Query
from netplane.state import Snapshot


@dataclass(frozen=True, slots=True)
class Pending:
    """No in-zone candidate hit; these out-of-zone names are left to ask upstream."""

    qname: str
    candidates: tuple[str, ...]


def pod_namespaces(snap: Snapshot) -> dict[str, str]:
    """Pod IP -> namespace, for pods on the pod network (hostNetwork IPs are shared)."""
    return {
        ip: pod.namespace
        for pod in snap.pods.values()
        if not pod.host_network and not pod.terminating
        for ip in pod.pod_ips
    }


class Autopath:
    def __init__(self, host_search: tuple[str, ...] = ()) -> None:
        self.host_search = tuple(s.rstrip(".").lower() for s in host_search)
        self._pod_ns: dict[str, str] = {}

    def refresh(self, snap: Snapshot) -> None:
        self._pod_ns = pod_namespaces(snap)

    def eligible(self, index: Index, qname: str) -> bool:
        """Could this name's answer depend on the client (so it must not be shared)?"""
        return qname.endswith(f".svc.{index.config.zone}")

    def answer(
        self, index: Index, qname: str, qtype: int, client_ip: str
    ) -> Answer | Pending | None:
        """The server-side search answer, the upstream part still to try, or None to
        answer the query as asked."""
        ns = self._pod_ns.get(client_ip)
        if ns is None:
            return None
        zone = index.config.zone
        first = f"{ns}.svc.{zone}"
        if not qname.endswith("." + first):
            return None
        base = qname[: -len(first) - 1]
        first_try = resolve(index, qname, qtype)
        if first_try is None or first_try.rcode != 3:
            return None  # the name as asked exists: nothing to search
        upstream: list[str] = []
        for suffix in (f"svc.{zone}", zone, *self.host_search, ""):
            candidate = f"{base}.{suffix}" if suffix else base
            if not in_zone(index, candidate):
                upstream.append(candidate)
                continue
            found = resolve(index, candidate, qtype)
            if found is None or found.rcode != NOERROR:
                continue  # NXDOMAIN: the next search domain
            if upstream:
                break  # keep the search order: upstream names come first
            cname = (qname, Record(CNAME, candidate))
            return Answer(NOERROR, (cname, *found.answer), found.authority, found.additional)
        return Pending(qname, tuple(upstream)) if upstream else None


def forward_search(forwarder: Forwarder, pending: Pending, query: Query, ttl: int, limit: int):
    """Ask upstream for the remaining candidates; the response bytes, or None when none hit."""
    for candidate in pending.candidates:
        reply = forwarder.lookup(candidate, query.qtype)
        if reply is None or reply.header.rcode != NOERROR or not reply.rr:
            continue
        found = DNSRecord(q=reply.q)
        cname = RR(pending.qname, QTYPE.CNAME, ttl=ttl, rdata=CNAME_RD(candidate))
        found.rr = [cname, *reply.rr]
        found.auth, found.ar = reply.auth, reply.ar
        return respond(query, found, limit)
    return None
