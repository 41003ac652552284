"""Which endpoints one service port uses on this node (kube-proxy's endpoint cache +
`CategorizeEndpoints`, without topology hints).

- Endpoints come from the service's EndpointSlices of the proxied family (`addressType`);
  FQDN slices are ignored. Only an endpoint's first address is used.
- The endpoint port is the port of the slice port whose name and protocol equal the
  service port's: that is how EndpointSlices carry a targetPort (by number or by a
  container port name, which the EndpointSlice controller already resolved). A slice port
  without a number ("all ports", selectorless services only) falls back to a numeric
  targetPort. A slice without a matching port contributes nothing, as in kube-proxy.
- Duplicates across slices (same `ip:port`) collapse into one; a local copy wins.
- Order: sorted by the `ip:port` string, as kube-proxy sorts them, so the probability
  split and the output are deterministic.
- Readiness: Ready endpoints; if none, Serving+Terminating ones. For Local policies the
  same fallback is applied among this node's endpoints only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from netplane.model import EndpointSlice, ServicePort


class EndpointInfo(NamedTuple):
    ip: str
    port: int
    addr: str  # "ip:port", "[ip]:port" for IPv6
    local: bool  # on this node (EndpointSlice nodeName == our node name)
    ready: bool
    serving: bool
    terminating: bool


_new = tuple.__new__  # builds an EndpointInfo without the Python-level NamedTuple __new__


def port_endpoints(
    slices: Iterable[EndpointSlice], port: ServicePort, address_type: str, node_name: str
) -> list[EndpointInfo]:
    """Every endpoint of one service port in one family, deduplicated and sorted."""
    found: dict[str, EndpointInfo] = {}
    name, protocol = port.name, port.protocol
    for sl in slices:
        if sl.address_type != address_type:
            continue
        for p in sl.ports:
            if p.name == name and p.protocol == protocol:
                number = p.port
                break
        else:
            continue
        if number is None:
            target = port.resolved_target_port
            if not isinstance(target, int):
                continue
            number = target
        for ep in sl.endpoints:
            ip = ep.addresses[0]
            addr = f"[{ip}]:{number}" if ":" in ip else f"{ip}:{number}"  # JoinHostPort
            local = ep.node_name == node_name and bool(node_name)
            if local or addr not in found:
                found[addr] = _new(
                    EndpointInfo, (ip, number, addr, local, ep.ready, ep.serving, ep.terminating)
                )
    if len(found) < 2:
        return list(found.values())
    return [found[k] for k in sorted(found)]


class Categorized(NamedTuple):
    cluster: list[EndpointInfo]  # endpoints for Cluster traffic policy
    local: list[EndpointInfo]  # endpoints for Local traffic policy (this node's)
    reachable: list[EndpointInfo]  # union: the endpoints that get a KUBE-SEP chain
    has_any: bool  # usable endpoints anywhere in the cluster


def categorize(endpoints: list[EndpointInfo], uses_cluster: bool, uses_local: bool) -> Categorized:
    """kube-proxy's CategorizeEndpoints (no topology): ready first, else serving+terminating."""
    cluster: list[EndpointInfo] = []
    has_any = False
    if uses_cluster:
        cluster = [e for e in endpoints if e.ready]
        if not cluster:
            cluster = [e for e in endpoints if e.serving and e.terminating]
        has_any = bool(cluster)
    if not uses_local:
        return Categorized(cluster, [], cluster, has_any)

    local_ready = local_terminating = False
    for e in endpoints:
        if e.ready:
            has_any = True
            local_ready = local_ready or e.local
        elif e.serving and e.terminating:
            has_any = True
            local_terminating = local_terminating or e.local
    if local_ready:
        local = [e for e in endpoints if e.local and e.ready]
    elif local_terminating:
        local = [e for e in endpoints if e.local and e.serving and e.terminating]
    else:
        local = []
    if not uses_cluster:
        return Categorized(cluster, local, local, has_any)
    seen = {e.addr for e in cluster}
    reachable = cluster + [e for e in local if e.addr not in seen]
    return Categorized(cluster, local, reachable, has_any)
