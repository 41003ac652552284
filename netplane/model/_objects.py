"""The Kubernetes objects netplane consumes, reduced to what the data plane needs.

Frozen and slotted: objects are shared between threads (sources write, proxy and DNS read)
and compared for equality to drop no-op updates, so they must never change in place.
Defaults follow the API server's defaulting, so a manifest without `protocol` means TCP.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]
ObjectKey = tuple[str, str, str]  # (kind, namespace, name); namespace "" for cluster-scoped
NamespacedName = tuple[str, str]  # (namespace, name) of a namespaced object of a known kind


@dataclass(frozen=True, slots=True)
class ServicePort:
    port: int
    protocol: str = "TCP"  # TCP | UDP | SCTP
    name: str = ""
    target_port: int | str = 0  # number, or a container port name; 0 = same as port
    node_port: int = 0
    app_protocol: str = ""

    @property
    def resolved_target_port(self) -> int | str:
        return self.target_port or self.port


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    type: str = "ClusterIP"  # ClusterIP | NodePort | LoadBalancer | ExternalName
    cluster_ips: tuple[str, ...] = ()  # primary first; empty when headless or unallocated
    headless: bool = False  # clusterIP: None
    ip_families: tuple[str, ...] = ()  # IPv4 / IPv6, in cluster_ips order
    ports: tuple[ServicePort, ...] = ()
    selector: Labels | None = None  # None: no selector (endpoints are hand-written)
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()  # status.loadBalancer.ingress[].ip
    load_balancer_source_ranges: tuple[str, ...] = ()
    session_affinity: str = "None"  # None | ClientIP
    session_affinity_timeout: int = 10800
    external_traffic_policy: str = "Cluster"  # Cluster | Local
    internal_traffic_policy: str = "Cluster"  # Cluster | Local
    health_check_node_port: int = 0
    publish_not_ready_addresses: bool = False
    external_name: str = ""
    labels: Labels = ()

    @property
    def key(self) -> ObjectKey:
        return ("Service", self.namespace, self.name)

    @property
    def service_key(self) -> NamespacedName:
        return (self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class Endpoint:
    addresses: tuple[str, ...]
    ready: bool = True  # unset in the API means ready
    serving: bool = True  # unset means "same as ready"; resolved at parse time
    terminating: bool = False
    hostname: str = ""
    node_name: str = ""
    zone: str = ""
    hint_zones: tuple[str, ...] = ()
    target_pod: str = ""  # targetRef name when it is a Pod


@dataclass(frozen=True, slots=True)
class EndpointPort:
    port: int | None = None  # None: all ports (only valid with selectorless services)
    protocol: str = "TCP"
    name: str = ""
    app_protocol: str = ""


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str
    name: str
    service_name: str  # label kubernetes.io/service-name; "" when unowned
    address_type: str = "IPv4"  # IPv4 | IPv6 | FQDN
    endpoints: tuple[Endpoint, ...] = ()
    ports: tuple[EndpointPort, ...] = ()
    labels: Labels = ()

    @property
    def key(self) -> ObjectKey:
        return ("EndpointSlice", self.namespace, self.name)

    @property
    def service_key(self) -> NamespacedName:
        return (self.namespace, self.service_name)


@dataclass(frozen=True, slots=True)
class ContainerPort:
    container_port: int
    protocol: str = "TCP"
    name: str = ""


@dataclass(frozen=True, slots=True)
class Container:
    name: str
    image: str = ""
    ports: tuple[ContainerPort, ...] = ()
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class PodDNSConfig:
    nameservers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[tuple[str, str | None], ...] = ()  # (name, value or None)


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: str
    name: str
    labels: Labels = ()
    node_name: str = ""
    pod_ips: tuple[str, ...] = ()
    host_network: bool = False
    phase: str = "Running"
    ready: bool = True
    terminating: bool = False  # metadata.deletionTimestamp is set
    hostname: str = ""
    subdomain: str = ""
    dns_policy: str = "ClusterFirst"
    dns_config: PodDNSConfig | None = None
    containers: tuple[Container, ...] = ()
    uid: str = ""

    @property
    def key(self) -> ObjectKey:
        return ("Pod", self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    labels: Labels = ()
    addresses: tuple[
        tuple[str, str], ...
    ] = ()  # (type, address), e.g. ("InternalIP", "192.168.0.152")
    pod_cidrs: tuple[str, ...] = ()

    @property
    def key(self) -> ObjectKey:
        return ("Node", "", self.name)

    @property
    def internal_ips(self) -> tuple[str, ...]:
        return tuple(a for t, a in self.addresses if t == "InternalIP")


@dataclass(frozen=True, slots=True)
class RawObject:
    """A well-formed manifest object of a kind the data plane does not model (Deployment, ...).

    Kept so that other consumers (the emulated control plane) can use it.
    """

    kind: str
    namespace: str
    name: str
    body: dict = field(hash=False)

    @property
    def key(self) -> ObjectKey:
        return (self.kind, self.namespace, self.name)


KubeObject = Service | EndpointSlice | Pod | Node | RawObject
