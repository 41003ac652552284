"""The Service semantics with real traffic, one suite for every backend: iptables (legacy
and nft variants) and nftables, IPv4 and IPv6.

Topology (netplane.testing.lab.Lab): a node namespace with a pod bridge, three pods running a
responder ("<pod> <source it saw>") on TCP and UDP 8080, a client pod, and an external
client on the node's uplink; with IPv6, ULA addresses beside the IPv4 ones. Everything lives
in namespaces created and deleted here.
"""

from __future__ import annotations

import collections

import pytest

from netplane.model import Endpoint, EndpointPort, EndpointSlice, Service, ServicePort
from netplane.netns import run
from netplane.proxy._conntrack import Conntrack
from netplane.proxy._iptables import Iptables
from netplane.proxy.nft._netlink import Netlink
from netplane.proxy.nft.sync import NftSyncer
from netplane.proxy.render import ProxyConfig
from netplane.proxy.sync import Syncer
from netplane.state import ClusterState
from netplane.testing.lab import Lab, probe

pytestmark = [pytest.mark.slow, pytest.mark.root]

NODE = "node-a"
NODE_PORT = 30080
BACKENDS = ["iptables-legacy", "iptables-nft", "nftables"]


def make_backend(name: str, config: ProxyConfig, ns: str):
    conntrack = Conntrack(config.family, ns)
    if name == "nftables":
        return NftSyncer(config, Netlink(ns), conntrack)
    return Syncer(config, Iptables(name.split("-")[1], config.family, ns), conntrack)


class Env:
    """One backend programming the lab's node for one family."""

    def __init__(self, lab: Lab, backend: str, family: str) -> None:
        self.lab = lab
        self.backend_name = backend
        self.v6 = family == "ipv6"
        cidr = lab.pod_cidr6 if self.v6 else lab.pod_cidr
        self.config = ProxyConfig(NODE, family=family, cluster_cidr=cidr)
        self.backend = make_backend(backend, self.config, lab.node)
        self.state = ClusterState()
        self.tracker = self.state.tracker()
        self.servers = [p for p in lab.pods.values() if p.server]
        self.client = lab.pods["client"]
        self.cluster_ip = "fd00:96::10" if self.v6 else "10.96.0.10"
        self.node_ip = lab.node_ip6 if self.v6 else lab.node_ip
        self.gateway = lab.gateway6 if self.v6 else lab.gateway
        self.external_ip = lab.external_ip6 if self.v6 else lab.external_ip

    def ip(self, pod) -> str:
        return pod.ip6 if self.v6 else pod.ip

    def service(self, node_port: int = 0, proto: str = "TCP", port: int = 80, **kw) -> Service:
        kind = kw.pop("type", "NodePort" if node_port else "ClusterIP")
        return Service(
            "default",
            "web",
            type=kind,
            cluster_ips=(self.cluster_ip,),
            ip_families=("IPv6" if self.v6 else "IPv4",),
            ports=(ServicePort(port, proto, "p", 8080, node_port),),
            **kw,
        )

    def endpoints(self, pods, proto: str = "TCP", nodes=None) -> EndpointSlice:
        nodes = nodes or {}
        eps = tuple(Endpoint((self.ip(p),), node_name=nodes.get(p.name, NODE)) for p in pods)
        return EndpointSlice(
            "default",
            "web-1",
            "web",
            address_type="IPv6" if self.v6 else "IPv4",
            endpoints=eps,
            ports=(EndpointPort(8080, proto, "p"),),
        )

    def apply(self, *objs) -> None:
        self.state.apply(objs)

    def sync(self):
        return self.backend.sync(self.state.snapshot(), self.tracker.pop())


def _lab(family: str):
    lab = Lab(net=246, ipv6=True) if family == "ipv6" else Lab()
    with lab:
        for i, name in enumerate(("pod-a", "pod-b", "pod-c")):
            lab.add_pod(name, 10 + i, serve_port=8080)
        lab.add_pod("client", 5)
        yield lab


@pytest.fixture(params=BACKENDS)
def env(request):
    for lab in _lab("ipv4"):
        yield Env(lab, request.param, "ipv4")


@pytest.fixture(params=[(b, f) for f in ("ipv4", "ipv6") for b in BACKENDS], ids=str)
def both(request):
    """Every backend in both families, for the tests that differ per family."""
    backend, family = request.param
    for lab in _lab(family):
        yield Env(lab, backend, family)


def answers(lines: list[str]) -> collections.Counter:
    return collections.Counter(line.split()[0] for line in lines)


def sources(lines: list[str]) -> set[str]:
    return {line.split()[1] for line in lines}


def test_cluster_ip_spreads_over_all_endpoints(both: Env) -> None:
    env = both
    env.apply(env.service(), env.endpoints(env.servers))
    env.sync()
    lines = probe(env.client.ns, env.cluster_ip, 80, count=300)
    counts = answers(lines)
    # 300 draws, p = 1/3: mean 100, sd 8.2; [50, 150] is six standard deviations wide
    assert set(counts) == {"pod-a", "pod-b", "pod-c"}, counts
    assert all(50 <= n <= 150 for n in counts.values()), counts
    # pod -> service keeps the pod's address; node -> service is masqueraded
    assert sources(lines) == {env.ip(env.client)}
    from_node = probe(env.lab.node, env.cluster_ip, 80, count=10)
    assert sources(from_node) == {env.gateway}


def test_node_port_from_external_client_is_masqueraded(both: Env) -> None:
    env = both
    env.apply(env.service(node_port=NODE_PORT), env.endpoints(env.servers))
    env.sync()
    lines = probe(env.lab.external, env.node_ip, NODE_PORT, count=60)
    assert set(answers(lines)) == {"pod-a", "pod-b", "pod-c"}, lines
    assert sources(lines) == {env.gateway}


def test_session_affinity_sticks(env: Env) -> None:
    env.apply(env.service(session_affinity="ClientIP"), env.endpoints(env.servers))
    env.sync()
    lines = probe(env.client.ns, env.cluster_ip, 80, count=30)
    assert len(answers(lines)) == 1, lines


def test_external_traffic_policy_local(env: Env) -> None:
    svc = env.service(node_port=NODE_PORT, external_traffic_policy="Local")
    remote = {"pod-b": "node-b", "pod-c": "node-b"}
    env.apply(svc, env.endpoints(env.servers, nodes=remote))
    env.sync()
    external = probe(env.lab.external, env.node_ip, NODE_PORT, count=40)
    assert answers(external) == {"pod-a": 40}
    assert sources(external) == {env.external_ip}  # not masqueraded
    inside = probe(env.client.ns, env.cluster_ip, 80, count=60)
    assert len(answers(inside)) >= 2  # cluster traffic still reaches every endpoint


def test_internal_traffic_policy_local(env: Env) -> None:
    remote = {"pod-b": "node-b", "pod-c": "node-b"}
    env.apply(
        env.service(internal_traffic_policy="Local"),
        env.endpoints(env.servers, nodes=remote),
    )
    env.sync()
    assert answers(probe(env.client.ns, env.cluster_ip, 80, count=20)) == {"pod-a": 20}
    env.apply(env.endpoints(env.servers[1:], nodes=remote))  # no local endpoint left
    env.sync()
    assert probe(env.client.ns, env.cluster_ip, 80, timeout=1) == ["ERR TimeoutError"]  # DROP


def test_no_endpoints_rejects_at_once(both: Env) -> None:
    env = both
    env.apply(env.service(node_port=NODE_PORT))
    env.sync()
    # REJECT answers immediately; a missing rule would time out ("ERR timeout")
    assert probe(env.client.ns, env.cluster_ip, 80, timeout=5) == ["ERR refused"]
    assert probe(env.lab.external, env.node_ip, NODE_PORT, timeout=5) == ["ERR refused"]
    env.apply(env.endpoints(env.servers[:1]))
    assert not env.sync().full
    assert probe(env.client.ns, env.cluster_ip, 80) == [f"pod-a {env.ip(env.client)}"]


def test_udp_and_stale_conntrack_entries(both: Env) -> None:
    env = both
    env.apply(env.service(port=53, proto="UDP"), env.endpoints(env.servers, proto="UDP"))
    env.sync()
    # one source port: every datagram rides one conntrack entry, pinned to one endpoint
    first = probe(env.client.ns, env.cluster_ip, 53, count=5, proto="udp", sport=40000)
    [pinned] = answers(first)
    env.apply(env.endpoints([p for p in env.servers if p.name != pinned], proto="UDP"))
    env.sync()
    # the removed pod still runs: only a cleared conntrack entry explains a new answer
    after = probe(env.client.ns, env.cluster_ip, 53, count=5, proto="udp", sport=40000)
    assert pinned not in answers(after) and len(answers(after)) == 1, after


def test_hairpin_is_masqueraded(env: Env) -> None:
    """An endpoint reaching its own service: the answer must come back through the node,
    so the source is masqueraded (kube-proxy's per-endpoint rule)."""
    env.apply(env.service(), env.endpoints(env.servers[:1]))
    env.sync()
    # the bridge sends a frame back out of the port it came in only in hairpin mode, which
    # the CNI bridge plugin sets (hairpinMode); the lab's ports are npv<host>
    run(None, ["ip", "-n", env.lab.node, "link", "set", "npv10", "type", "bridge_slave",
               "hairpin", "on"])  # fmt: skip
    pod = env.servers[0]
    assert probe(pod.ns, env.cluster_ip, 80) == [f"pod-a {env.gateway}"]


def test_only_this_family_is_programmed(both: Env) -> None:
    env = both
    env.apply(env.service(), env.endpoints(env.servers))
    env.sync()
    other = "ipv4" if env.v6 else "ipv6"
    if env.backend_name == "nftables":
        listing = run(env.lab.node, ["nft", "list", "tables"])
        assert f"table {'ip6' if env.v6 else 'ip'} kube-proxy" in listing
        assert f"table {'ip' if env.v6 else 'ip6'} kube-proxy" not in listing
    else:
        variant = env.backend_name.split("-")[1]
        tool = {"ipv4": "iptables", "ipv6": "ip6tables"}
        assert "KUBE-SVC-" in run(env.lab.node, [f"{tool[env.config.family]}-{variant}-save"])
        assert "KUBE-SVC-" not in run(env.lab.node, [f"{tool[other]}-{variant}-save"])


def test_lab_ipv6_reaches_pods_directly() -> None:
    """The IPv6 topology itself, before any rule: pod -> pod and node -> pod."""
    for lab in _lab("ipv6"):
        client, pod = lab.pods["client"], lab.pods["pod-a"]
        assert probe(client.ns, pod.ip6, 8080) == [f"pod-a {client.ip6}"]
        assert probe(lab.node, pod.ip6, 8080, proto="udp") == [f"pod-a {lab.gateway6}"]
