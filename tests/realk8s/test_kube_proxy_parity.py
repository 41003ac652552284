"""The same API state into the real kube-proxy (iptables mode) and netplane's proxy, each in
a node namespace of its own with the same node name: `iptables-save` compared chain by chain.

Normalised: comments, counters, and the order of the per-service jump chains that
kube-proxy fills from a Go map (KUBE-SERVICES, KUBE-NODEPORTS, KUBE-EXTERNAL-SERVICES,
KUBE-PROXY-FIREWALL). The differences that remain are the deliberate ones listed in
proxy/README.md ("Differences from the real kube-proxy"), and nothing else.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

from netplane import netns
from netplane.bench.proxy_peers import kube_proxy_config
from netplane.testing import anchors
from netplane.testing.controlplane import ControlPlane
from netplane.testing.lab import wait_for

pytestmark = pytest.mark.slow

NODE = "parity-node"
POD_NET = "10.244.0.0/16"
NETPLANE = str(Path(sys.executable).with_name("netplane"))
UNORDERED = {"KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-EXTERNAL-SERVICES", "KUBE-PROXY-FIREWALL"}
COMMENT = re.compile(r' -m comment --comment (?:"[^"]*"|\S+)')

# What kube-proxy writes and netplane deliberately does not (proxy/README.md, "Differences
# from kube-proxy"): applied to kube-proxy's side only; any other difference fails.
NFACCT = re.compile(r" -m nfacct --nfacct-name +\S+")  # its INVALID-drop counter (a metric)
KUBELET_CHAIN = "KUBE-FIREWALL"  # kubelet's chain: kube-proxy creates it empty and jumps to it


def without_deliberate(chains: dict[tuple[str, str], list[str]]) -> dict:
    out = {}
    for (table, chain), rules in chains.items():
        if chain == KUBELET_CHAIN:
            continue
        out[(table, chain)] = [NFACCT.sub("", r) for r in rules if r != f"-j {KUBELET_CHAIN}"]
    return out


def _service(ns: str, name: str, spec: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}  # fmt: skip


def _slice(ns: str, service: str, ports: list, endpoints: list) -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": f"{service}-a", "namespace": ns,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints,
    }  # fmt: skip


def _ep(ip: str, node: str = NODE, ready: bool = True, serving=None, terminating=False) -> dict:
    conditions = {"ready": ready, "serving": ready if serving is None else serving,
                  "terminating": terminating}  # fmt: skip
    return {"addresses": [ip], "conditions": conditions, "nodeName": node}


def cluster_state(ns: str) -> list[dict]:
    """Every Service shape the proxies render, with endpoints local and remote, ready,
    not ready and terminating."""
    http = [{"name": "http", "port": 8080, "protocol": "TCP"}]
    return [
        _service(ns, "cip", {"ports": [
            {"name": "http", "port": 80, "targetPort": 8080},
            {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"}]}),
        _slice(ns, "cip", [*http, {"name": "dns", "port": 5353, "protocol": "UDP"}],
               [_ep("10.244.1.2"), _ep("10.244.2.2", "other"), _ep("10.244.1.3", ready=False)]),
        _service(ns, "np", {"type": "NodePort", "ports": [
            {"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]}),
        _slice(ns, "np", http, [_ep("10.244.1.4"), _ep("10.244.2.4", "other")]),
        _service(ns, "lb", {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                            "loadBalancerSourceRanges": ["198.51.100.0/24"], "ports": [
            {"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30081}]}),
        _slice(ns, "lb", http, [_ep("10.244.1.5"), _ep("10.244.2.5", "other")]),
        _service(ns, "ext", {"externalIPs": ["192.0.2.50"], "sessionAffinity": "ClientIP",
                             "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
        _slice(ns, "ext", http, [_ep("10.244.1.6"), _ep("10.244.2.6", "other")]),
        _service(ns, "empty", {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
        _service(ns, "itp", {"internalTrafficPolicy": "Local",
                             "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
        _slice(ns, "itp", http, [_ep("10.244.1.7"), _ep("10.244.2.7", "other")]),
        _service(ns, "term", {"type": "NodePort", "externalTrafficPolicy": "Local", "ports": [
            {"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30082}]}),
        _slice(ns, "term", http, [
            _ep("10.244.1.8", ready=False, serving=True, terminating=True),
            _ep("10.244.2.8", "other")]),
        _service(ns, "headless", {"clusterIP": "None", "ports": [{"port": 80}]}),
        _service(ns, "alias", {"type": "ExternalName", "externalName": "example.org"}),
    ]  # fmt: skip


def normalised(ns: str) -> dict[tuple[str, str], list[str]]:
    """(table, chain) -> rules of nat and filter, comments and counters removed, the
    map-ordered chains sorted."""
    chains: dict[tuple[str, str], list[str]] = {}
    table = ""
    for line in (
        netns.run(ns, ["iptables-save", "-t", "nat"]).splitlines()
        + netns.run(ns, ["iptables-save", "-t", "filter"]).splitlines()
    ):
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":"):
            chains.setdefault((table, line[1:].split()[0]), [])
        elif line.startswith("-A "):
            chain, rule = line[3:].split(" ", 1)
            chains.setdefault((table, chain), []).append(COMMENT.sub("", rule))
    for (_, chain), rules in chains.items():
        if chain in UNORDERED:
            rules.sort()
    return chains


def _ready(ns: str, ips: list[str]) -> dict | None:
    first = normalised(ns)
    services = "\n".join(  # the service without endpoints has its REJECT in filter
        first.get(("nat", "KUBE-SERVICES"), []) + first.get(("filter", "KUBE-SERVICES"), [])
    )
    if not all(f"-d {ip}/32" in services for ip in ips):
        return None
    return first


def _settled(ns: str, ips: list[str]) -> dict:
    """The rules once every service is in and two readings a second apart agree."""
    previous: list = [None]

    def stable():
        now = _ready(ns, ips)
        same = now is not None and now == previous[0]
        previous[0] = now
        return now if same else None

    return wait_for(stable, 120, interval=1.0, what=f"settled rules in {ns}")


@pytest.fixture
def kube_proxy_binary() -> Path:
    if not anchors.is_built("kube-proxy"):
        pytest.fail("kube-proxy is not built: run `netplane anchors build`", pytrace=False)
    return anchors.binary("kube-proxy")


def test_same_rules_as_kube_proxy(
    shipped_rbac: ControlPlane, k8s_namespace: str, kube_proxy_binary: Path, tmp_path: Path
) -> None:
    cp, ns = shipped_rbac, k8s_namespace
    theirs = cp.add_node(NODE)  # the Node object both proxies read
    ours = cp.add_node(f"{NODE}-netplane", register=False)
    procs = []
    try:
        for obj in cluster_state(ns):
            created = (
                cp.api.post(f"/api/v1/namespaces/{ns}/services", obj)
                if obj["kind"] == "Service"
                else cp.api.post(f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices", obj)
            )
            if obj["metadata"]["name"] == "lb":
                created["status"] = {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}
                cp.api.put(f"/api/v1/namespaces/{ns}/services/lb/status", created)
        ips = [
            s["spec"]["clusterIP"]
            for s in cp.api.get(f"/api/v1/namespaces/{ns}/services")["items"]
            if s["spec"].get("clusterIP") not in (None, "None")
        ]
        config = tmp_path / "kube-proxy.yaml"
        identity = cp.kubeconfig("system:kube-proxy")
        config.write_text(
            yaml.safe_dump(kube_proxy_config("iptables", NODE, identity, cluster_cidr=POD_NET))
        )
        with (tmp_path / "kube-proxy.log").open("wb") as log:
            procs.append(netns.popen(theirs.netns, [str(kube_proxy_binary), f"--config={config}"],
                                     stdout=log, stderr=log))  # fmt: skip
        kubeconfig = cp.token_kubeconfig("kube-system", "netplane-proxy")
        with (tmp_path / "netplane.log").open("wb") as log:
            procs.append(netns.popen(ours.netns, [
                NETPLANE, "proxy", "run", "--kubeconfig", str(kubeconfig), "--node", NODE,
                "--cluster-cidr", POD_NET, "--metrics-addr", "127.0.0.1:10249",
                "--healthz-addr", "127.0.0.1:10256"], stdout=log, stderr=log))  # fmt: skip
        kube_proxy = without_deliberate(_settled(theirs.netns, ips))
        netplane = _settled(ours.netns, ips)
    finally:
        for proc in procs:
            netns.stop(proc, timeout=30)
    # the comparison covers every shape: ClusterIP, NodePort, LB, externalIPs, policies
    for rules in (kube_proxy, netplane):
        assert sum(c.startswith(("KUBE-SVC-", "KUBE-SVL-")) for _, c in rules) >= 7
        assert sum(c.startswith("KUBE-EXT-") for _, c in rules) >= 3
    differences = []
    for key in sorted(kube_proxy.keys() | netplane.keys()):
        a, b = kube_proxy.get(key), netplane.get(key)
        if a != b:
            only_k = [r for r in a or [] if r not in (b or [])]
            only_n = [r for r in b or [] if r not in (a or [])]
            differences.append(
                f"{key[0]} {key[1]}: "
                + ("missing in netplane; " if b is None else "")
                + ("missing in kube-proxy; " if a is None else "")
                + f"kube-proxy only {only_k}; netplane only {only_n}"
                + ("; order differs" if not only_k and not only_n else "")
            )
    assert not differences, "\n".join(differences)
