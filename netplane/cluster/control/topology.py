"""The cluster's shape: nodes, addresses, namespace names (pure).

The default reproduces the lab the project was written for (two Raspberry Pis). Every
address here exists only inside namespaces the cluster creates; the root namespace never
gets an address or a route to them.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

LAB_NODES = (("pi-red", "192.168.0.152"), ("pi-black", "192.168.0.101"))
UNDERLAY_CIDR = "192.168.0.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/12"
KUBERNETES_IP = "10.96.0.1"
DNS_IP = "10.96.0.10"
LAPTOP_IP = "192.168.0.10"
ROUTER_IP = "192.168.0.1"
LB_POOL = ("192.168.0.240", "192.168.0.250")  # MetalLB-like range on the underlay
API_PORT = 6443
NODE_PORT_RANGE = (30000, 32767)


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    ip: str  # InternalIP on the underlay
    pod_cidr: str
    control_plane: bool = False
    index: int = 0


@dataclass(frozen=True, slots=True)
class Topology:
    cluster: str  # user-facing name, e.g. "netplane"
    id: str  # prefix of every namespace this cluster creates
    nodes: tuple[NodeSpec, ...]
    cluster_cidr: str = CLUSTER_CIDR
    service_cidr: str = SERVICE_CIDR
    underlay_cidr: str = UNDERLAY_CIDR
    laptop_ip: str = LAPTOP_IP
    router_ip: str = ROUTER_IP
    lb_pool: tuple[str, str] = LB_POOL

    @property
    def underlay_ns(self) -> str:
        return f"{self.id}-underlay"

    @property
    def laptop_ns(self) -> str:
        return f"{self.id}-laptop"

    def node_ns(self, node: str) -> str:
        return f"{self.id}-{node}"

    def pod_ns(self, namespace: str, name: str) -> str:
        full = f"{self.id}-{namespace}-{name}"
        if len(full) <= 200:  # a netns is a file: at most 255 bytes
            return full
        return f"{full[:183]}-{hashlib.sha256(full.encode()).hexdigest()[:16]}"

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node named {name!r} (nodes: {', '.join(self.node_names)})")

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)

    @property
    def control_plane(self) -> NodeSpec:
        return next(n for n in self.nodes if n.control_plane)

    @property
    def prefix_len(self) -> int:
        return ipaddress.ip_network(self.underlay_cidr).prefixlen

    def to_json(self) -> dict:
        return {
            "cluster": self.cluster,
            "id": self.id,
            "nodes": [[n.name, n.ip, n.pod_cidr] for n in self.nodes],
        }

    @classmethod
    def from_json(cls, data: dict) -> Topology:
        return cls(
            cluster=data["cluster"],
            id=data["id"],
            nodes=tuple(
                NodeSpec(name, ip, cidr, control_plane=i == 0, index=i)
                for i, (name, ip, cidr) in enumerate(data["nodes"])
            ),
        )


def cluster_id(cluster: str, state_dir: str) -> str:
    """Short and unique per (name, state dir): two clusters never share a namespace name."""
    return "np" + hashlib.sha256(f"{cluster}\0{state_dir}".encode()).hexdigest()[:6]


def node_names(spec: str | None) -> tuple[str, ...]:
    """`--nodes`: a count ("3") or a comma-separated list of names; default the lab's two."""
    if not spec:
        return tuple(n for n, _ in LAB_NODES)
    if spec.isdigit():
        count = int(spec)
        if not 1 <= count <= 50:
            raise ValueError(f"--nodes {spec}: between 1 and 50 nodes")
        lab = [n for n, _ in LAB_NODES]
        return tuple(lab[:count] + [f"node-{i + 1}" for i in range(len(lab), count)])
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    for n in names:
        if not n.replace("-", "").isalnum() or n != n.lower() or len(n) > 40:
            raise ValueError(f"--nodes: {n!r} is not a valid node name (lower-case DNS label)")
    if len(set(names)) != len(names) or not names:
        raise ValueError("--nodes: names must be unique and at least one is needed")
    return names


def build_topology(cluster: str, state_dir: str, names: tuple[str, ...]) -> Topology:
    lab_ips = dict(LAB_NODES)
    used = set(lab_ips.values())
    nodes = []
    spare = (f"192.168.0.{i}" for i in range(110, 240) if f"192.168.0.{i}" not in used)
    for i, name in enumerate(names):
        ip = lab_ips.get(name) or next(spare)
        nodes.append(NodeSpec(name, ip, f"10.244.{i}.0/24", control_plane=i == 0, index=i))
    return Topology(cluster=cluster, id=cluster_id(cluster, state_dir), nodes=tuple(nodes))
