"""Stale UDP conntrack entries: cleared when an endpoint goes away, as kube-proxy does.

UDP has no connection to break, so a client that keeps sending (DNS!) keeps matching the
conntrack entry that DNATs to the dead endpoint until it times out. `flows()` is pure: the
UDP (service address, port) -> endpoint pairs one Service programs; the syncer diffs them
before and after a sync and `Conntrack.clear()` deletes what disappeared.
"""

from __future__ import annotations

import ipaddress
import logging
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from netplane.state import ServiceKey, Snapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, order=True)
class Flow:
    """UDP to ADDRESS:PORT (a service address, or any local address for a node port)."""

    address: str  # "" for a node port (matches every node address)
    port: int
    endpoint: str  # "" = the service had no endpoints (packets were rejected)


def _family_of(addr: str) -> str:
    return "ipv6" if ipaddress.ip_address(addr).version == 6 else "ipv4"


def flows(snapshot: Snapshot, key: ServiceKey, family: str) -> frozenset[Flow]:
    service = snapshot.services.get(key)
    if service is None or service.headless or service.type == "ExternalName":
        return frozenset()
    if not any(p.protocol == "UDP" for p in service.ports):
        return frozenset()
    addresses = [
        a
        for a in (*service.cluster_ips, *service.external_ips, *service.load_balancer_ips)
        if _family_of(a) == family
    ]
    slices = [
        s
        for s in snapshot.slices_for(key)
        if s.address_type == ("IPv6" if family == "ipv6" else "IPv4")
    ]
    out: set[Flow] = set()
    for port in service.ports:
        if port.protocol != "UDP":
            continue
        endpoints = {
            addr
            for s in slices
            if any(p.name == port.name and p.protocol == "UDP" for p in s.ports)
            for e in s.endpoints
            if e.ready or e.serving
            for addr in e.addresses[:1]
        } or {""}
        for ep in endpoints:
            out.update(Flow(a, port.port, ep) for a in addresses)
            if port.node_port:
                out.add(Flow("", port.node_port, ep))
    return frozenset(out)


def stale(before: Iterable[Flow], after: Iterable[Flow]) -> list[Flow]:
    """Flows whose endpoint went away, plus services that just got their first endpoint."""
    after = set(after)
    gone = sorted(set(before) - after)
    # Packets sent while there was no endpoint may hold entries that go nowhere.
    revived = {(f.address, f.port) for f in after if f.endpoint}
    return [f for f in gone if f.endpoint or (f.address, f.port) in revived]


@dataclass(frozen=True, slots=True)
class Conntrack:
    family: str = "ipv4"
    netns: str | None = None

    def clear(self, flow: Flow) -> None:
        argv = [
            "conntrack",
            "-D",
            "-f",
            self.family,
            "-p",
            "udp",
            "--orig-port-dst",
            str(flow.port),
        ]
        if flow.address:
            argv += ["--orig-dst", flow.address]
        if flow.endpoint:
            argv += ["--dst-nat", flow.endpoint]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as e:
            log.warning("clearing conntrack entries for %s failed: %s", flow, e)
            return
        # exit 1 with "0 flow entries" just means there was nothing to delete
        if proc.returncode != 0 and "0 flow entries" not in proc.stderr:
            log.warning("%s: %s", " ".join(argv), proc.stderr.strip())


class UdpFlows:
    """The UDP flows each service programmed at the last sync; `update` clears the
    conntrack entries of those a sync took away (every backend does the same)."""

    def __init__(self, family: str, conntrack: Conntrack | None) -> None:
        self.family = family
        self.conntrack = conntrack
        self._flows: dict[ServiceKey, frozenset[Flow]] = {}

    def update(self, snapshot: Snapshot, keys: Iterable[ServiceKey]) -> None:
        for key in keys:
            before = self._flows.get(key, frozenset())
            after = flows(snapshot, key, self.family)
            if after:
                self._flows[key] = after
            else:
                self._flows.pop(key, None)
            if self.conntrack is None:
                continue
            for flow in stale(before, after):
                log.debug("clearing UDP conntrack entries of %s %s", key, flow)
                self.conntrack.clear(flow)
