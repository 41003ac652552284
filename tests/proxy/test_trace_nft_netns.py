"""`netplane proxy trace` on a live node programmed by the nftables backend: the command
reads `nft list ruleset` inside the node namespace (found by itself: `--backend auto`), and
real traffic must only reach endpoints the trace predicted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from netplane.model import Endpoint, EndpointPort, EndpointSlice, Service, ServicePort
from netplane.proxy._conntrack import Conntrack
from netplane.proxy.nft._netlink import Netlink
from netplane.proxy.nft.sync import NftSyncer
from netplane.proxy.render import ProxyConfig
from netplane.state import ClusterState
from netplane.testing.lab import Lab, Pod, probe

pytestmark = [pytest.mark.slow, pytest.mark.root]

NETPLANE = str(Path(sys.executable).with_name("netplane"))
NODE = "node-a"
CLUSTER_IP = "10.96.0.30"
NODE_PORT = 30091
REMOTE = "10.99.0.7"  # an endpoint on another node: never reached with a Local policy


@pytest.fixture(scope="module")
def lab():
    with Lab(prefix="nptrn") as lab:
        for i, name in enumerate(("pod-a", "pod-b", "pod-c")):
            lab.add_pod(name, 10 + i, serve_port=8080)
        lab.add_pod("client", 5)
        yield lab


@pytest.fixture(scope="module")
def state() -> ClusterState:
    return ClusterState()


def program(
    lab: Lab, state: ClusterState, service: Service, pods: list[Pod], remote: tuple[str, ...] = ()
) -> None:
    """Add SERVICE to what the backend programs in the node namespace (a full sync: every
    service of the module stays, as on a real node)."""
    eps = tuple(Endpoint((p.ip,), node_name=NODE) for p in pods)
    eps += tuple(Endpoint((ip,), node_name="node-b") for ip in remote)
    slice_ = EndpointSlice("default", f"{service.name}-1", service.name, endpoints=eps,
                           ports=(EndpointPort(8080, "TCP", "http"),))  # fmt: skip
    state.apply([service, slice_])
    config = ProxyConfig(NODE, cluster_cidr=lab.pod_cidr)
    syncer = NftSyncer(config, Netlink(lab.node), Conntrack("ipv4", lab.node))
    syncer.sync(state.snapshot(), None)


def trace(lab: Lab, src: str, dst: str, port: int, *extra: str) -> str:
    argv = [NETPLANE, "proxy", "trace", "--netns", lab.node, "--src", src, "--dst", dst,
            "--port", str(port), *extra]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def servers(lab: Lab) -> list[Pod]:
    return [p for p in lab.pods.values() if p.server]


def test_cluster_ip(lab: Lab, state: ClusterState) -> None:
    pods = servers(lab)
    ports = (ServicePort(80, "TCP", "http", 8080),)
    program(lab, state, Service("default", "web", cluster_ips=(CLUSTER_IP,), ports=ports), pods)
    client = lab.pods["client"]
    doc = json.loads(trace(lab, client.ip, CLUSTER_IP, 80, "--json"))
    assert doc["rules"]["format"] == "nftables"
    expected = {f"{p.ip}:8080" for p in pods}
    assert set(doc["endpoints"]) == expected
    assert all(abs(share - 1 / 3) < 1e-5 for share in doc["endpoints"].values())
    assert {(p["verdict"], p["masquerade"]) for p in doc["paths"]} == {("DNAT", False)}
    steps = doc["paths"][0]["steps"]
    dispatch = next(s for s in steps if s["chain"] == "services")
    assert (
        "vmap @service-ips" in dispatch["rule"] and f"{CLUSTER_IP} . tcp . 80" in dispatch["note"]
    )
    notes = {s["note"] for p in doc["paths"] for s in p["steps"]}
    assert {"taken (33.3%)", "skipped (66.7%)", "taken (50.0%)"} <= notes
    assert any("dnat to" in s["rule"] for s in steps)
    text = trace(lab, client.ip, CLUSTER_IP, 80)
    for p in pods:
        assert f"33.3%  DNAT     {p.ip}:8080" in text
    # a node process's connection is masqueraded (mark-for-masquerade: not from a pod)
    doc = json.loads(trace(lab, lab.node_ip, CLUSTER_IP, 80, "--from-node", "--json"))
    assert {p["masquerade"] for p in doc["paths"]} == {True}
    # the kernel agrees: every answer comes from a predicted endpoint
    answered = {line.split()[0] for line in probe(client.ns, CLUSTER_IP, 80, count=30)}
    assert answered <= {p.name for p in pods} and len(answered) > 1


def test_node_port_with_local_policy(lab: Lab, state: ClusterState) -> None:
    local = servers(lab)[:2]
    ports = (ServicePort(80, "TCP", "http", 8080, NODE_PORT),)
    svc = Service("default", "np-local", type="NodePort", cluster_ips=("10.96.0.31",),
                  ports=ports, external_traffic_policy="Local")  # fmt: skip
    program(lab, state, svc, local, remote=(REMOTE,))
    doc = json.loads(trace(lab, lab.external_ip, lab.node_ip, NODE_PORT, "--json"))
    assert doc["endpoints"] == {f"{p.ip}:8080": 0.5 for p in local}
    assert {(p["verdict"], p["masquerade"]) for p in doc["paths"]} == {("DNAT", False)}
    chains = {s["chain"] for p in doc["paths"] for s in p["steps"]}
    assert any(c.startswith("external-") for c in chains)
    assert any(c.startswith("local-") for c in chains)
    assert REMOTE not in json.dumps(doc["endpoints"])
    lines = probe(lab.external, lab.node_ip, NODE_PORT, count=20)
    assert {line.split()[0] for line in lines} <= {p.name for p in local}
    assert {line.split()[1] for line in lines} == {lab.external_ip}


def test_client_ip_affinity(lab: Lab, state: ClusterState) -> None:
    pods = servers(lab)
    ports = (ServicePort(80, "TCP", "http", 8080),)
    svc = Service("default", "sticky", cluster_ips=("10.96.0.32",), ports=ports,
                  session_affinity="ClientIP", session_affinity_timeout=600)  # fmt: skip
    program(lab, state, svc, pods)
    client = lab.pods["client"]
    doc = json.loads(trace(lab, client.ip, "10.96.0.32", 80, "--json"))
    expected = {f"{p.ip}:8080" for p in pods}
    assert set(doc["endpoints"]) == expected
    assert abs(sum(doc["endpoints"].values()) - 1) < 1e-5
    returning = [p for p in doc["paths"] if p["conditions"]]
    assert {p["endpoint"] for p in returning} == expected
    for p in returning:
        assert len(p["conditions"]) == 1 and "source in set affinity-" in p["conditions"][0]
    new = [p for p in doc["paths"] if not p["conditions"]]
    assert all(any(s["rule"].startswith("update @affinity-") for s in p["steps"]) for p in new)
    assert "returning clients (session affinity) stay on:" in trace(
        lab, client.ip, "10.96.0.32", 80
    )
    answered = {line.split()[0] for line in probe(client.ns, "10.96.0.32", 80, count=10)}
    assert len(answered) == 1 and answered <= {p.name for p in pods}


def test_saved_rules_and_unknown_tables(lab: Lab, tmp_path: Path) -> None:
    subprocess.run(["ip", "netns", "exec", lab.node, "nft", "add", "table", "ip", "mine"],
                   check=True)  # fmt: skip
    subprocess.run(["ip", "netns", "exec", lab.node, "nft", "add", "chain", "ip", "mine", "c",
                    "{ type filter hook input priority 0 ; }"], check=True)  # fmt: skip
    saved = subprocess.run(["ip", "netns", "exec", lab.node, "nft", "list", "ruleset"],
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    path = tmp_path / "rules.nft"
    path.write_text(saved)
    argv = [NETPLANE, "proxy", "trace", "--rules-file", str(path), "--src", "10.1.2.3",
            "--dst", CLUSTER_IP, "--port", "80", "--json"]  # fmt: skip
    doc = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    assert doc["rules"]["format"] == "nftables" and len(doc["endpoints"]) == 3
    argv[argv.index(CLUSTER_IP)] = "10.200.0.1"
    doc = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    assert [p["verdict"] for p in doc["paths"]] == ["NO_MATCH"]  # no service there
