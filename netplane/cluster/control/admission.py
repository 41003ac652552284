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

from netplane.cluster.control import defaults
from netplane.cluster.control.naming import suffix, uid
from netplane.cluster.control.topology import NODE_PORT_RANGE, Topology
from netplane.cluster.control.validation import (
    API_VERSIONS,
    name_problems,
    qualified_kind,
    schema_problems,
)
from netplane.cluster.control.workloads import parse_deployment
from netplane.model import InvalidField, parse_object

Key = tuple[str, str, str]
Objects = Mapping[Key, dict]
SUPPORTED = (
    "Deployment",
    "ReplicaSet",
    "Service",
    "Pod",
    "EndpointSlice",
    "Endpoints",
    "Namespace",
)
_CLUSTER_SCOPED = ("Namespace", "Node")


class AdmissionError(InvalidField):
    """The API server's refusal: `str()` is its message; code and reason its Status."""

    def __init__(
        self, field: str, message: str, full: str, code: int = 422, reason: str = "Invalid"
    ) -> None:
        super().__init__(field, message)
        self.full, self.code, self.reason = full, code, reason

    def __str__(self) -> str:
        return self.full


def object_key(body: dict) -> Key:
    kind = body.get("kind", "")
    meta = body.get("metadata") or {}
    ns = "" if kind in _CLUSTER_SCOPED else meta.get("namespace") or "default"
    return (kind, ns, meta.get("name", ""))


def _invalid(kind: str, name: str, problems: list[str]) -> AdmissionError:
    field, _, message = problems[0].partition(": ")
    full = f'{qualified_kind(kind)} "{name}" is invalid: '
    full += problems[0] if len(problems) == 1 else "[" + ", ".join(problems) + "]"
    return AdmissionError(field, message, full)


def validate(body: object, objects: Objects) -> None:
    """Refuse BODY as the API server would (raises AdmissionError)."""
    if not isinstance(body, dict):
        raise AdmissionError(
            "", "not an object", "the document is not a Kubernetes object", 400, "BadRequest"
        )
    kind, api_version = body.get("kind"), body.get("apiVersion")
    if not kind:
        raise AdmissionError("kind", "required", "Object 'Kind' is missing", 400, "BadRequest")
    if not api_version:
        raise AdmissionError(
            "apiVersion", "required", f"{kind}: apiVersion not set", 400, "BadRequest"
        )
    if kind not in SUPPORTED:
        raise AdmissionError(
            "kind",
            f"{kind!r} is not supported (supported: {', '.join(SUPPORTED)})",
            f'no matches for kind "{kind}" in version "{api_version}" (the emulated cluster '
            f"serves {', '.join(SUPPORTED)})",
            404,
            "NotFound",
        )
    if API_VERSIONS[kind] != api_version:
        raise AdmissionError(
            "apiVersion",
            f"{kind} is served as {API_VERSIONS[kind]}",
            f'no matches for kind "{kind}" in version "{api_version}" '
            f"({kind} is {API_VERSIONS[kind]})",
            404,
            "NotFound",
        )
    meta = body.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    version = api_version.rsplit("/", 1)[-1]
    unknown, invalid = schema_problems(body)
    if unknown:
        raise AdmissionError(
            unknown[0].split('"')[1],
            "unknown field",
            f'{kind} in version "{version}" cannot be handled as a {kind}: strict decoding '
            f"error: {', '.join(unknown)}",
            400,
            "BadRequest",
        )
    if not isinstance(name, str) or not name:
        raise AdmissionError(
            "metadata.name",
            "required",
            f"{qualified_kind(kind)} is invalid: metadata.name: Required value: "
            "name or generateName is required",
        )
    problems = name_problems(kind, name)
    ns = meta.get("namespace") if isinstance(meta, dict) else None
    if ns and kind not in _CLUSTER_SCOPED:
        problems += name_problems("Namespace", ns, "metadata.namespace")
    if kind in ("Deployment", "ReplicaSet"):
        for i, c in enumerate(
            ((body.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []
        ):
            if isinstance(c, dict) and not c.get("image"):
                invalid.append(f"spec.template.spec.containers[{i}].image: Required value")
    if kind == "Pod":
        for i, c in enumerate((body.get("spec") or {}).get("containers") or []):
            if isinstance(c, dict) and not c.get("image"):
                invalid.append(f"spec.containers[{i}].image: Required value")
    problems += invalid
    if problems:
        raise _invalid(kind, name, problems)
    if kind not in _CLUSTER_SCOPED:
        namespace = ns or "default"
        space = objects.get(("Namespace", "", namespace))
        if space is None and any(k[0] == "Namespace" for k in objects):
            raise AdmissionError(
                "metadata.namespace",
                "not found",
                f'namespaces "{namespace}" not found',
                404,
                "NotFound",
            )
        if space is not None and space["metadata"].get("deletionTimestamp"):
            raise AdmissionError(
                "metadata.namespace",
                "terminating",
                f'{qualified_kind(kind)} "{name}" is forbidden: unable to create new content in '
                f"namespace {namespace} because it is being terminated",
                403,
                "Forbidden",
            )


def admit(
    body: dict,
    objects: Objects,
    topo: Topology,
    rng: random.Random,
    now: str,
    trusted: bool = False,
) -> dict:
    """The object to store for BODY; raises AdmissionError (with the field) when refused.
    TRUSTED objects (the cluster's own, or ones it stored before) skip the schema check."""
    if not trusted:
        validate(body, objects)
    kind = body["kind"]
    body = copy.deepcopy(body)
    defaults.apply(body)
    meta = body["metadata"]
    if kind not in _CLUSTER_SCOPED:
        meta.setdefault("namespace", "default")
    old = objects.get(object_key(body))
    old_meta = (old or {}).get("metadata", {})
    if kind == "Pod" and isinstance(body.get("spec"), dict):
        name = defaults.token_volume_name(old) or defaults.TOKEN_VOLUME_PREFIX + suffix(rng)
        defaults.token_volume(body["spec"], name)
    meta["uid"] = old_meta.get("uid") or uid(rng)
    meta["creationTimestamp"] = (
        old_meta.get("creationTimestamp") or meta.get("creationTimestamp") or now
    )
    meta.pop("resourceVersion", None)
    try:
        if kind in ("Deployment", "ReplicaSet"):
            parse_deployment(body)
            template = body["spec"]["template"]
            parse_object(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "template", **(template.get("metadata") or {})},
                    "spec": template["spec"],
                }
            )
            generation = old_meta.get("generation", 1)
            if old is not None and old.get("spec") != body.get("spec"):
                generation += 1
            meta["generation"] = generation
            if old is not None:
                body["status"] = old.get("status", {})
            else:
                body.pop("status", None)
        elif kind == "Service":
            _allocate_service(body, old, objects, topo, rng)
        elif kind == "Pod":
            if old is not None:
                # Pods are immutable once created: keep what the scheduler and kubelet wrote,
                # but labels and annotations may change (`kubectl label pod`).
                changed = {**old["metadata"]}
                for field in ("labels", "annotations"):
                    changed.pop(field, None)
                    if meta.get(field):  # the API omits empty maps
                        changed[field] = meta[field]
                return {**old, "metadata": changed}
            body.pop("status", None)
            body["status"] = {"phase": "Pending"}
        elif kind == "Namespace":
            body["spec"] = {"finalizers": ["kubernetes"]}
            body["status"] = {"phase": "Active"}
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
        if kind not in ("Namespace", "ReplicaSet", "Deployment"):
            parse_object(body)  # the data plane's own validation, strict about field names
    except AdmissionError:
        raise
    except InvalidField as e:
        raise _invalid(
            kind, meta["name"], [f"{_template_path(kind, e.field)}: {e.message}"]
        ) from None
    return body


def _template_path(kind: str, field: str) -> str:
    if (
        kind in ("Deployment", "ReplicaSet")
        and field.startswith("spec.")
        and "template" not in field
    ):
        for prefix in ("spec.containers", "spec.dnsConfig", "spec.dnsPolicy"):
            if field.startswith(prefix):
                return "spec.template." + field
    return field


def _used(objects: Objects, skip: Key) -> tuple[set[str], set[tuple[int, str]], set[str]]:
    ips: set[str] = set()
    node_ports: set[tuple[int, str]] = set()
    lb: set[str] = set()
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
