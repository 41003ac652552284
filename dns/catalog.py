"""What answers are made from: the objects, a reverse map and the names that always exist.

A `Catalog` is immutable. The supervisor builds the first one once (one pass over the
objects: the reverse map of every published address and the pod IPs) and hands it to its
worker processes by fork, so every worker reads the same pages instead of a copy of its
own. Later changes arrive as `Delta`s: each applies as a small overlay on top of the
frozen base (`Layered`), so the base pages stay shared and untouched.

Records are derived per service at query time (records.service_records), as CoreDNS reads
its informer caches per query; the engine caches the answers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from netplane.dns.records import (
    AAAA,
    PTR,
    A,
    Contribution,
    Owner,
    Record,
    ZoneConfig,
    pod_ips,
    service_base,
    service_ips,
    service_name_records,
    service_records,
    static_records,
)
from netplane.model import EndpointSlice, Service
from netplane.state import Changes, ServiceKey, Snapshot

_GONE: Any = object()  # an overlay entry that hides a base entry (the object was deleted)


class Layered(Mapping):
    """A frozen base mapping with a small overlay of changes; lookups read the overlay first."""

    __slots__ = ("base", "overlay")

    def __init__(self, base: Mapping, overlay: dict | None = None) -> None:
        self.base = base
        self.overlay = overlay or {}

    def get(self, key: Any, default: Any = None) -> Any:
        value = self.overlay.get(key, _GONE)
        if value is _GONE:
            return self.base.get(key, default)
        return default if value is None else value

    def __getitem__(self, key: Any) -> Any:
        value = self.get(key, _GONE)
        if value is _GONE:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return self.get(key, _GONE) is not _GONE

    def __iter__(self) -> Iterator:
        yield from (k for k in self.base if k not in self.overlay)
        yield from (k for k, v in self.overlay.items() if v is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def updated(self, changes: Mapping) -> Layered:
        """A new mapping with `changes` applied (None deletes); self is left as it is."""
        return Layered(self.base, {**self.overlay, **changes})


@dataclass(frozen=True, slots=True)
class Delta:
    """One batch of changes, as the supervisor sends it to its workers (picklable)."""

    services: dict = field(default_factory=dict)  # (ns, name) -> Service | None
    slices: dict = field(default_factory=dict)  # (ns, name) -> tuple[EndpointSlice] | None
    reverse: dict = field(default_factory=dict)  # address -> tuple[Owner] | None
    pods: dict = field(default_factory=dict)  # pod IP -> tuple[(ns, name)] | None
    namespaces: frozenset[str] | None = None  # the new set, when it changed
    changed: frozenset[str] = frozenset()  # names whose answers may differ now
    serial: int = 0
    synced: bool = True


@dataclass(frozen=True, slots=True)
class Catalog:
    config: ZoneConfig
    services: Mapping[tuple[str, str], Service]
    slices: Mapping[tuple[str, str], tuple[EndpointSlice, ...]]
    # address -> services publishing a PTR for it; by address, not by reverse name: 60,000
    # names at 10k services would cost ~35 ms to spell before the first answer
    reverse: Mapping[str, tuple[Owner, ...]]
    pods: Mapping[str, tuple[tuple[str, str], ...]]  # pod IP -> pods (ns, name) holding it
    namespaces: frozenset[str]  # Namespace objects, and namespaces that have services
    static: Mapping[str, tuple[Record, ...]]
    serial: int
    synced: bool
    # per-process memo of the last services whose records were derived (big headless
    # services are asked under many names); validated by object identity
    _memo: dict = field(default_factory=dict, compare=False, repr=False)

    def get(self, name: str) -> tuple[Record, ...] | None:
        """The records at `name` (() for a name that exists without data), else None."""
        records = self.static.get(name)
        if records is not None:
            return records
        zone = self.config.zone
        if name.endswith(".svc." + zone):
            labels = name[: -len(zone) - 5].split(".")
            if len(labels) == 1:
                return () if labels[0] in self.namespaces else None
            key = (labels[-1], labels[-2])
            if len(labels) == 2:  # the service's own name: the common case, made directly
                svc = self.services.get(key)
                if svc is None:
                    return None
                records = service_name_records(svc, self.slices.get(key, ()), zone)
                if records is not None:
                    return records
            return self._service_contribution(key).get(name)
        if name.endswith(".pod." + zone):
            return self._pod(name[: -len(zone) - 5].split("."))
        ip = _address(name)
        owners = self.reverse.get(ip) if ip is not None else None
        if ip is not None and owners is not None:
            if len(owners) == 1:
                svc = self.services.get(key := cast(ServiceKey, owners[0][1:]))
                if svc is not None and not svc.headless and ip in map(_key, svc.cluster_ips):
                    return (Record(PTR, service_base(svc.namespace, svc.name, zone)),)
                return self._service_contribution(key).get(name)
            merged: list[Record] = []
            for owner in owners:
                contribution = self._service_contribution(cast(ServiceKey, owner[1:]))
                merged += [r for r in contribution.get(name, ()) if r not in merged]
            return tuple(merged)
        return None

    def _service_contribution(self, key: ServiceKey) -> Contribution:
        svc = self.services.get(key)
        if svc is None:
            return {}
        slices = self.slices.get(key, ())
        memo = self._memo.get(key)
        if memo is not None and memo[0] is svc and memo[1] is slices:
            return memo[2]
        out = service_records(svc, slices, self.config.zone)
        if len(self._memo) >= 64:
            self._memo.clear()
        self._memo[key] = (svc, slices, out)
        return out

    def _pod(self, labels: list[str]) -> tuple[Record, ...] | None:
        pods = self.config.pods
        if len(labels) == 1:
            return () if pods != "disabled" else None  # <ns>.pod.<zone>
        if len(labels) != 2 or pods == "disabled":
            return None
        ip = _undash(labels[0])
        if ip is None:
            return None
        if pods == "verified" and not any(ns == labels[1] for ns, _ in self.pods.get(ip, ())):
            return None
        return (Record(AAAA if ":" in ip else A, ip),)

    def pod_namespace(self, ip: str) -> str | None:
        """The namespace of the pod holding `ip` (autopath's client lookup)."""
        owners = self.pods.get(ip)
        return owners[0][0] if owners else None

    def reverse_authority(self, name: str) -> tuple[str, bool] | None:
        """(zone, whole address?) when `name` lies in a reverse zone we answer for (the
        service CIDR, the pod CIDR): unknown addresses there get NXDOMAIN, not REFUSED."""
        for net, zone in _reverse_zones(self.config.reverse_cidrs):
            if name != zone and not name.endswith("." + zone):
                continue
            prefix = _from_reverse(name)
            if prefix is not None and prefix.version == net.version and prefix.overlaps(net):
                return zone, prefix.num_addresses == 1
        return None

    def apply(self, delta: Delta) -> Catalog:
        """The catalog after `delta` (self is left as it is)."""
        services = _layer(self.services).updated(delta.services)
        changed_static = ("kube-system", "kube-dns") in delta.services
        return Catalog(
            self.config,
            services,
            _layer(self.slices).updated(delta.slices),
            _layer(self.reverse).updated(delta.reverse),
            _layer(self.pods).updated(delta.pods),
            self.namespaces if delta.namespaces is None else delta.namespaces,
            static_records(self.config, services, delta.serial)
            if changed_static or delta.serial != self.serial
            else self.static,
            delta.serial,
            delta.synced,
        )


_HEX = frozenset("0123456789abcdef")


def _key(ip: str) -> str:
    """An address as the reverse map holds it (IPv6 compressed, as `_address` spells it)."""
    return ip if ":" not in ip else str(ipaddress.ip_address(ip))


def _address(name: str) -> str | None:
    """The address a whole reverse name stands for, spelled as `reverse_name` reads it
    (so a name in any other spelling finds nothing, as it would not be a reverse name)."""
    if name.endswith(".in-addr.arpa"):
        labels = name[:-13].split(".")
        return ".".join(reversed(labels)) if len(labels) == 4 else None
    if name.endswith(".ip6.arpa"):
        labels = name[:-9].split(".")
        if len(labels) != 32 or not all(len(x) == 1 and x in _HEX for x in labels):
            return None
        return str(ipaddress.IPv6Address(int("".join(reversed(labels)), 16)))
    return None


def _layer(mapping: Mapping) -> Layered:
    return mapping if isinstance(mapping, Layered) else Layered(mapping)


def _undash(label: str) -> str | None:
    text = label.replace("-", ".") if label.count("-") == 3 else label.replace("-", ":")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


_ZONES: dict[tuple[str, ...], tuple] = {}


def _reverse_zones(cidrs: tuple[str, ...]) -> tuple:
    """(network, reverse zone) per CIDR; the zone is cut at the label boundary above it."""
    zones = _ZONES.get(cidrs)
    if zones is None:
        out = []
        for text in cidrs:
            net = ipaddress.ip_network(text, strict=False)
            step = 8 if net.version == 4 else 4
            cut = net.supernet(new_prefix=net.prefixlen // step * step)
            labels = cut.network_address.reverse_pointer.split(".")
            keep = cut.prefixlen // step
            skip = (32 if net.version == 4 else 128) // step - keep
            out.append((net, ".".join(labels[skip:])))
        zones = _ZONES[cidrs] = tuple(out)
    return zones


def _from_reverse(name: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The addresses a reverse name (whole or partial) stands for, else None."""
    v4 = name.endswith(".in-addr.arpa")
    labels = name[: -13 if v4 else -9].split(".")
    width, step = (32, 8) if v4 else (128, 4)
    if len(labels) > width // step or not all(labels):
        return None
    try:
        value = 0
        for label in reversed(labels):
            digit = int(label, 10 if v4 else 16)
            if not 0 <= digit < 1 << step or (not v4 and len(label) != 1):
                return None
            value = value << step | digit
        bits = len(labels) * step
        cls = ipaddress.IPv4Network if v4 else ipaddress.IPv6Network
        return cls((value << (width - bits), bits))
    except ValueError:
        return None


# ---- the supervisor's side: building catalogs and deltas from snapshots ---------------


def _namespaces(snap: Snapshot) -> frozenset[str]:
    names = {ns for ns, _ in snap.services}
    names.update(key[2] for key in snap.others if key[0] == "Namespace")
    return frozenset(names)


def build_catalog(snap: Snapshot, config: ZoneConfig, serial: int) -> Catalog:
    """The first catalog: one pass over services, slices and (verified) pods."""
    reverse: dict[str, tuple[Owner, ...]] = {}
    slices = snap.slices
    for key, svc in snap.services.items():
        alone = (("svc", *key),)  # shared by all of the service's addresses
        for ip in service_ips(svc, slices.get(key, ())):
            held = reverse.setdefault(ip := _key(ip), alone)
            if held is not alone:  # an address two services cover is rare
                reverse[ip] = tuple(sorted((*held, *alone)))
    pods: dict[str, tuple[tuple[str, str], ...]] = {}
    if config.pods == "verified":
        for key, pod in snap.pods.items():
            for ip in pod_ips(pod):
                pods[ip] = tuple(sorted((*pods.get(ip, ()), key)))
    return Catalog(
        config,
        snap.services,
        snap.slices,
        reverse,
        pods,
        _namespaces(snap),
        static_records(config, snap.services, serial),
        serial,
        snap.synced,
    )


def delta(old: Catalog, old_snap: Snapshot, snap: Snapshot, changes: Changes, serial: int) -> Delta:
    """What `changes` (from `old_snap`, which `old` was made from, to `snap`) change."""
    zone = old.config.zone
    services: dict[ServiceKey, Service | None] = {}
    slices: dict[ServiceKey, tuple[EndpointSlice, ...] | None] = {}
    reverse_changes: dict[str, tuple[Owner, ...] | None] = {}
    pods: dict[str, tuple[tuple[str, ...], ...] | None] = {}
    changed: set[str] = set()
    for key in changes.services | changes.endpoints:
        before = old._service_contribution(key)
        svc, sl = snap.services.get(key), snap.slices.get(key, ())
        services[key] = svc
        slices[key] = sl or None
        after = service_records(svc, sl, zone) if svc is not None else {}
        changed.update(before, after)
        changed.add(service_base(*key, zone))
        owner = ("svc", *key)
        old_ips = service_ips(old.services.get(key), old.slices.get(key, ()))
        for ip in old_ips ^ service_ips(svc, sl):
            address = _key(ip)
            owners = reverse_changes.get(address, old.reverse.get(address)) or ()
            owners = tuple(o for o in owners if o != owner)
            if ip not in old_ips:
                owners = tuple(sorted((*owners, owner)))
            reverse_changes[address] = owners or None
    if old.config.pods == "verified":
        for key in changes.pods:
            old_pod_ips = set(pod_ips(old_snap.pods.get(key)))
            new_ips = set(pod_ips(snap.pods.get(key)))
            for ip in old_pod_ips ^ new_ips:
                owners = tuple(o for o in pods.get(ip, old.pods.get(ip)) or () if o != key)
                if ip in new_ips:
                    owners = tuple(sorted((*owners, key)))
                pods[ip] = owners or None
                changed.add(f"{_dash(ip)}.{key[0]}.pod.{zone}")
    namespaces = _namespaces(snap)
    for ns in namespaces ^ old.namespaces:
        changed.add(f"{ns}.svc.{zone}")
    changed.add(zone)  # the SOA serial moves with every change
    if ("kube-system", "kube-dns") in changes.services:
        changed.add(f"ns.dns.{zone}")
    return Delta(
        services,
        slices,
        reverse_changes,
        pods,
        namespaces if namespaces != old.namespaces else None,
        frozenset(changed),
        serial,
        snap.synced,
    )


def _dash(ip: str) -> str:
    return ip.replace(".", "-").replace(":", "-")
