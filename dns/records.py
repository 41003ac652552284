"""Cluster objects -> DNS records: pure functions, no I/O (CoreDNS's `kubernetes` plugin).

Each Service (with its EndpointSlices) publishes a small map of name -> records; each
verified Pod one name per IP. Nothing is precomputed for the whole zone: like CoreDNS,
which reads its informer caches at query time, the `Catalog` (catalog.py) keeps the
objects and derives a service's records only when a name under it is asked (and the
answer is cached). That keeps start-up at one pass over the objects (the reverse map).
Names are lower-case, without the trailing dot.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from netplane.model import EndpointSlice, Pod, Service

A, NS, CNAME, SOA, PTR, TXT, AAAA, SRV = 1, 2, 5, 6, 12, 16, 28, 33
SPEC_VERSION = "1.1.0"


@dataclass(frozen=True, slots=True)
class Record:
    """One resource record's type and data; owner name and TTL are supplied on output.

    value: an IP for A/AAAA, a target name for CNAME/PTR/NS, (priority, weight, port,
    target) for SRV, the text for TXT, (mname, rname, serial, refresh, retry, expire,
    minimum) for SOA.
    """

    rtype: int
    value: str | tuple


@dataclass(frozen=True, slots=True)
class ZoneConfig:
    zone: str = "cluster.local"
    ttl: int = 5
    pods: str = "disabled"  # disabled | insecure | verified
    dns_ips: tuple[str, ...] = ()  # glue for ns.dns.<zone> when kube-system/kube-dns is absent
    # reverse zones answered authoritatively (NXDOMAIN + SOA for unknown addresses), as
    # CoreDNS does for the zones of its `kubernetes` block: the service CIDR, and the pod
    # CIDR when pod records are on
    reverse_cidrs: tuple[str, ...] = ("10.96.0.0/12",)


Owner = tuple[str, ...]  # ("svc", ns, name) | ("pod", ns, name)
Contribution = dict[str, tuple[Record, ...]]  # name -> records; () marks an empty non-terminal


def reverse_name(ip: str) -> str:
    if ":" not in ip:  # the common case, without ipaddress's cost (~10x)
        a, b, c, d = ip.split(".")
        return f"{d}.{c}.{b}.{a}.in-addr.arpa"
    return ipaddress.ip_address(ip).reverse_pointer


def dashed(ip: str) -> str:
    """The endpoint name the spec derives from an address: 172-0-0-2, 5678-abcd--1."""
    if ":" not in ip:
        return ip.replace(".", "-")
    return str(ipaddress.ip_address(ip)).replace(":", "-")


def _ip_record(ip: str) -> Record:
    return Record(AAAA if ":" in ip else A, ip)


def _with_ancestors(out: Contribution, name: str, zone: str) -> None:
    """Every name between `name` and the apex exists (NODATA rather than NXDOMAIN)."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        parent = ".".join(parts[i:])
        if parent == zone or not parent.endswith("." + zone):
            return
        out.setdefault(parent, ())


def _add(out: Contribution, name: str, record: Record) -> None:
    out[name] = (*out.get(name, ()), record)


def _srv(out: Contribution, port_name: str, proto: str, base: str, targets: list[tuple]) -> None:
    if not port_name or not targets:
        return
    weight = max(1, 100 // len(targets))
    name = f"_{port_name.lower()}._{proto.lower()}.{base}"
    for port, target in targets:
        _add(out, name, Record(SRV, (0, weight, port, target)))


def ready_addresses(svc: Service, slices: Iterable[EndpointSlice]) -> list[tuple[str, str]]:
    """(address, hostname-or-dashed) for each endpoint the service's names publish."""
    seen: dict[str, str] = {}
    for sl in slices:
        if sl.address_type not in ("IPv4", "IPv6"):
            continue
        for ep in sl.endpoints:
            if not (ep.ready or svc.publish_not_ready_addresses):
                continue
            for addr in ep.addresses:
                seen.setdefault(addr, (ep.hostname or dashed(addr)).lower())
    return list(seen.items())


def service_base(namespace: str, name: str, zone: str) -> str:
    return f"{name}.{namespace}.svc.{zone}".lower()


def service_records(svc: Service, slices: Iterable[EndpointSlice], zone: str) -> Contribution:
    """Everything one Service publishes: its name, SRV, endpoint names and PTRs.

    Endpoint names (`<hostname-or-dashed>.<svc>...`) and their PTRs exist for the ready
    endpoints of every service, headless or not, as CoreDNS answers them; a headless
    service's own name lists those endpoints, a ClusterIP service's its cluster IPs.
    """
    slices = tuple(slices)
    out: Contribution = {}
    base = service_base(svc.namespace, svc.name, zone)
    if svc.type == "ExternalName":
        if svc.external_name:
            out[base] = (Record(CNAME, svc.external_name.rstrip(".").lower()),)
        return out
    addresses = ready_addresses(svc, slices)
    for addr, host in addresses:
        target = f"{host}.{base}"
        _add(out, target, _ip_record(addr))
        _add(out, reverse_name(addr), Record(PTR, target))
    if svc.headless:
        for addr, _ in addresses:
            _add(out, base, _ip_record(addr))
        hosts = sorted({f"{host}.{base}" for _, host in addresses})
        ports = sorted({(p.name, p.protocol, p.port) for s in slices for p in s.ports if p.port})
        for port_name, proto, port in ports:
            _srv(out, port_name, proto, base, [(port, h) for h in hosts])
    elif svc.cluster_ips:
        for ip in svc.cluster_ips:
            _add(out, base, _ip_record(ip))
            out[reverse_name(ip)] = (Record(PTR, base),)  # the cluster IP names the service
        for p in svc.ports:
            _srv(out, p.name, p.protocol, base, [(p.port, base)])
    for name in list(out):
        _with_ancestors(out, name, zone)
    return out


def service_name_records(
    svc: Service, slices: Iterable[EndpointSlice], zone: str
) -> tuple[Record, ...] | None:
    """The records at the service's own name alone (the most asked name: no need to
    derive the whole contribution); None when the name does not exist."""
    if svc.type == "ExternalName":
        target = svc.external_name.rstrip(".").lower()
        return (Record(CNAME, target),) if target else None
    if svc.headless:
        return tuple(_ip_record(addr) for addr, _ in ready_addresses(svc, slices)) or None
    return tuple(_ip_record(ip) for ip in svc.cluster_ips) or None


def service_ips(svc: Service | None, slices: Iterable[EndpointSlice]) -> set[str]:
    """Every address a service's PTR records cover (cluster IPs and ready endpoints)."""
    if svc is None or svc.type == "ExternalName":
        return set()
    ips = set() if svc.headless else set(svc.cluster_ips)
    publish = svc.publish_not_ready_addresses
    for sl in slices:  # ready_addresses' endpoints without their names: built per service
        if sl.address_type in ("IPv4", "IPv6"):
            for ep in sl.endpoints:
                if ep.ready or publish:
                    ips.update(ep.addresses)
    return ips


def pod_ips(pod: Pod | None) -> tuple[str, ...]:
    """The IPs a pod's verified names and autopath know it by (not host-network pods)."""
    if pod is None or pod.host_network or pod.terminating:
        return ()
    return pod.pod_ips


def static_records(config: ZoneConfig, services: Mapping, serial: int) -> Contribution:
    """The apex (SOA, NS with glue), dns-version and the fixed subtree roots."""
    zone = config.zone
    kube_dns = services.get(("kube-system", "kube-dns"))
    glue = kube_dns.cluster_ips if kube_dns and kube_dns.cluster_ips else config.dns_ips
    ns_name = f"ns.dns.{zone}"
    return {
        zone: (soa(zone, config.ttl, serial), Record(NS, ns_name)),
        ns_name: tuple(_ip_record(ip) for ip in glue),
        f"dns.{zone}": (),
        f"dns-version.{zone}": (Record(TXT, SPEC_VERSION),),
        f"svc.{zone}": (),
        f"pod.{zone}": (),
    }


def soa(zone: str, ttl: int, serial: int) -> Record:
    return Record(SOA, (f"ns.dns.{zone}", f"hostmaster.{zone}", serial, 7200, 1800, 86400, ttl))
