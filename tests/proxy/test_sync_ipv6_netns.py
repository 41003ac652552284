"""IPv6 (`--family ipv6`) with real traffic, both iptables variants.

Topology: netplane.testing.lab.Lab(ipv6=True): a node namespace with IPv6 (ULA) on its pod
bridge and uplink, three pods answering "<pod> <source it saw>" on TCP/UDP 8080 over IPv6,
a client pod, and an external client on the uplink. The syncer programs ip6tables only.
"""

from __future__ import annotations

import collections

import pytest

from netplane.model import Endpoint, EndpointPort, EndpointSlice, Service, ServicePort
from netplane.netns import run
from netplane.proxy._conntrack import Conntrack
from netplane.proxy._iptables import Iptables
from netplane.proxy.render import ProxyConfig
from netplane.proxy.sync import Syncer
from netplane.state import ClusterState
from netplane.testing.lab import Lab, probe

pytestmark = [pytest.mark.slow, pytest.mark.root]

CLUSTER_IP = "fd00:96::10"
NODE = "node-a"
NODE_PORT = 30080


def service(node_port: int = 0, proto: str = "TCP", port: int = 80) -> Service:
    return Service(
        "default",
        "web6",
        type="NodePort" if node_port else "ClusterIP",
        cluster_ips=(CLUSTER_IP,),
        ip_families=("IPv6",),
        ports=(ServicePort(port, proto, "p", 8080, node_port),),
    )


def endpoints(pods, proto: str = "TCP") -> EndpointSlice:
    eps = tuple(Endpoint((p.ip6,), node_name=NODE) for p in pods)
    return EndpointSlice("default", "web6-1", "web6", address_type="IPv6", endpoints=eps,
                         ports=(EndpointPort(8080, proto, "p"),))  # fmt: skip


class Env:
    def __init__(self, lab: Lab, variant: str) -> None:
        self.lab = lab
        self.variant = variant
        self.state = ClusterState()
        self.tracker = self.state.tracker()
        config = ProxyConfig(NODE, family="ipv6", cluster_cidr=lab.pod_cidr6)
        self.syncer = Syncer(
            config, Iptables(variant, "ipv6", lab.node), Conntrack("ipv6", lab.node)
        )
        self.servers = [p for p in lab.pods.values() if p.server]
        self.client = lab.pods["client"]

    def apply(self, *objs) -> None:
        self.state.apply(objs)

    def sync(self):
        return self.syncer.sync(self.state.snapshot(), self.tracker.pop())

    def save(self, family: str = "ipv6") -> str:
        tool = "ip6tables" if family == "ipv6" else "iptables"
        return run(self.lab.node, [f"{tool}-{self.variant}-save"])


@pytest.fixture(params=["legacy", "nft"])
def env(request):
    with Lab(net=245, ipv6=True) as lab:
        for i, name in enumerate(("pod-a", "pod-b", "pod-c")):
            lab.add_pod(name, 10 + i, serve_port=8080)
        lab.add_pod("client", 5)
        yield Env(lab, request.param)


def answers(lines: list[str]) -> collections.Counter:
    return collections.Counter(line.split()[0] for line in lines)


def sources(lines: list[str]) -> set[str]:
    return {line.split()[1] for line in lines}


def test_lab_ipv6_reaches_pods_directly(env: Env) -> None:
    # the topology itself, before any rule: pod -> pod and node -> pod over IPv6
    pod = env.servers[0]
    assert probe(env.client.ns, pod.ip6, 8080) == [f"pod-a {env.client.ip6}"]
    assert probe(env.lab.node, pod.ip6, 8080, proto="udp") == [f"pod-a {env.lab.gateway6}"]


def test_cluster_ip_from_pod_reaches_all_endpoints_unmasqueraded(env: Env) -> None:
    env.apply(service(), endpoints(env.servers))
    env.sync()
    assert "KUBE-SVC-" in env.save() and "KUBE-SVC-" not in env.save("ipv4")
    lines = probe(env.client.ns, CLUSTER_IP, 80, count=150)
    # 150 draws, p = 1/3: mean 50, sd 5.8; [15, 85] is six standard deviations wide
    counts = answers(lines)
    assert set(counts) == {"pod-a", "pod-b", "pod-c"}, counts
    assert all(15 <= n <= 85 for n in counts.values()), counts
    assert sources(lines) == {env.client.ip6}


def test_cluster_ip_from_node_is_masqueraded(env: Env) -> None:
    env.apply(service(), endpoints(env.servers))
    env.sync()
    lines = probe(env.lab.node, CLUSTER_IP, 80, count=30)
    assert set(answers(lines)) <= {"pod-a", "pod-b", "pod-c"} and len(answers(lines)) >= 2
    assert sources(lines) == {env.lab.gateway6}


def test_node_port_from_external_client(env: Env) -> None:
    env.apply(service(node_port=NODE_PORT), endpoints(env.servers))
    env.sync()
    lines = probe(env.lab.external, env.lab.node_ip6, NODE_PORT, count=60)
    assert set(answers(lines)) == {"pod-a", "pod-b", "pod-c"}, lines
    assert sources(lines) == {env.lab.gateway6}  # masqueraded to the bridge address


def test_no_endpoints_refused_at_once(env: Env) -> None:
    env.apply(service(node_port=NODE_PORT))
    env.sync()
    # REJECT answers at once (icmp6 port unreachable); a missing rule would time out
    assert probe(env.client.ns, CLUSTER_IP, 80, timeout=5) == ["ERR refused"]
    assert probe(env.lab.external, env.lab.node_ip6, NODE_PORT, timeout=5) == ["ERR refused"]
    env.apply(endpoints(env.servers[:1]))
    result = env.sync()
    assert not result.full
    assert probe(env.client.ns, CLUSTER_IP, 80) == [f"pod-a {env.client.ip6}"]


def test_udp_endpoint_change_clears_conntrack(env: Env) -> None:
    env.apply(service(proto="UDP", port=53), endpoints(env.servers, proto="UDP"))
    env.sync()
    first = probe(env.client.ns, CLUSTER_IP, 53, count=5, proto="udp", sport=40000)
    [pinned] = answers(first)
    env.apply(endpoints([p for p in env.servers if p.name != pinned], proto="UDP"))
    env.sync()
    after = probe(env.client.ns, CLUSTER_IP, 53, count=5, proto="udp", sport=40000)
    assert pinned not in answers(after) and len(answers(after)) == 1, after
