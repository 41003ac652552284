"""Cluster objects -> DNS records: a pure function, no I/O (CoreDNS's `kubernetes` plugin).

Each Service (with its EndpointSlices) and each Pod contributes a small map of
name -> records; the `Index` merges the contributions and, on a change, rebuilds only the
contributions of the owners that changed into a new map built aside, so the server can
swap one reference while queries keep being answered from the old one.
Names are lower-case, without the trailing dot.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from netplane.model import EndpointSlice, Pod, Service
from netplane.state import Changes, Snapshot

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


Owner = tuple[str, ...]  # ("svc", ns, name) | ("pod", ns, name) | ("static",)
Contribution = dict[str, tuple[Record, ...]]  # name -> records; () marks an empty non-terminal


def reverse_name(ip: str) -> str:
    return ipaddress.ip_address(ip).reverse_pointer


def dashed(ip: str) -> str:
    """The endpoint name the spec derives from an address: 172-0-0-2, 5678-abcd--1."""
    return str(ipaddress.ip_address(ip)).replace(".", "-").replace(":", "-")


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


def _ready_addresses(svc: Service, slices: Iterable[EndpointSlice]) -> list[tuple[str, str]]:
    """(address, hostname-or-dashed) for each endpoint the headless name publishes."""
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


def service_records(svc: Service, slices: Iterable[EndpointSlice], zone: str) -> Contribution:
    """Everything one Service publishes: its name, SRV, PTR and, if headless, endpoints."""
    slices = tuple(slices)
    out: Contribution = {}
    base = f"{svc.name}.{svc.namespace}.svc.{zone}".lower()
    if svc.type == "ExternalName":
        if svc.external_name:
            out[base] = (Record(CNAME, svc.external_name.rstrip(".").lower()),)
    elif svc.headless:
        addresses = _ready_addresses(svc, slices)
        for addr, host in addresses:
            target = f"{host}.{base}"
            _add(out, base, _ip_record(addr))
            _add(out, target, _ip_record(addr))
            _add(out, reverse_name(addr), Record(PTR, target))
        hosts = sorted({f"{host}.{base}" for _, host in addresses})
        ports = sorted({(p.name, p.protocol, p.port) for s in slices for p in s.ports if p.port})
        for port_name, proto, port in ports:
            _srv(out, port_name, proto, base, [(port, h) for h in hosts])
    elif svc.cluster_ips:
        for ip in svc.cluster_ips:
            _add(out, base, _ip_record(ip))
            _add(out, reverse_name(ip), Record(PTR, base))
        for p in svc.ports:
            _srv(out, p.name, p.protocol, base, [(p.port, base)])
    for name in list(out):
        _with_ancestors(out, name, zone)
    return out


def pod_records(pod: Pod, zone: str) -> Contribution:
    """Verified pod names: `a-b-c-d.<ns>.pod.<zone>` for each IP of a pod that exists."""
    out: Contribution = {}
    if pod.host_network:
        return out
    for ip in pod.pod_ips:
        name = f"{dashed(ip)}.{pod.namespace}.pod.{zone}".lower()
        _add(out, name, _ip_record(ip))
        _with_ancestors(out, name, zone)
    return out


def static_records(config: ZoneConfig, services: Mapping, serial: int) -> Contribution:
    """The apex (SOA, NS with glue), dns-version and the pod.<zone> subtree root."""
    zone = config.zone
    kube_dns = services.get(("kube-system", "kube-dns"))
    glue = kube_dns.cluster_ips if kube_dns and kube_dns.cluster_ips else config.dns_ips
    ns_name = f"ns.dns.{zone}"
    out: Contribution = {
        zone: (
            Record(SOA, (ns_name, f"hostmaster.{zone}", serial, 7200, 1800, 86400, config.ttl)),
            Record(NS, ns_name),
        ),
        ns_name: tuple(_ip_record(ip) for ip in glue),
        f"dns.{zone}": (),
        f"dns-version.{zone}": (Record(TXT, SPEC_VERSION),),
        f"svc.{zone}": (),
        f"pod.{zone}": (),
    }
    return out


@dataclass(frozen=True, slots=True)
class Index:
    """name -> records for the whole zone (plus reverse names), and where each came from."""

    config: ZoneConfig
    names: Mapping[str, tuple[Record, ...]]
    owners: Mapping[str, frozenset[Owner]]
    contributions: Mapping[Owner, Contribution]
    serial: int
    synced: bool
    changed: frozenset[str] = frozenset()  # names whose records differ from the previous index

    def get(self, name: str) -> tuple[Record, ...] | None:
        return self.names.get(name)


def _contribution(owner: Owner, snap: Snapshot, config: ZoneConfig, serial: int) -> Contribution:
    if owner[0] == "static":
        return static_records(config, snap.services, serial)
    key = (owner[1], owner[2])
    if owner[0] == "svc":
        svc = snap.services.get(key)
        return service_records(svc, snap.slices_for(key), config.zone) if svc else {}
    pod = snap.pods.get(key)
    return pod_records(pod, config.zone) if pod and config.pods == "verified" else {}


def _merge(owner_ids: frozenset[Owner], contributions: Mapping[Owner, Contribution], name: str):
    if len(owner_ids) == 1:
        return contributions[next(iter(owner_ids))][name]
    records: list[Record] = []
    for owner in sorted(owner_ids):
        for r in contributions[owner].get(name, ()):
            if r not in records:
                records.append(r)
    return tuple(records)


def build_index(snap: Snapshot, config: ZoneConfig, serial: int) -> Index:
    """The full index from a snapshot."""
    owners: list[Owner] = [("static",)]
    owners += [("svc", *k) for k in snap.services]
    if config.pods == "verified":
        owners += [("pod", *k) for k in snap.pods]
    return _rebuild(Index(config, {}, {}, {}, serial, snap.synced), snap, owners, serial)


def update_index(index: Index, snap: Snapshot, changes: Changes, serial: int) -> Index:
    """A new index with only the changed owners rebuilt; `index` itself is left untouched."""
    owners: set[Owner] = {("static",)}
    owners |= {("svc", *k) for k in changes.services | changes.endpoints}
    if index.config.pods == "verified":
        owners |= {("pod", *k) for k in changes.pods}
    return _rebuild(index, snap, owners, serial)


def _rebuild(index: Index, snap: Snapshot, changed: Iterable[Owner], serial: int) -> Index:
    contributions = dict(index.contributions)
    added: dict[str, set[Owner]] = defaultdict(set)
    removed: dict[str, set[Owner]] = defaultdict(set)
    touched: set[str] = set()
    with_data: set[str] = set()  # names where a changed owner has (or had) records
    for owner in changed:
        old = contributions.pop(owner, {})
        new = _contribution(owner, snap, index.config, serial)
        if new:
            contributions[owner] = new
        for name in old.keys() - new.keys():
            removed[name].add(owner)
        for name in new.keys() - old.keys():
            added[name].add(owner)
        touched.update(n for n in old.keys() & new.keys() if old[n] != new[n])
        with_data.update(n for n, r in old.items() if r)
        with_data.update(n for n, r in new.items() if r)
    owners = dict(index.owners)
    for name in removed.keys() | added.keys():  # one set operation per name, not per owner
        now = (owners.get(name, frozenset()) - removed.get(name, set())) | added.get(name, set())
        if now:
            owners[name] = frozenset(now)
        else:
            owners.pop(name, None)
    names = dict(index.names)
    changed_names = set()
    for name in touched | removed.keys() | added.keys():
        if name in owners and name in names and name not in with_data:
            continue  # only empty non-terminal claims changed: the records did not
        merged = _merge(owners[name], contributions, name) if name in owners else None
        if merged != names.get(name):
            changed_names.add(name)
        if merged is None:
            names.pop(name, None)
        else:
            names[name] = merged
    return Index(
        index.config, names, owners, contributions, serial, snap.synced, frozenset(changed_names)
    )
