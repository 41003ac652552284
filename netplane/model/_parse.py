"""Manifest dicts -> model objects, with errors that name the field (see `_fields`).

Fields the API knows but netplane ignores are accepted; unknown ones are not.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from netplane.model._fields import (
    _DNS1123_LABEL,
    InvalidField,
    _bool,
    _choice,
    _cidr,
    _family,
    _int,
    _ip,
    _known,
    _labels,
    _list,
    _obj,
    _str,
    _strict,
    metadata,
)
from netplane.model._objects import (
    Container,
    ContainerPort,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    KubeObject,
    Node,
    Pod,
    PodDNSConfig,
    RawObject,
    Service,
    ServicePort,
)

T = TypeVar("T", bound=KubeObject)
_TOP = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})
_SERVICE_SPEC = frozenset(
    [
        "ports",
        "selector",
        "clusterIP",
        "clusterIPs",
        "type",
        "externalIPs",
        "sessionAffinity",
        "loadBalancerIP",
        "loadBalancerSourceRanges",
        "externalName",
        "externalTrafficPolicy",
        "healthCheckNodePort",
        "publishNotReadyAddresses",
        "sessionAffinityConfig",
        "ipFamilies",
        "ipFamilyPolicy",
        "allocateLoadBalancerNodePorts",
        "loadBalancerClass",
        "internalTrafficPolicy",
        "trafficDistribution",
    ]
)
_SERVICE_PORT = frozenset({"name", "protocol", "appProtocol", "port", "targetPort", "nodePort"})
_SLICE_TOP = frozenset({"apiVersion", "kind", "metadata", "addressType", "endpoints", "ports"})
_SLICE_ENDPOINT = frozenset(
    [
        "addresses",
        "conditions",
        "hostname",
        "targetRef",
        "deprecatedTopology",
        "nodeName",
        "zone",
        "hints",
    ]
)
_SLICE_CONDITIONS = frozenset({"ready", "serving", "terminating"})
_SLICE_PORT = frozenset({"name", "protocol", "port", "appProtocol"})
_ENDPOINTS_TOP = frozenset({"apiVersion", "kind", "metadata", "subsets"})
_ENDPOINTS_SUBSET = frozenset({"addresses", "notReadyAddresses", "ports"})
_ENDPOINTS_ADDRESS = frozenset({"ip", "hostname", "nodeName", "targetRef"})
_PROTOCOLS = ("TCP", "UDP", "SCTP")
_SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
_POLICIES = ("Cluster", "Local")
_DNS_POLICIES = ("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_IANA_SVC_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$")


# ---- Service -----------------------------------------------------------------------------


def parse_service(doc: dict) -> Service:
    _known(doc, _TOP, "")
    namespace, name, meta = metadata(doc, namespaced=True)
    if not _DNS1123_LABEL.match(name):
        raise InvalidField("metadata.name", f"{name!r} is not a valid DNS-1035 label")
    spec = _obj(doc.get("spec"), "spec")
    _known(spec, _SERVICE_SPEC, "spec")
    svc_type = _choice(spec.get("type"), "spec.type", _SERVICE_TYPES, "ClusterIP")

    cluster_ips, headless = _cluster_ips(spec, svc_type)
    families = tuple(_family(ip) for ip in cluster_ips)
    if not families:
        families = tuple(
            _str(f, f"spec.ipFamilies[{i}]")
            for i, f in enumerate(_list(spec.get("ipFamilies"), "spec.ipFamilies"))
        )

    ports = _service_ports(spec, svc_type, headless)
    external_name = ""
    if svc_type == "ExternalName":
        external_name = _str(spec.get("externalName"), "spec.externalName").rstrip(".")
        if not external_name:
            raise InvalidField("spec.externalName", "required for type ExternalName")
        if not _DNS1123_SUBDOMAIN.match(external_name.lower()):
            raise InvalidField("spec.externalName", f"{external_name!r} is not a valid DNS name")

    affinity = _choice(
        spec.get("sessionAffinity"), "spec.sessionAffinity", ("None", "ClientIP"), "None"
    )
    timeout = 10800
    cfg = _obj(
        _obj(spec.get("sessionAffinityConfig"), "spec.sessionAffinityConfig").get("clientIP"),
        "spec.sessionAffinityConfig.clientIP",
    )
    if cfg.get("timeoutSeconds") is not None:
        timeout = _int(
            cfg["timeoutSeconds"], "spec.sessionAffinityConfig.clientIP.timeoutSeconds", 1, 86400
        )

    selector = spec.get("selector")
    status = _obj(doc.get("status"), "status")
    lb = _obj(status.get("loadBalancer"), "status.loadBalancer")
    lb_ips = []
    for i, ing in enumerate(_list(lb.get("ingress"), "status.loadBalancer.ingress")):
        ing = _obj(ing, f"status.loadBalancer.ingress[{i}]")
        if ing.get("ip"):
            lb_ips.append(_ip(ing["ip"], f"status.loadBalancer.ingress[{i}].ip"))
    if not lb_ips and spec.get("loadBalancerIP") and svc_type == "LoadBalancer":
        lb_ips.append(_ip(spec["loadBalancerIP"], "spec.loadBalancerIP"))

    return Service(
        namespace=namespace,
        name=name,
        type=svc_type,
        cluster_ips=cluster_ips,
        headless=headless,
        ip_families=families,
        ports=ports,
        selector=None if selector is None else _labels(selector, "spec.selector"),
        external_ips=tuple(
            _ip(ip, f"spec.externalIPs[{i}]")
            for i, ip in enumerate(_list(spec.get("externalIPs"), "spec.externalIPs"))
        ),
        load_balancer_ips=tuple(lb_ips) if svc_type == "LoadBalancer" else (),
        load_balancer_source_ranges=tuple(
            _cidr(r, f"spec.loadBalancerSourceRanges[{i}]")
            for i, r in enumerate(
                _list(spec.get("loadBalancerSourceRanges"), "spec.loadBalancerSourceRanges")
            )
        ),
        session_affinity=affinity,
        session_affinity_timeout=timeout,
        external_traffic_policy=_choice(
            spec.get("externalTrafficPolicy"), "spec.externalTrafficPolicy", _POLICIES, "Cluster"
        ),
        internal_traffic_policy=_choice(
            spec.get("internalTrafficPolicy"), "spec.internalTrafficPolicy", _POLICIES, "Cluster"
        ),
        health_check_node_port=(
            _int(spec["healthCheckNodePort"], "spec.healthCheckNodePort", 1, 65535)
            if spec.get("healthCheckNodePort")
            else 0
        ),
        publish_not_ready_addresses=_bool(
            spec.get("publishNotReadyAddresses"), "spec.publishNotReadyAddresses", False
        ),
        external_name=external_name,
        labels=_labels(meta.get("labels"), "metadata.labels"),
    )


def _cluster_ips(spec: dict, svc_type: str) -> tuple[tuple[str, ...], bool]:
    raw = _list(spec.get("clusterIPs"), "spec.clusterIPs")
    path = "spec.clusterIPs"
    if not raw and spec.get("clusterIP") not in (None, ""):
        raw, path = [spec["clusterIP"]], "spec.clusterIP"
    if svc_type == "ExternalName":
        return (), False
    if raw and raw[0] == "None":
        if len(raw) > 1:
            raise InvalidField(path, "None must be the only value for a headless service")
        return (), True
    ips = tuple(
        _ip(ip, f"{path}[{i}]" if path.endswith("IPs") else path) for i, ip in enumerate(raw)
    )
    if len(ips) > 2 or (len(ips) == 2 and _family(ips[0]) == _family(ips[1])):
        raise InvalidField(path, "at most one IPv4 and one IPv6 address")
    if (
        spec.get("clusterIP") not in (None, "")
        and ips
        and spec["clusterIP"] != "None"
        and _ip(spec["clusterIP"], "spec.clusterIP") != ips[0]
    ):
        raise InvalidField("spec.clusterIP", "must equal spec.clusterIPs[0]")
    return ips, False


def _service_ports(spec: dict, svc_type: str, headless: bool) -> tuple[ServicePort, ...]:
    ports: list[ServicePort] = []
    seen: dict[tuple[int, str], int] = {}
    names: dict[str, int] = {}
    raw = _list(spec.get("ports"), "spec.ports")
    for i, p in enumerate(raw):
        path = f"spec.ports[{i}]"
        p = _obj(p, path)
        _known(p, _SERVICE_PORT, path)
        port = _int(p.get("port"), f"{path}.port", 1, 65535)
        protocol = _choice(p.get("protocol"), f"{path}.protocol", _PROTOCOLS, "TCP")
        name = _str(p.get("name"), f"{path}.name")
        if len(raw) > 1 and not name:
            raise InvalidField(f"{path}.name", "required when a service has more than one port")
        if name and not _DNS1123_LABEL.match(name):
            raise InvalidField(f"{path}.name", f"{name!r} is not a valid DNS-1123 label")
        if name in names:
            raise InvalidField(
                f"{path}.name", f"duplicate port name {name!r} (also spec.ports[{names[name]}])"
            )
        if (port, protocol) in seen:
            raise InvalidField(
                path,
                f"duplicate port {port}/{protocol} (also spec.ports[{seen[(port, protocol)]}])",
            )
        names[name] = seen[(port, protocol)] = i
        target = p.get("targetPort")
        if target is None or target == 0:
            target_port: int | str = port
        elif isinstance(target, str) and not target.isdigit():
            if not _IANA_SVC_NAME.match(target):
                raise InvalidField(f"{path}.targetPort", f"{target!r} is not a valid port name")
            target_port = target
        else:
            target_port = _int(
                int(target) if isinstance(target, str) else target, f"{path}.targetPort", 1, 65535
            )
        node_port = 0
        if p.get("nodePort"):
            if svc_type not in ("NodePort", "LoadBalancer"):
                raise InvalidField(f"{path}.nodePort", f"not allowed for type {svc_type}")
            node_port = _int(p["nodePort"], f"{path}.nodePort", 1, 65535)
        ports.append(
            ServicePort(
                port=port,
                protocol=protocol,
                name=name,
                target_port=target_port,
                node_port=node_port,
                app_protocol=_str(p.get("appProtocol"), f"{path}.appProtocol"),
            )
        )
    if not ports and svc_type != "ExternalName" and not headless:
        raise InvalidField("spec.ports", "required (at least one port)")
    return tuple(ports)


# ---- EndpointSlice and legacy Endpoints --------------------------------------------------


def parse_endpoint_slice(doc: dict) -> EndpointSlice:
    _known(doc, _SLICE_TOP, "")
    namespace, name, meta = metadata(doc, namespaced=True)
    labels = _labels(meta.get("labels"), "metadata.labels")
    address_type = _choice(doc.get("addressType"), "addressType", ("IPv4", "IPv6", "FQDN"), "")
    endpoints = []
    for i, ep in enumerate(_list(doc.get("endpoints"), "endpoints")):
        path = f"endpoints[{i}]"
        ep = _obj(ep, path)
        _known(ep, _SLICE_ENDPOINT, path)
        addrs = _list(ep.get("addresses"), f"{path}.addresses")
        if not addrs:
            raise InvalidField(f"{path}.addresses", "at least one address is required")
        if address_type == "FQDN":
            addresses = tuple(_str(a, f"{path}.addresses[{j}]") for j, a in enumerate(addrs))
        else:
            addresses = tuple(_ip(a, f"{path}.addresses[{j}]") for j, a in enumerate(addrs))
            for j, a in enumerate(addresses):
                if _family(a) != address_type:
                    raise InvalidField(
                        f"{path}.addresses[{j}]", f"{a} does not match addressType {address_type}"
                    )
        cond = _obj(ep.get("conditions"), f"{path}.conditions")
        _known(cond, _SLICE_CONDITIONS, f"{path}.conditions")
        ready = _bool(cond.get("ready"), f"{path}.conditions.ready", True)
        hints = _obj(ep.get("hints"), f"{path}.hints")
        target = _obj(ep.get("targetRef"), f"{path}.targetRef")
        endpoints.append(
            Endpoint(
                addresses=addresses,
                ready=ready,
                serving=_bool(cond.get("serving"), f"{path}.conditions.serving", ready),
                terminating=_bool(cond.get("terminating"), f"{path}.conditions.terminating", False),
                hostname=_str(ep.get("hostname"), f"{path}.hostname"),
                node_name=_str(ep.get("nodeName"), f"{path}.nodeName"),
                zone=_str(ep.get("zone"), f"{path}.zone"),
                hint_zones=tuple(
                    _str(
                        _obj(z, f"{path}.hints.forZones[{j}]").get("name"),
                        f"{path}.hints.forZones[{j}].name",
                    )
                    for j, z in enumerate(_list(hints.get("forZones"), f"{path}.hints.forZones"))
                ),
                target_pod=_str(target.get("name"), f"{path}.targetRef.name")
                if target.get("kind", "Pod") == "Pod"
                else "",
            )
        )
    ports = _endpoint_ports(doc.get("ports"), "ports", _SLICE_PORT)
    return EndpointSlice(
        namespace=namespace,
        name=name,
        service_name=dict(labels).get("kubernetes.io/service-name", ""),
        address_type=address_type,
        endpoints=tuple(endpoints),
        ports=ports,
        labels=labels,
    )


def _endpoint_ports(raw: Any, path: str, allowed: frozenset) -> tuple[EndpointPort, ...]:
    ports = []
    names: set[str] = set()
    for i, p in enumerate(_list(raw, path)):
        ppath = f"{path}[{i}]"
        p = _obj(p, ppath)
        _known(p, allowed, ppath)
        name = _str(p.get("name"), f"{ppath}.name")
        if name in names:
            raise InvalidField(f"{ppath}.name", f"duplicate port name {name!r}")
        names.add(name)
        ports.append(
            EndpointPort(
                port=None if p.get("port") is None else _int(p["port"], f"{ppath}.port", 1, 65535),
                protocol=_choice(p.get("protocol"), f"{ppath}.protocol", _PROTOCOLS, "TCP"),
                name=name,
                app_protocol=_str(p.get("appProtocol"), f"{ppath}.appProtocol"),
            )
        )
    return tuple(ports)


def parse_endpoints(doc: dict) -> list[EndpointSlice]:
    """Legacy v1 Endpoints -> one slice per (subset, address family), as the mirroring
    controller does, named `<name>-<n>` and owned by the service of the same name."""
    _known(doc, _ENDPOINTS_TOP, "")
    namespace, name, _meta = metadata(doc, namespaced=True)
    slices: list[EndpointSlice] = []
    for i, subset in enumerate(_list(doc.get("subsets"), "subsets")):
        spath = f"subsets[{i}]"
        subset = _obj(subset, spath)
        _known(subset, _ENDPOINTS_SUBSET, spath)
        ports = _endpoint_ports(subset.get("ports"), f"{spath}.ports", _SLICE_PORT)
        by_family: dict[str, list[Endpoint]] = {}
        for field_name, ready in (("addresses", True), ("notReadyAddresses", False)):
            for j, a in enumerate(_list(subset.get(field_name), f"{spath}.{field_name}")):
                apath = f"{spath}.{field_name}[{j}]"
                a = _obj(a, apath)
                _known(a, _ENDPOINTS_ADDRESS, apath)
                ip = _ip(a.get("ip"), f"{apath}.ip")
                target = _obj(a.get("targetRef"), f"{apath}.targetRef")
                by_family.setdefault(_family(ip), []).append(
                    Endpoint(
                        addresses=(ip,),
                        ready=ready,
                        serving=ready,
                        hostname=_str(a.get("hostname"), f"{apath}.hostname"),
                        node_name=_str(a.get("nodeName"), f"{apath}.nodeName"),
                        target_pod=_str(target.get("name"), f"{apath}.targetRef.name"),
                    )
                )
        for family, eps in sorted(by_family.items()):
            slices.append(
                EndpointSlice(
                    namespace=namespace,
                    name=f"{name}-{len(slices)}",
                    service_name=name,
                    address_type=family,
                    endpoints=tuple(eps),
                    ports=ports,
                    labels=(
                        (
                            "endpointslice.kubernetes.io/managed-by",
                            "endpointslicemirroring-controller.k8s.io",
                        ),
                        ("kubernetes.io/service-name", name),
                    ),
                )
            )
    return slices


# ---- Pod and Node ------------------------------------------------------------------------


def parse_pod(doc: dict) -> Pod:
    _known(doc, _TOP, "")
    namespace, name, meta = metadata(doc, namespaced=True)
    spec = _obj(doc.get("spec"), "spec")
    status = _obj(doc.get("status"), "status")
    ips = [
        _ip(_obj(p, f"status.podIPs[{i}]").get("ip"), f"status.podIPs[{i}].ip")
        for i, p in enumerate(_list(status.get("podIPs"), "status.podIPs"))
    ]
    if not ips and status.get("podIP"):
        ips = [_ip(status["podIP"], "status.podIP")]
    ready = any(
        _obj(c, "status.conditions").get("type") == "Ready"
        and _obj(c, "status.conditions").get("status") == "True"
        for c in _list(status.get("conditions"), "status.conditions")
    )
    dns_config = None
    if spec.get("dnsConfig") is not None:
        dc = _obj(spec["dnsConfig"], "spec.dnsConfig")
        dns_config = PodDNSConfig(
            nameservers=tuple(
                _ip(n, f"spec.dnsConfig.nameservers[{i}]")
                for i, n in enumerate(_list(dc.get("nameservers"), "spec.dnsConfig.nameservers"))
            ),
            searches=tuple(
                _str(s, f"spec.dnsConfig.searches[{i}]")
                for i, s in enumerate(_list(dc.get("searches"), "spec.dnsConfig.searches"))
            ),
            options=tuple(
                (
                    _str(
                        _obj(o, f"spec.dnsConfig.options[{i}]").get("name"),
                        f"spec.dnsConfig.options[{i}].name",
                    ),
                    None if o.get("value") is None else str(o["value"]),
                )
                for i, o in enumerate(_list(dc.get("options"), "spec.dnsConfig.options"))
            ),
        )
    containers = []
    for i, c in enumerate(_list(spec.get("containers"), "spec.containers")):
        path = f"spec.containers[{i}]"
        c = _obj(c, path)
        containers.append(
            Container(
                name=_str(c.get("name"), f"{path}.name"),
                image=_str(c.get("image"), f"{path}.image"),
                ports=tuple(
                    ContainerPort(
                        container_port=_int(
                            _obj(p, f"{path}.ports[{j}]").get("containerPort"),
                            f"{path}.ports[{j}].containerPort",
                            1,
                            65535,
                        ),
                        protocol=_choice(
                            p.get("protocol"), f"{path}.ports[{j}].protocol", _PROTOCOLS, "TCP"
                        ),
                        name=_str(p.get("name"), f"{path}.ports[{j}].name"),
                    )
                    for j, p in enumerate(_list(c.get("ports"), f"{path}.ports"))
                ),
                command=tuple(str(a) for a in _list(c.get("command"), f"{path}.command")),
                args=tuple(str(a) for a in _list(c.get("args"), f"{path}.args")),
                env=tuple(
                    (
                        _str(_obj(e, f"{path}.env[{j}]").get("name"), f"{path}.env[{j}].name"),
                        str(e.get("value", "")),
                    )
                    for j, e in enumerate(_list(c.get("env"), f"{path}.env"))
                ),
            )
        )
    return Pod(
        namespace=namespace,
        name=name,
        labels=_labels(meta.get("labels"), "metadata.labels"),
        node_name=_str(spec.get("nodeName"), "spec.nodeName"),
        pod_ips=tuple(ips),
        host_network=_bool(spec.get("hostNetwork"), "spec.hostNetwork", False),
        phase=_str(status.get("phase"), "status.phase", "Pending"),
        ready=ready,
        terminating=meta.get("deletionTimestamp") is not None,
        hostname=_str(spec.get("hostname"), "spec.hostname"),
        subdomain=_str(spec.get("subdomain"), "spec.subdomain"),
        dns_policy=_choice(spec.get("dnsPolicy"), "spec.dnsPolicy", _DNS_POLICIES, "ClusterFirst"),
        dns_config=dns_config,
        containers=tuple(containers),
        uid=_str(meta.get("uid"), "metadata.uid"),
    )


def parse_node(doc: dict) -> Node:
    _known(doc, _TOP, "")
    _, name, meta = metadata(doc, namespaced=False)
    spec = _obj(doc.get("spec"), "spec")
    status = _obj(doc.get("status"), "status")
    cidrs = [
        _cidr(c, f"spec.podCIDRs[{i}]")
        for i, c in enumerate(_list(spec.get("podCIDRs"), "spec.podCIDRs"))
    ]
    if not cidrs and spec.get("podCIDR"):
        cidrs = [_cidr(spec["podCIDR"], "spec.podCIDR")]
    addresses = []
    for i, a in enumerate(_list(status.get("addresses"), "status.addresses")):
        a = _obj(a, f"status.addresses[{i}]")
        kind = _str(a.get("type"), f"status.addresses[{i}].type")
        addr = _str(a.get("address"), f"status.addresses[{i}].address")
        if kind in ("InternalIP", "ExternalIP"):
            addr = _ip(addr, f"status.addresses[{i}].address")
        addresses.append((kind, addr))
    return Node(
        name=name,
        labels=_labels(meta.get("labels"), "metadata.labels"),
        addresses=tuple(addresses),
        pod_cidrs=tuple(cidrs),
    )


_PARSERS: dict[str, Callable[[dict], KubeObject]] = {
    "Service": parse_service,
    "EndpointSlice": parse_endpoint_slice,
    "Pod": parse_pod,
    "Node": parse_node,
}
_CLUSTER_SCOPED = frozenset(
    {
        "Node",
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "PersistentVolume",
        "StorageClass",
    }
)


def parse_object(doc: dict, *, strict: bool = True) -> list[KubeObject]:
    """One manifest document (not a List) -> objects; raises InvalidField.

    strict=False accepts field names this module does not know (use it for API server input).
    """
    token = _strict.set(strict)
    try:
        return _parse_object(doc)
    finally:
        _strict.reset(token)


def parse_as(doc: dict, cls: type[T], *, strict: bool = True) -> T:
    """One document that must be a CLS (Service, Pod, ...); raises InvalidField otherwise."""
    objects = parse_object(doc, strict=strict)
    if len(objects) != 1 or not isinstance(objects[0], cls):
        raise InvalidField("kind", f"expected {cls.__name__}, got {doc.get('kind')!r}")
    return objects[0]


def _parse_object(doc: dict) -> list[KubeObject]:
    kind = _str(doc.get("kind"), "kind")
    if not kind:
        raise InvalidField("kind", "required")
    if kind == "Endpoints":
        return list(parse_endpoints(doc))
    parser = _PARSERS.get(kind)
    if parser is not None:
        return [parser(doc)]
    namespace, name, _ = metadata(doc, namespaced=kind not in _CLUSTER_SCOPED)
    return [RawObject(kind=kind, namespace=namespace, name=name, body=doc)]
