"""Fixtures for the renderer and tracer tests: snapshots built from model objects.

Topology (kube-proxy's own test fixtures): pods 10.0.0.0/8 (endpoints 10.180.x.y),
services 172.30.0.0/16, this node "node1" at 192.168.0.2, another node "node2",
an external client 203.0.113.2.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from netplane.model import Endpoint, EndpointPort, EndpointSlice, Service, ServicePort
from netplane.proxy._trace import Packet, Trace
from netplane.proxy._trace_iptables import Tracer
from netplane.proxy.nft._text import format_tables
from netplane.proxy.nft._trace import NftTracer
from netplane.proxy.nft.render import render_full as nft_render_full
from netplane.proxy.render import ProxyConfig, render_full
from netplane.state import ClusterState, Snapshot

NODE = "node1"
NODE_IP = "192.168.0.2"
POD_CIDR = "10.0.0.0/8"
EXTERNAL = "203.0.113.2"
POD = "10.0.0.5"  # a client pod (any node)


def port(
    port: int, name: str = "p80", protocol: str = "TCP", target: int | str = 0, node_port: int = 0
) -> ServicePort:
    return ServicePort(
        port=port, protocol=protocol, name=name, target_port=target, node_port=node_port
    )


def endpoint(
    ip: str,
    node: str = NODE,
    ready: bool = True,
    serving: bool | None = None,
    terminating: bool = False,
) -> Endpoint:
    return Endpoint(
        addresses=(ip,),
        ready=ready,
        serving=ready if serving is None else serving,
        terminating=terminating,
        node_name=node,
    )


class Cluster:
    """Builds a snapshot, renders it for node1 and traces packets through the result
    (BACKEND: which renderer and tracer, iptables or nftables)."""

    def __init__(self, backend: str = "iptables", shards: int | None = None) -> None:
        self.backend = backend
        self.shards = shards  # nftables: tables the services are spread over
        self.objects: list = []

    def service(
        self, name: str, cluster_ip: str | Sequence[str], ports=None, namespace: str = "ns1", **kw
    ) -> Service:
        ips = (cluster_ip,) if isinstance(cluster_ip, str) else tuple(cluster_ip)
        svc = Service(
            namespace=namespace,
            name=name,
            cluster_ips=ips,
            ip_families=tuple("IPv6" if ":" in ip else "IPv4" for ip in ips),
            ports=tuple(ports or (port(80),)),
            selector=(("app", name),),
            **kw,
        )
        self.objects.append(svc)
        return svc

    def endpoints(
        self,
        service: str,
        endpoints: Sequence[Endpoint],
        ports=(("p80", 80),),
        namespace: str = "ns1",
        address_type: str = "IPv4",
        slice_name: str | None = None,
    ) -> EndpointSlice:
        sl = EndpointSlice(
            namespace=namespace,
            name=slice_name or f"{service}-{len(self.objects)}",
            service_name=service,
            address_type=address_type,
            endpoints=tuple(endpoints),
            ports=tuple(
                EndpointPort(port=p[1], name=p[0], protocol=p[2] if len(p) > 2 else "TCP")
                for p in ports
            ),
        )
        self.objects.append(sl)
        return sl

    def snapshot(self) -> Snapshot:
        state = ClusterState()
        state.apply(self.objects)
        return state.snapshot()

    def config(self, **kw) -> ProxyConfig:
        kw.setdefault("cluster_cidr", POD_CIDR)
        return ProxyConfig(node_name=NODE, **kw)

    def render(self, **kw) -> str:
        return render_full(self.snapshot(), self.config(**kw))

    def tracer(self, local_ips: Sequence[str] = (NODE_IP,), **kw) -> Tracer | NftTracer:
        if self.backend == "nftables":
            tables = nft_render_full(self.snapshot(), self.config(**kw), self.shards)
            return NftTracer(tables, local_ips)
        return Tracer(self.render(**kw), local_ips)

    def render_nft(self, **kw) -> str:
        return format_tables(nft_render_full(self.snapshot(), self.config(**kw), self.shards))

    def trace(
        self, src: str, dst: str, dport: int = 80, proto: str = "tcp", output: bool = False, **kw
    ) -> Trace:
        return self.tracer(**kw).trace(Packet(src, dst, proto, dport, output=output))


@pytest.fixture
def cluster() -> Cluster:
    return Cluster()


@pytest.fixture(params=["iptables", "nftables", "nftables-4-tables"])
def any_cluster(request) -> Cluster:
    """A Cluster for each backend: for the tests of Service semantics (by tracing); the
    nftables one also with its services spread over 4 tables."""
    backend, _, shards = request.param.partition("-")
    return Cluster(backend, int(shards.split("-")[0]) if shards else None)
