"""netplane dns beside the real CoreDNS (`kubernetes` plugin) on the same real API server.

The same objects, created through the API; the same questions to both; the answers must
agree on rcode, AA and the answer section (names, types, data), and on what the authority
section holds, except where dns/README.md says we differ on purpose (the reverse zone's
SOA owner). CoreDNS runs with kubeadm's Corefile minus forward/loop/reload (nothing may
leave the machine); netplane under the shipped netplane-dns ServiceAccount.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import pytest

from netplane.bench.dns_peers import Probe
from netplane.bench.dns_perf import find_coredns, wait_ready
from netplane.testing import anchors
from netplane.testing.controlplane import ControlPlane
from netplane.testing.ports import free_port

NETPLANE = str(Path(sys.executable).with_name("netplane"))
pytestmark = [pytest.mark.slow, pytest.mark.root]
COREFILE = """\
.:{port} {{
    bind {host}
    ready 127.0.0.1:{ready}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        ttl 30
    }}
}}
"""


def _coredns() -> str:
    if anchors.is_built("coredns"):
        return str(anchors.binary("coredns"))
    found = find_coredns()
    if found is None:
        pytest.fail("CoreDNS not built: run `netplane anchors build coredns`", pytrace=False)
    return found


def _objects(ns: str) -> list[dict]:
    def svc(name: str, **spec: object) -> dict:
        return {"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": ns}, "spec": spec}  # fmt: skip

    def eps(name: str, addrs: list[tuple[str, str]]) -> dict:
        endpoints = []
        for ip, host in addrs:
            ep: dict = {"addresses": [ip], "conditions": {"ready": True}}
            if host:
                ep["hostname"] = host
            endpoints.append(ep)
        return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": f"{name}-1", "namespace": ns,
                             "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4", "endpoints": endpoints,
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}  # fmt: skip

    http = [{"name": "http", "port": 80, "protocol": "TCP"}]
    return [
        svc("web", ports=http),
        eps("web", [("10.244.7.5", ""), ("10.244.7.6", "named")]),
        svc("hdls", clusterIP="None", ports=http),
        eps(
            "hdls",
            [(f"10.244.8.{i}", f"backend-host-number-{i}" if i % 2 else "") for i in range(1, 7)],
        ),
        svc("external", type="ExternalName", externalName="ext.interwebs.test"),
        svc("alias", type="ExternalName", externalName=f"web.{ns}.svc.cluster.local"),
    ]


def _questions(ns: str, empty: str, web_ip: str) -> list[tuple[str, str]]:
    a, b, c, d = web_ip.split(".")
    z = "cluster.local."
    return [
        (f"web.{ns}.svc.{z}", "A"),
        (f"web.{ns}.svc.{z}", "AAAA"),
        (f"WeB.{ns}.svc.{z}", "A"),
        (f"_http._tcp.web.{ns}.svc.{z}", "SRV"),
        (f"10-244-7-5.web.{ns}.svc.{z}", "A"),
        (f"named.web.{ns}.svc.{z}", "A"),
        (f"hdls.{ns}.svc.{z}", "A"),
        (f"backend-host-number-1.hdls.{ns}.svc.{z}", "A"),
        (f"10-244-8-2.hdls.{ns}.svc.{z}", "A"),
        (f"bogus.hdls.{ns}.svc.{z}", "A"),
        (f"nope.{ns}.svc.{z}", "A"),
        (f"{ns}.svc.{z}", "A"),
        (f"{empty}.svc.{z}", "A"),
        (f"nosuchns-{ns}.svc.{z}", "A"),
        (f"svc.{z}", "A"),
        (f"alias.{ns}.svc.{z}", "A"),
        (f"external.{ns}.svc.{z}", "CNAME"),
        (f"{d}.{c}.{b}.{a}.in-addr.arpa.", "PTR"),
        ("5.7.244.10.in-addr.arpa.", "PTR"),
        ("6.7.244.10.in-addr.arpa.", "PTR"),
        ("1.8.244.10.in-addr.arpa.", "PTR"),
        ("99.250.96.10.in-addr.arpa.", "PTR"),
        (f"dns-version.{z}", "TXT"),
        (f"1-2-3-4.{ns}.pod.{z}", "A"),
        (z, "AXFR"),
    ]


@pytest.fixture
def servers(shipped_rbac: ControlPlane, k8s_namespace: str) -> Iterator[tuple]:
    cp = shipped_rbac
    empty = f"{k8s_namespace}-empty"
    cp.ensure_namespace(empty)
    cp.create_missing(_objects(k8s_namespace))
    host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.1"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ports = []
        core_port, core_ready = free_port(host), free_port("127.0.0.1")
        corefile = cp.directory / f"Corefile-{k8s_namespace}"
        corefile.write_text(COREFILE.format(port=core_port, host=host, ready=core_ready,
                                            kubeconfig=cp.kubeconfig(host=True)))  # fmt: skip
        procs.append(subprocess.Popen([_coredns(), "-conf", str(corefile)],
                                      stdout=subprocess.DEVNULL))  # fmt: skip
        ports.append((core_port, core_ready))
        ours, ready = free_port(host), free_port("127.0.0.1")
        kubeconfig = cp.token_kubeconfig("kube-system", "netplane-dns", host=True)
        procs.append(subprocess.Popen(
            [NETPLANE, "dns", "serve", "--kubeconfig", str(kubeconfig), "--listen",
             f"{host}:{ours}", "--workers", "1", "--ttl", "30", "--pods", "insecure",
             "--ready-addr", f"127.0.0.1:{ready}", "--health-addr", "off",
             "--metrics-addr", "off"]))  # fmt: skip
        ports.append((ours, ready))
        web = cp.api.get(f"/api/v1/namespaces/{k8s_namespace}/services/web")
        web_ip = web["spec"]["clusterIP"]
        for proc, (port, ready_port) in zip(procs, ports, strict=True):
            wait_ready(ready_port, proc, timeout=120)  # then answering: CoreDNS binds later
            Probe(host, port, f"web.{k8s_namespace}.svc.cluster.local.", web_ip).wait(proc)
        yield host, ports[0][0], ports[1][0], _questions(k8s_namespace, empty, web_ip)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(15)
        cp.api.delete(f"/api/v1/namespaces/{empty}", ok=(404,))


def _view(reply: dns.message.Message, reverse: bool) -> tuple:
    answer = sorted(
        (rrset.name.to_text().lower(), dns.rdatatype.to_text(rrset.rdtype), rr.to_text().lower())
        for rrset in reply.answer
        for rr in rrset
    )
    authority = sorted(
        (dns.rdatatype.to_text(r.rdtype), "" if reverse else r.name.to_text().lower())
        for r in reply.authority
    )
    return reply.rcode(), bool(reply.flags & dns.flags.AA), answer, authority


def test_answers_match_coredns(servers: tuple) -> None:
    host, coredns_port, netplane_port, questions = servers
    differences, answered = [], 0
    for name, rdtype in questions:
        views = []
        for port in (coredns_port, netplane_port):
            q = dns.message.make_query(name, rdtype)
            reply = dns.query.tcp(q, host, port=port, timeout=5)
            views.append(_view(reply, name.endswith(".arpa.")))
        answered += bool(views[0][2])
        if views[0] != views[1]:
            differences.append(f"{name} {rdtype}:\n  coredns  {views[0]}\n  netplane {views[1]}")
    assert not differences, "\n".join(differences)
    assert answered >= 14  # the comparison is about real answers, not two empty replies


def test_peer_benchmark_measures_every_server(shipped_rbac: ControlPlane) -> None:
    """`netplane bench dns --peer coredns`, small: every server measured, series for compare."""
    from netplane.bench.dns_peers import run

    _coredns()  # fails with how to build it when missing
    results = run(services=40, seconds=1, workers=(2,), cp=shipped_rbac)
    for server in ("coredns", "coredns-cache", "netplane-2w"):
        r = results[server]
        assert (
            r["answers_s"] >= r["ready_s"] > 0
            and r["peak"]["qps"] > 0
            and r["peak"]["completed"] > 0
        )
        assert r["peak"]["server_cpu_share"] >= 0 and r["peak"]["queries_per_cpu_s"] >= 0
        assert r["idle"]["pss_mb"] > 0 and r["after_load"]["processes"] >= 1
    assert results["netplane-2w"]["idle"]["processes"] == 3  # supervisor + 2 workers
    metrics = {(s["metric"], s["labels"].get("server", "")) for s in results["series"]}
    assert ("dns_pss", "coredns") in metrics and ("dns_ready", "netplane-2w") in metrics
    assert ("dns_answers", "coredns") in metrics
    assert ("dns_queries_per_cpu_second", "coredns-cache") in metrics
    for fmt in ("json", "protobuf"):  # the API server's own part of ready, each server's format
        lists = results["api_lists"][fmt]
        assert lists["median_s"] > 0 and lists["bytes"] > 0
        assert ("dns_api_lists", "") in metrics
