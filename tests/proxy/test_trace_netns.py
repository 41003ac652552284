"""`netplane proxy trace` on a live node: the real kernel's rules, read back and traced.

The proxy's syncer programs a node namespace (netplane.testing.lab.Lab: a pod bridge with
three responders, a client pod, an external client on the uplink); the command reads the
rules with iptables-save inside that namespace, as an operator would on a node. Real
traffic is sent too, and every answer must come from an endpoint the trace predicted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from netplane.model import Endpoint, EndpointPort, EndpointSlice, Service, ServicePort
from netplane.proxy._conntrack import Conntrack
from netplane.proxy._iptables import Iptables
from netplane.proxy.render import ProxyConfig
from netplane.proxy.sync import Syncer
from netplane.state import ClusterState
from netplane.testing.lab import Lab, Pod, probe

pytestmark = [pytest.mark.slow, pytest.mark.root]

NETPLANE = str(Path(sys.executable).with_name("netplane"))
NODE = "node-a"
CLUSTER_IP = "10.96.0.20"
NODE_PORT = 30090
REMOTE = "10.99.0.7"  # an endpoint on another node: never reached with a Local policy


@pytest.fixture(scope="module")
def lab():
    with Lab(prefix="nptrc") as lab:
        for i, name in enumerate(("pod-a", "pod-b", "pod-c")):
            lab.add_pod(name, 10 + i, serve_port=8080)
        lab.add_pod("client", 5)
        yield lab


def program(lab: Lab, service: Service, pods: list[Pod], remote: tuple[str, ...] = ()) -> None:
    """The proxy's real full sync of just this service into the node namespace."""
    eps = tuple(Endpoint((p.ip,), node_name=NODE) for p in pods)
    eps += tuple(Endpoint((ip,), node_name="node-b") for ip in remote)
    slice_ = EndpointSlice("default", f"{service.name}-1", service.name, endpoints=eps,
                           ports=(EndpointPort(8080, "TCP", "http"),))  # fmt: skip
    state = ClusterState()
    state.apply([service, slice_])
    ipt = Iptables("nft", "ipv4", lab.node)
    Syncer(ProxyConfig(NODE, cluster_cidr=lab.pod_cidr), ipt, Conntrack("ipv4", lab.node)).sync(
        state.snapshot(), full=True
    )


def trace(lab: Lab, src: str, dst: str, port: int, *extra: str) -> str:
    argv = [NETPLANE, "proxy", "trace", "--netns", lab.node, "--src", src, "--dst", dst,
            "--port", str(port), *extra]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def servers(lab: Lab) -> list[Pod]:
    return [p for p in lab.pods.values() if p.server]


def test_cluster_ip(lab: Lab) -> None:
    pods = servers(lab)
    ports = (ServicePort(80, "TCP", "http", 8080),)
    program(lab, Service("default", "web", cluster_ips=(CLUSTER_IP,), ports=ports), pods)
    client = lab.pods["client"]
    doc = json.loads(trace(lab, client.ip, CLUSTER_IP, 80, "--json"))
    expected = {f"{p.ip}:8080" for p in pods}
    assert set(doc["endpoints"]) == expected
    assert all(abs(share - 1 / 3) < 1e-5 for share in doc["endpoints"].values())
    assert {(p["verdict"], p["masquerade"]) for p in doc["paths"]} == {("DNAT", False)}
    first = doc["paths"][0]["steps"]
    assert [s["chain"] for s in first[:2]] == ["PREROUTING", "KUBE-SERVICES"]
    assert first[2]["chain"].startswith("KUBE-SVC-") and first[2]["note"] == "taken (33.3%)"
    assert any("DNAT --to-destination" in s["rule"] for s in first)
    # the text report names every endpoint with its share, and the rules of each path
    text = trace(lab, client.ip, CLUSTER_IP, 80)
    for p in pods:
        assert f"33.3%  DNAT     {p.ip}:8080" in text
    assert "skipped (66.7%)" in text and "-j KUBE-SERVICES" in text
    # a node process's connection is masqueraded (KUBE-MARK-MASQ: source outside the pods)
    doc = json.loads(trace(lab, lab.node_ip, CLUSTER_IP, 80, "--from-node", "--json"))
    assert {p["masquerade"] for p in doc["paths"]} == {True}
    # the kernel agrees: every answer comes from a predicted endpoint
    answered = {line.split()[0] for line in probe(client.ns, CLUSTER_IP, 80, count=30)}
    assert answered <= {p.name for p in pods} and len(answered) > 1


def test_node_port_with_local_policy(lab: Lab) -> None:
    local = servers(lab)[:2]
    ports = (ServicePort(80, "TCP", "http", 8080, NODE_PORT),)
    svc = Service("default", "np-local", type="NodePort", cluster_ips=("10.96.0.21",),
                  ports=ports, external_traffic_policy="Local")  # fmt: skip
    program(lab, svc, local, remote=(REMOTE,))
    doc = json.loads(trace(lab, lab.external_ip, lab.node_ip, NODE_PORT, "--json"))
    # only this node's endpoints, half each, and the client's address is kept
    assert doc["endpoints"] == {f"{p.ip}:8080": 0.5 for p in local}
    assert {(p["verdict"], p["masquerade"]) for p in doc["paths"]} == {("DNAT", False)}
    chains = {s["chain"] for p in doc["paths"] for s in p["steps"]}
    assert "KUBE-NODEPORTS" in chains and any(c.startswith("KUBE-SVL-") for c in chains)
    assert REMOTE not in json.dumps(doc["endpoints"])
    lines = probe(lab.external, lab.node_ip, NODE_PORT, count=20)
    assert {line.split()[0] for line in lines} <= {p.name for p in local}
    assert {line.split()[1] for line in lines} == {lab.external_ip}


def test_client_ip_affinity(lab: Lab) -> None:
    pods = servers(lab)
    ports = (ServicePort(80, "TCP", "http", 8080),)
    svc = Service("default", "sticky", cluster_ips=("10.96.0.22",), ports=ports,
                  session_affinity="ClientIP", session_affinity_timeout=600)  # fmt: skip
    program(lab, svc, pods)
    client = lab.pods["client"]
    doc = json.loads(trace(lab, client.ip, "10.96.0.22", 80, "--json"))
    expected = {f"{p.ip}:8080" for p in pods}
    # a new client is spread as without affinity...
    assert set(doc["endpoints"]) == expected
    assert abs(sum(doc["endpoints"].values()) - 1) < 1e-5
    # ...a returning one goes back to the endpoint its recent entry names
    returning = [p for p in doc["paths"] if p["conditions"]]
    assert {p["endpoint"] for p in returning} == expected
    for p in returning:
        assert len(p["conditions"]) == 1 and "recent list KUBE-SEP-" in p["conditions"][0]
    new = [p for p in doc["paths"] if not p["conditions"]]
    assert all(any("--set" in s["rule"] for s in p["steps"]) for p in new)  # it records one
    text = trace(lab, client.ip, "10.96.0.22", 80)
    assert "returning clients (session affinity) stay on:" in text
    # the kernel agrees: one endpoint, again and again, and a predicted one
    answered = {line.split()[0] for line in probe(client.ns, "10.96.0.22", 80, count=10)}
    assert len(answered) == 1 and answered <= {p.name for p in pods}


def test_saved_rules_and_bad_input(lab: Lab, tmp_path: Path) -> None:
    saved = subprocess.run(["ip", "netns", "exec", lab.node, "iptables-nft-save"],
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    path = tmp_path / "rules"
    path.write_text(saved)
    argv = [NETPLANE, "proxy", "trace", "--rules-file", str(path), "--src", "10.1.2.3",
            "--dst", "10.200.0.1", "--port", "80", "--json"]  # fmt: skip
    doc = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    assert [p["verdict"] for p in doc["paths"]] == ["NO_MATCH"]  # no service there
    path.write_text("not a ruleset\n")
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode != 0 and "not a ruleset" in proc.stderr
