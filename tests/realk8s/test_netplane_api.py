"""netplane's proxy and DNS server against the real kube-apiserver, under the identities
deploy/rbac.yaml ships (a permission missing there fails these tests), with real traffic.

Objects are made with the real kubectl; a client pod reaches the ClusterIP through the
rules netplane wrote into the node namespace's kernel; dig asks netplane's DNS server.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time

import pytest

from netplane.testing.lab import probe, wait_for

pytestmark = pytest.mark.slow

OUTAGE = float(os.environ.get("NETPLANE_TEST_API_OUTAGE", "30"))  # seconds the API is away
WAIT = 60.0  # generous: the machine is shared; tests assert outcomes, not durations


def _slice(ns: str, service: str, pods: list, name: str = "") -> str:
    return json.dumps(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name or f"{service}-x",
                "namespace": ns,
                "labels": {"kubernetes.io/service-name": service},
            },
            "addressType": "IPv4",
            "ports": [{"name": "80-8080", "port": 8080, "protocol": "TCP"}],  # kubectl's name
            "endpoints": [{"addresses": [p.ip], "conditions": {"ready": True}} for p in pods],
        }
    )


def _service(node, ns: str, name: str, pods: list) -> str:
    """`kubectl create service` + `kubectl apply` of its EndpointSlice; the ClusterIP."""
    node.cp.kubectl("create", "service", "clusterip", name, "--tcp=80:8080", "-n", ns)
    node.cp.kubectl("apply", "-f", "-", input=_slice(ns, name, pods))
    return node.cp.kubectl("get", "service", name, "-n", ns, "-o", "jsonpath={.spec.clusterIP}")


def _answers(node, client, ip: str, count: int = 12) -> set[str]:
    return {line.split()[0] for line in probe(client.ns, ip, 80, count, timeout=2)}


def _until(predicate, what: str, timeout: float = WAIT):
    return wait_for(predicate, timeout, interval=0.2, what=what)


def test_kubectl_changes_reach_rules_dns_and_traffic(netplane_node, k8s_namespace) -> None:
    node, ns = netplane_node, k8s_namespace
    a = node.lab.add_pod("pod-a", 10, serve_port=8080)
    b = node.lab.add_pod("pod-b", 11, serve_port=8080)
    client = node.lab.add_pod("client", 20)
    ip = _service(node, ns, "web", [a])
    _until(lambda: _answers(node, client, ip) == {"pod-a"}, "traffic to pod-a via ClusterIP")
    _until(lambda: node.dig(f"web.{ns}.svc.cluster.local") == [ip], "the name")

    node.cp.kubectl("apply", "-f", "-", input=_slice(ns, "web", [a, b]))
    _until(lambda: _answers(node, client, ip, 24) == {"pod-a", "pod-b"}, "both endpoints")
    node.cp.kubectl("apply", "-f", "-", input=_slice(ns, "web", [b]))
    _until(lambda: _answers(node, client, ip) == {"pod-b"}, "pod-a removed")

    node.cp.kubectl("delete", "service", "web", "-n", ns)
    _until(lambda: not node.dig(f"web.{ns}.svc.cluster.local"), "the name gone")
    _until(lambda: f"{ip}/32" not in node.nat_rules(), "the service's rules gone")
    node.proxy.check()
    node.dns.check()


def _failures(daemon) -> int:
    return len(re.findall(r"list/watch failed", daemon.text()))


def test_api_server_outage(netplane_node, k8s_namespace) -> None:
    """Stopped for OUTAGE seconds: the data plane keeps serving the last state, nothing spins;
    changes made right after the restart (while RBAC may still answer 403) are applied."""
    node, ns, cp = netplane_node, k8s_namespace, netplane_node.cp
    a = node.lab.add_pod("pod-a", 10, serve_port=8080)
    b = node.lab.add_pod("pod-b", 11, serve_port=8080)
    client = node.lab.add_pod("client", 20)
    ip = _service(node, ns, "web", [a])
    gone_ip = _service(node, ns, "old", [a])
    _until(lambda: _answers(node, client, ip) == {"pod-a"}, "traffic before the outage")
    _until(lambda: node.dig(f"old.{ns}.svc.cluster.local") == [gone_ip], "dns before")
    try:
        cp.stop_apiserver(deadline=5)
        # On SIGTERM the API server first takes its own address out of default/kubernetes's
        # endpoints: a real change the proxy applies. Nothing may change after it.
        with contextlib.suppress(TimeoutError):
            _until(lambda: "default/kubernetes:https -> " not in node.nat_rules(), "", 10)
        rules = node.nat_rules()
        cpu = node.proxy.cpu() + node.dns.cpu()
        failures = _failures(node.proxy) + _failures(node.dns)
        end = time.monotonic() + OUTAGE
        while time.monotonic() < end:  # the data plane untouched meanwhile
            assert _answers(node, client, ip, 4) == {"pod-a"}
            assert node.dig(f"web.{ns}.svc.cluster.local") == [ip]
            time.sleep(min(5.0, max(0.0, end - time.monotonic())))
        assert node.nat_rules() == rules
        spent = node.proxy.cpu() + node.dns.cpu() - cpu
        retries = _failures(node.proxy) + _failures(node.dns) - failures
    finally:
        cp.start_apiserver()
    # No busy loop: back-off of 0.5 s doubling to 30 s is ~8 attempts per watched kind in 30 s.
    assert spent < max(3.0, OUTAGE / 10), f"{spent:.1f} s of CPU while the API was away"
    assert 0 < retries < 10 * OUTAGE, retries

    node.cp.kubectl("apply", "-f", "-", input=_slice(ns, "web", [b]))
    new_ip = _service(node, ns, "new", [b])
    node.cp.kubectl("delete", "service", "old", "-n", ns)
    _until(lambda: _answers(node, client, ip) == {"pod-b"}, "the endpoint change after")
    _until(lambda: _answers(node, client, new_ip) == {"pod-b"}, "the new service after")
    _until(lambda: node.dig(f"new.{ns}.svc.cluster.local") == [new_ip], "the new name")
    _until(lambda: not node.dig(f"old.{ns}.svc.cluster.local"), "the deleted name")
    _until(lambda: f"{gone_ip}/32" not in node.nat_rules(), "the deleted service's rules")


def test_expired_watch_after_compaction(netplane_node, k8s_namespace) -> None:
    """The API server crashes, etcd's history is compacted, it comes back: every watch
    resumes from a resourceVersion the server no longer has and gets 410 Gone; netplane
    lists again and follows the changes made after."""
    node, ns, cp = netplane_node, k8s_namespace, netplane_node.cp
    a = node.lab.add_pod("pod-a", 10, serve_port=8080)
    client = node.lab.add_pod("client", 20)
    ip = _service(node, ns, "web", [a])
    _until(lambda: _answers(node, client, ip) == {"pod-a"}, "traffic before")
    _until(lambda: node.dig(f"web.{ns}.svc.cluster.local") == [ip], "dns before")
    cp.kubectl("create", "configmap", "bump", "-n", ns)  # etcd moves past what they saw
    try:
        cp.stop_apiserver(deadline=0)
        cp.compact_etcd()
    finally:
        cp.start_apiserver()
    new_ip = _service(node, ns, "after", [a])
    cp.kubectl("delete", "service", "web", "-n", ns)
    _until(lambda: _answers(node, client, new_ip) == {"pod-a"}, "the service made after")
    _until(lambda: node.dig(f"after.{ns}.svc.cluster.local") == [new_ip], "its name")
    _until(lambda: not node.dig(f"web.{ns}.svc.cluster.local"), "the deleted name")
    for daemon in (node.proxy, node.dns):
        _until(lambda d=daemon: "expired, listing again" in d.text(), "a 410 and a relist")
