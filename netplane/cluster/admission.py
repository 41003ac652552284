"""What the API server does to an object before storing it (pure): defaulting, validation,
and allocation of ClusterIPs, NodePorts and LoadBalancer addresses.

Allocations survive re-applies: an applied Service without `clusterIP` keeps the one it was
given, as `kubectl apply` of an unchanged manifest does.
"""

from __future__ import annotations

import copy
import ipaddress
import random
from collections.abc import Mapping

from netplane.cluster.naming import uid
from netplane.cluster.topology import NODE_PORT_RANGE, Topology
from netplane.cluster.workloads import parse_deployment
from netplane.model import InvalidField, parse_object

Key = tuple[str, str, str]
Objects = Mapping[Key, dict]
SUPPORTED = ("Deployment", "Service", "Pod", "EndpointSlice", "Endpoints", "Namespace")
_CLUSTER_SCOPED = ("Namespace", "Node")


def object_key(body: dict) -> Key:
    kind = body.get("kind", "")
    meta = body.get("metadata") or {}
    ns = "" if kind in _CLUSTER_SCOPED else meta.get("namespace") or "default"
    return (kind, ns, meta.get("name", ""))


def admit(body: dict, objects: Objects, topo: Topology, rng: random.Random, now: str) -> dict:
    """The object to store for BODY; raises InvalidField (with the field) when it is refused."""
    kind = body.get("kind")
    if kind not in SUPPORTED:
        raise InvalidField("kind", f"{kind!r} is not supported (supported: {', '.join(SUPPORTED)})")
    body = copy.deepcopy(body)
    meta = body.setdefault("metadata", {})
    if not isinstance(meta, dict) or not meta.get("name"):
        raise InvalidField("metadata.name", "required")
    if kind not in _CLUSTER_SCOPED:
        meta.setdefault("namespace", "default")
    old = objects.get(object_key(body))
    meta["uid"] = (old or {}).get("metadata", {}).get("uid") or uid(rng)
    meta["creationTimestamp"] = (
        (old or {}).get("metadata", {}).get("creationTimestamp")
        or meta.get("creationTimestamp")
        or now
    )
    if kind == "Deployment":
        parse_deployment(body)
    elif kind == "Service":
        _allocate_service(body, old, objects, topo, rng)
    elif kind == "Pod":
        if old is not None:
            # Pods are immutable once created: keep what the scheduler and kubelet wrote.
            return old
        body.pop("status", None)
        body["status"] = {"phase": "Pending"}
    if kind != "Namespace":
        parse_object(body)  # the data plane's own validation, strict about field names
    return body


def _used(objects: Objects, skip: Key) -> tuple[set[str], set[tuple[int, str]], set[str]]:
    ips, node_ports, lb = set(), set(), set()
    for key, obj in objects.items():
        if key[0] != "Service" or key == skip:
            continue
        spec = obj.get("spec") or {}
        ips.update(ip for ip in spec.get("clusterIPs") or [spec.get("clusterIP")] if ip)
        for p in spec.get("ports") or []:
            if p.get("nodePort"):
                node_ports.add((p["nodePort"], p.get("protocol", "TCP")))
        for ing in ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
            lb.add(ing.get("ip"))
    return ips, node_ports, lb


def _allocate_service(
    body: dict, old: dict | None, objects: Objects, topo: Topology, rng: random.Random
) -> None:
    spec = body.setdefault("spec", {})
    old_spec = (old or {}).get("spec") or {}
    svc_type = spec.setdefault("type", "ClusterIP")
    ips, node_ports, lb_used = _used(objects, ("Service", *object_key(body)[1:]))
    if svc_type != "ExternalName":
        ip = spec.get("clusterIP") or (spec.get("clusterIPs") or [None])[0]
        ip = ip or old_spec.get("clusterIP") or _free_ip(topo.service_cidr, ips, rng)
        if ip != "None":
            net = ipaddress.ip_network(topo.service_cidr)
            try:
                inside = ipaddress.ip_address(ip) in net
            except ValueError:
                raise InvalidField("spec.clusterIP", f"{ip!r} is not a valid IP address") from None
            if not inside:
                raise InvalidField("spec.clusterIP", f"{ip} is not in the service CIDR {net}")
            if ip in ips:
                raise InvalidField("spec.clusterIP", f"{ip} is already allocated")
        spec["clusterIP"] = ip
        spec["clusterIPs"] = [ip]
    old_ports = {(p.get("port"), p.get("protocol", "TCP")): p for p in old_spec.get("ports") or []}
    for i, p in enumerate(spec.get("ports") or []):
        if not isinstance(p, dict):
            continue
        p.setdefault("protocol", "TCP")
        p.setdefault("targetPort", p.get("port"))
        if svc_type in ("NodePort", "LoadBalancer"):
            wanted = p.get("nodePort") or old_ports.get((p.get("port"), p["protocol"]), {}).get(
                "nodePort"
            )
            if wanted and (wanted, p["protocol"]) in node_ports:
                raise InvalidField(f"spec.ports[{i}].nodePort", f"{wanted} is already allocated")
            if wanted and not NODE_PORT_RANGE[0] <= wanted <= NODE_PORT_RANGE[1]:
                raise InvalidField(
                    f"spec.ports[{i}].nodePort",
                    f"{wanted} is outside the node port range {NODE_PORT_RANGE[0]}-"
                    f"{NODE_PORT_RANGE[1]}",
                )
            p["nodePort"] = wanted or _free_port(node_ports, p["protocol"], rng)
            node_ports.add((p["nodePort"], p["protocol"]))
    if svc_type == "LoadBalancer":
        old_lb = ((old or {}).get("status") or {}).get("loadBalancer", {}).get("ingress") or []
        ip = spec.get("loadBalancerIP") or (old_lb[0].get("ip") if old_lb else None)
        ip = ip or _free_lb(topo.lb_pool, lb_used)
        body["status"] = {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}}
    else:
        body.pop("status", None)


def _free_ip(cidr: str, used: set[str], rng: random.Random) -> str:
    net = ipaddress.ip_network(cidr)
    # The lower band (the first 16 addresses) is left for static choices (10.96.0.1 and
    # 10.96.0.10), as the API server's allocator does.
    for _ in range(1000):
        ip = str(net[rng.randrange(16, net.num_addresses - 1)])
        if ip not in used:
            return ip
    raise InvalidField("spec.clusterIP", f"the service CIDR {cidr} is full")


def _free_port(used: set[tuple[int, str]], protocol: str, rng: random.Random) -> int:
    low, high = NODE_PORT_RANGE
    for _ in range(1000):
        port = rng.randint(low, high)
        if (port, protocol) not in used:
            return port
    raise InvalidField("spec.ports.nodePort", "no free node port left")


def _free_lb(pool: tuple[str, str], used: set[str]) -> str:
    first, last = (int(ipaddress.ip_address(a)) for a in pool)
    for n in range(first, last + 1):
        ip = str(ipaddress.ip_address(n))
        if ip not in used:
            return ip
    raise InvalidField("status.loadBalancer", f"the address pool {pool[0]}-{pool[1]} is exhausted")
