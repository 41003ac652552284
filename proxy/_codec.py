"""The API's Services and EndpointSlices decoded with msgspec straight into `netplane.model`.

`netplane.kube.source.JsonCodec` turns a list page into dicts (`json`) and hands each to the
model's parser, which walks every field in Python: at 10,000 Services and 10,000
EndpointSlices of 5 endpoints that is ~1.8 s of CPU for the proxy's start (about as much as
rendering and programming all of them). Here msgspec decodes a page into typed structs of
only the fields the parser reads (managedFields and the rest are skipped in C) and a lean
copy of the parser's rules builds the very same model objects.

Same objects, same errors, by construction:
- the fast path handles what the API server sends for ordinary Services and slices; at the
  first thing it does not handle, or any check that fails, it hands the item (turned back
  into the dict the parser reads: `_as_dict`) to `netplane.model.parse_object`, which
  builds the object or raises the `InvalidField` the JSON path raises;
- a page whose types do not match the structs (a null where a list belongs, ...) and every
  watch event go the JSON path (`JsonCodec`) whole;
- tests/proxy/test_codec.py compares both paths over a corpus of valid and invalid objects
  and the rendered rulesets of both backends.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import msgspec

from netplane.kube.liststream import Decoders, stream_list
from netplane.kube.source import Event, Item, JsonCodec, Resource
from netplane.model import (
    Endpoint,
    EndpointPort,
    EndpointSlice,
    InvalidField,
    Service,
    ServicePort,
    parse_object,
)
from netplane.model._fields import _DNS1123_LABEL, _cidr, _ip
from netplane.model._parse import _IANA_SVC_NAME, _POLICIES, _PROTOCOLS, _SERVICE_TYPES
from netplane.state import Stored

# ---- the API's JSON: the fields the model's parser reads; None = absent or null ----------


class _Wire(msgspec.Struct, omit_defaults=True, gc=False):
    """omit_defaults: `msgspec.to_builtins` gives back only what the JSON held (a null
    and an absent field mean the same to the parser)."""


class _Meta(_Wire):
    name: str | None = None
    namespace: str | None = None
    resourceVersion: str | None = None
    labels: dict[str, str] | None = None


class _ServicePort(_Wire):
    name: str | None = None
    protocol: str | None = None
    appProtocol: str | None = None
    port: int | None = None
    targetPort: int | str | None = None
    nodePort: int | None = None


class _ClientIP(_Wire):
    timeoutSeconds: int | None = None


class _AffinityConfig(_Wire):
    clientIP: _ClientIP | None = None


class _ServiceSpec(_Wire):
    type: str | None = None
    clusterIP: str | None = None
    clusterIPs: list[str] | None = None
    ipFamilies: list[str] | None = None
    ports: list[_ServicePort] | None = None
    selector: dict[str, str] | None = None
    externalIPs: list[str] | None = None
    externalName: str | None = None
    loadBalancerIP: str | None = None
    loadBalancerSourceRanges: list[str] | None = None
    sessionAffinity: str | None = None
    sessionAffinityConfig: _AffinityConfig | None = None
    externalTrafficPolicy: str | None = None
    internalTrafficPolicy: str | None = None
    healthCheckNodePort: int | None = None
    publishNotReadyAddresses: bool | None = None


class _Ingress(_Wire):
    ip: str | None = None


class _LoadBalancer(_Wire):
    ingress: list[_Ingress] | None = None


class _ServiceStatus(_Wire):
    loadBalancer: _LoadBalancer | None = None


class _Service(_Wire):
    metadata: _Meta | None = None
    spec: _ServiceSpec | None = None
    status: _ServiceStatus | None = None


class _Conditions(_Wire):
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None


class _Zone(_Wire):
    name: str | None = None


class _Hints(_Wire):
    forZones: list[_Zone] | None = None


class _TargetRef(_Wire):
    # the one field where absent (a Pod) and null (not a Pod) differ to the parser
    kind: str | msgspec.UnsetType | None = msgspec.UNSET
    name: str | None = None


class _Endpoint(_Wire):
    addresses: list[str] | None = None
    conditions: _Conditions | None = None
    hostname: str | None = None
    nodeName: str | None = None
    zone: str | None = None
    hints: _Hints | None = None
    targetRef: _TargetRef | None = None


class _SlicePort(_Wire):
    name: str | None = None
    protocol: str | None = None
    port: int | None = None
    appProtocol: str | None = None


class _Slice(_Wire):
    metadata: _Meta | None = None
    addressType: str | None = None
    endpoints: list[_Endpoint] | None = None
    ports: list[_SlicePort] | None = None


class _Unusual(Exception):
    """Not for the fast path: the parser decides."""


_EMPTY_META = _Meta()
_EMPTY_SPEC = _ServiceSpec()


# ---- wire struct -> model object (the parser's rules, for what the API server sends) ------


def _labels(labels: dict[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items())) if labels else ()


def _namespace_name(meta: _Meta) -> tuple[str, str]:
    name = meta.name
    namespace = "default" if meta.namespace is None else meta.namespace
    if not name or not _DNS1123_LABEL.match(namespace):
        raise _Unusual()
    return namespace, name


def _choice(value: str | None, choices: tuple[str, ...], default: str) -> str:
    if value is None:
        return default
    if value not in choices:
        raise _Unusual()
    return value


def _port_number(value: int | None) -> int:
    if value is None or not 1 <= value <= 65535:
        raise _Unusual()
    return value


def service(raw: _Service) -> Service:
    meta, spec = raw.metadata or _EMPTY_META, raw.spec or _EMPTY_SPEC
    namespace, name = _namespace_name(meta)
    svc_type = _choice(spec.type, _SERVICE_TYPES, "ClusterIP")
    if not _DNS1123_LABEL.match(name) or svc_type == "ExternalName":
        raise _Unusual()
    ips = spec.clusterIPs or ([spec.clusterIP] if spec.clusterIP else [])
    headless = bool(ips) and ips[0] == "None"
    if headless:
        if len(ips) > 1:
            raise _Unusual()
        cluster_ips: tuple[str, ...] = ()
    else:
        cluster_ips = tuple(_ip(ip, "") for ip in ips)
        v6 = [":" in ip for ip in cluster_ips]
        if len(v6) > 2 or (len(v6) == 2 and v6[0] == v6[1]):
            raise _Unusual()
        if spec.clusterIP and cluster_ips and _ip(spec.clusterIP, "") != cluster_ips[0]:
            raise _Unusual()
    families = tuple("IPv6" if ":" in ip else "IPv4" for ip in cluster_ips)
    if not families and spec.ipFamilies:
        families = tuple(spec.ipFamilies)
    ports = _service_ports(spec.ports or [], svc_type)
    if not ports and not headless:
        raise _Unusual()
    timeout = 10800
    config = spec.sessionAffinityConfig
    if config is not None and config.clientIP is not None:
        seconds = config.clientIP.timeoutSeconds
        if seconds is not None:
            if not 1 <= seconds <= 86400:
                raise _Unusual()
            timeout = seconds
    lb_ips: tuple[str, ...] = ()
    if svc_type == "LoadBalancer":
        balancer = raw.status.loadBalancer if raw.status is not None else None
        found = [_ip(i.ip, "") for i in (balancer.ingress or []) if i.ip] if balancer else []
        if not found and spec.loadBalancerIP:
            found = [_ip(spec.loadBalancerIP, "")]
        lb_ips = tuple(found)
    elif raw.status is not None and raw.status.loadBalancer is not None:
        for ingress in raw.status.loadBalancer.ingress or []:
            if ingress.ip:
                _ip(ingress.ip, "")  # checked by the parser whatever the type
    health = spec.healthCheckNodePort
    if health and not 1 <= health <= 65535:
        raise _Unusual()
    return Service(
        namespace=namespace,
        name=name,
        type=svc_type,
        cluster_ips=cluster_ips,
        headless=headless,
        ip_families=families,
        ports=ports,
        selector=None if spec.selector is None else _labels(spec.selector),
        external_ips=tuple(_ip(ip, "") for ip in spec.externalIPs or ()),
        load_balancer_ips=lb_ips,
        load_balancer_source_ranges=tuple(
            _cidr(r, "") for r in spec.loadBalancerSourceRanges or ()
        ),
        session_affinity=_choice(spec.sessionAffinity, ("None", "ClientIP"), "None"),
        session_affinity_timeout=timeout,
        external_traffic_policy=_choice(spec.externalTrafficPolicy, _POLICIES, "Cluster"),
        internal_traffic_policy=_choice(spec.internalTrafficPolicy, _POLICIES, "Cluster"),
        health_check_node_port=health or 0,
        publish_not_ready_addresses=bool(spec.publishNotReadyAddresses),
        external_name="",
        labels=_labels(meta.labels),
    )


def _service_ports(raw: list[_ServicePort], svc_type: str) -> tuple[ServicePort, ...]:
    ports = []
    seen: set[tuple[int, str]] = set()
    names: set[str] = set()
    for p in raw:
        port = _port_number(p.port)
        protocol = _choice(p.protocol, _PROTOCOLS, "TCP")
        name = p.name or ""
        if (len(raw) > 1 and not name) or (name and not _DNS1123_LABEL.match(name)):
            raise _Unusual()
        if name in names or (port, protocol) in seen:
            raise _Unusual()
        names.add(name)
        seen.add((port, protocol))
        target = p.targetPort
        if target is None or target == 0:
            target_port: int | str = port
        elif isinstance(target, str) and not target.isdigit():
            if not _IANA_SVC_NAME.match(target):
                raise _Unusual()
            target_port = target
        else:
            target_port = _port_number(int(target))
        node_port = 0
        if p.nodePort:
            if svc_type not in ("NodePort", "LoadBalancer"):
                raise _Unusual()
            node_port = _port_number(p.nodePort)
        ports.append(ServicePort(port, protocol, name, target_port, node_port, p.appProtocol or ""))
    return tuple(ports)


_FAMILIES = {"IPv4": False, "IPv6": True}  # address type -> an IPv6 address has a colon


def endpoint_slice(raw: _Slice) -> EndpointSlice:
    meta = raw.metadata or _EMPTY_META
    namespace, name = _namespace_name(meta)
    address_type = raw.addressType
    v6 = _FAMILIES.get(address_type)  # type: ignore[arg-type]
    if v6 is None:  # FQDN (the proxy ignores those) or invalid: the parser's
        raise _Unusual()
    endpoints = []
    for ep in raw.endpoints or ():
        if not ep.addresses:
            raise _Unusual()
        addresses = tuple([_ip(a, "") for a in ep.addresses])
        for a in addresses:
            if (":" in a) is not v6:
                raise _Unusual()
        cond = ep.conditions
        if cond is None:
            ready, serving, terminating = True, True, False
        else:
            ready = cond.ready is not False
            serving = ready if cond.serving is None else cond.serving
            terminating = bool(cond.terminating)
        hints = ep.hints
        zones: tuple[str, ...] = ()
        if hints is not None and hints.forZones:
            zones = tuple([z.name or "" for z in hints.forZones])
        target = ep.targetRef
        pod = ""
        if target is not None and target.kind in ("Pod", msgspec.UNSET):
            pod = target.name or ""
        endpoints.append(
            Endpoint(
                addresses,
                ready,
                serving,
                terminating,
                ep.hostname or "",
                ep.nodeName or "",
                ep.zone or "",
                zones,
                pod,
            )
        )
    ports = []
    names: set[str] = set()
    for p in raw.ports or ():
        port_name = p.name or ""
        if port_name in names:
            raise _Unusual()
        names.add(port_name)
        number = None if p.port is None else _port_number(p.port)
        protocol = _choice(p.protocol, _PROTOCOLS, "TCP")
        ports.append(EndpointPort(number, protocol, port_name, p.appProtocol or ""))
    labels = meta.labels or {}
    return EndpointSlice(
        namespace=namespace,
        name=name,
        service_name=labels.get("kubernetes.io/service-name", ""),
        address_type=address_type,  # type: ignore[arg-type]
        endpoints=tuple(endpoints),
        ports=tuple(ports),
        labels=_labels(labels),
    )


_KINDS: dict[str, tuple[type, Any]] = {
    "Service": (_Service, service),
    "EndpointSlice": (_Slice, endpoint_slice),
}


def _as_dict(raw: msgspec.Struct, resource: Resource) -> dict[str, Any]:
    """The item as the parser reads it (what the JSON held of the fields it reads)."""
    doc: dict[str, Any] = msgspec.to_builtins(raw)
    return {"kind": resource.kind, "apiVersion": resource.api_version, **doc}


class ModelCodec:
    """`netplane.kube.source` codec: the API's JSON -> `netplane.model` objects, as
    `JsonCodec` makes them, ~10x faster for lists of Services and EndpointSlices."""

    def __init__(self, resource: Resource) -> None:
        self.resource = resource
        self.kind = resource.kind
        self.wire, self.convert = _KINDS[resource.kind]
        self.json = JsonCodec(resource)  # odd pages and watch events
        self.decoders = Decoders(self.kind, self.wire)

    def page(self, body: bytes) -> tuple[Sequence[Item], str, str]:
        try:
            doc: Any = self.decoders.list.decode(body)  # a struct made at run time (defstruct)
        except msgspec.ValidationError:  # types the structs do not expect: the JSON path
            return self.json.page(body)
        return self._keyed(doc.items), doc.metadata.resourceVersion, doc.metadata.continue_

    def stream(self, response: Any) -> Iterator[tuple[Sequence[Item], str, str]]:
        """The list decoded in runs of whole items while it arrives (`stream_list`), so
        that they are converted while the API server still encodes the rest."""
        return stream_list(response, self.decoders.head, self._run, self.page)

    def _run(self, data: bytes) -> Sequence[Item] | None:
        try:
            return self._keyed(self.decoders.items.decode(data))
        except msgspec.ValidationError:  # types the structs do not expect: the JSON path
            try:
                return [self.json._item(item) for item in msgspec.json.decode(data)]
            except msgspec.DecodeError:
                return None
        except msgspec.DecodeError:  # a cut inside an item: more data first
            return None

    def _keyed(self, wire: list[Any]) -> list[Item]:
        kind = self.kind
        items = []
        for raw in wire:
            meta = raw.metadata or _EMPTY_META
            key = (kind, meta.namespace or "", meta.name or "")
            items.append((key, meta.resourceVersion or "", raw))
        return items

    def event(self, line: bytes) -> Event:
        return self.json.event(line)

    def objects(self, raw: Any) -> Sequence[Stored]:
        if isinstance(raw, dict):
            return self.json.objects(raw)
        try:
            return (self.convert(raw),)
        except (_Unusual, InvalidField):
            return parse_object(_as_dict(raw, self.resource), strict=False)


def codec(resource: Resource) -> ModelCodec | JsonCodec:
    """The proxy's codec for RESOURCE: `ModelCodec` for Services and EndpointSlices (the
    bulk of its lists), `JsonCodec` for the rest (Nodes: a handful)."""
    return ModelCodec(resource) if resource.kind in _KINDS else JsonCodec(resource)
