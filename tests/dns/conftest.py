"""Fixtures: manifest builders and a `netplane dns serve` on a loopback port of its own."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import dns.message
import dns.query
import dns.rdatatype
import pytest

from netplane.testing.ports import free_port
from netplane.testing.procs import stop_process

NETPLANE = str(Path(sys.executable).with_name("netplane"))


def service(name, ns="default", ips=("10.96.0.100",), ports=(("http", 80, "TCP"),), **spec):
    body = {"ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports], **spec}
    if ips is None:
        body["clusterIP"] = "None"
    elif ips:
        body["clusterIPs"] = list(ips)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": body,
    }


def endpoint_slice(
    svc,
    ns="default",
    addresses=(),
    ports=(("http", 80, "TCP"),),
    family="IPv4",
    name=None,
    ready=True,
):
    """addresses: IPs, or (ip, hostname) pairs."""
    eps = []
    for a in addresses:
        ip, host = (a, "") if isinstance(a, str) else a
        ep = {"addresses": [ip], "conditions": {"ready": ready}}
        if host:
            ep["hostname"] = host
        eps.append(ep)
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name or f"{svc}-{family.lower()}",
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": svc},
        },
        "addressType": family,
        "endpoints": eps,
        "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports],
    }


def pod(name, ns, ip):
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"containers": [{"name": "c", "image": "x"}]},
        "status": {"podIP": ip, "podIPs": [{"ip": ip}], "phase": "Running"},
    }


def lab_objects():
    """The seed lab's names plus one of each record kind."""
    return [
        service("kubernetes", ips=("10.96.0.1",), ports=(("https", 443, "TCP"),)),
        service(
            "kube-dns",
            "kube-system",
            ips=("10.96.0.10",),
            ports=(("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")),
        ),
        service("blue", ips=("10.108.244.161",)),
        service("thesvc", "other", ips=("10.100.0.5",)),
        service(
            "dual",
            ips=("10.96.5.5", "fd00::5:5"),
            ipFamilies=["IPv4", "IPv6"],
            ipFamilyPolicy="RequireDualStack",
        ),
        service("hdls", ips=None),
        endpoint_slice("hdls", addresses=[("172.0.0.2", ""), ("172.0.0.3", "web-1")]),
        endpoint_slice("hdls", addresses=["5678:abcd::1"], family="IPv6"),
        service("numbers-api", type="ExternalName", externalName="numbersapi.com", ips=()),
        service(
            "alias", type="ExternalName", externalName="blue.default.svc.cluster.local", ips=()
        ),
        service("big", ips=None),
        endpoint_slice("big", addresses=[f"10.44.{i // 250}.{i % 250 + 1}" for i in range(200)]),
        pod("client", "default", "10.244.0.7"),
        # the cases CoreDNS answers that netplane once did not (issue 13)
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "empty"}},
        service(
            "external", "testns", type="ExternalName", externalName="ext.interwebs.test", ips=()
        ),
        endpoint_slice("blue", addresses=[("10.244.1.5", ""), ("10.244.1.6", "named")]),
        service("srvh", ips=None),
        endpoint_slice(
            "srvh", addresses=[(f"10.244.2.{i}", f"backend-host-number-{i}") for i in range(6)]
        ),
    ]


def write_manifests(path: Path, objects) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))
    os.replace(tmp, path)


class Server:
    """A `netplane dns serve` subprocess and a dnspython client for it."""

    def __init__(
        self, manifests: Path | None, *args: str, host: str | None = None, workers: int = 1
    ):
        self.host = host or f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.1"
        self.port = free_port(self.host)
        self.ready_port, self.metrics_port, self.health_port = (
            free_port("127.0.0.1") for _ in "abc"
        )
        self.manifests = manifests
        cmd = [
            NETPLANE,
            "dns",
            "serve",
            *(["--manifests", str(manifests)] if manifests else []),
            "--listen",
            f"{self.host}:{self.port}",
            "--workers",
            str(workers),
            "--ready-addr",
            f"127.0.0.1:{self.ready_port}",
            "--metrics-addr",
            f"127.0.0.1:{self.metrics_port}",
            "--health-addr",
            f"127.0.0.1:{self.health_port}",
            *args,
        ]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read()}")
            if self.http(self.ready_port, "/ready")[0] == 200:
                return
            time.sleep(0.1)
        raise TimeoutError("server not ready")

    def http(self, port: int, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""
        except OSError:
            return 0, ""

    def query(self, name: str, rdtype: str = "A", tcp: bool = False, **kw) -> dns.message.Message:
        q = dns.message.make_query(name, rdtype, **kw)
        if tcp:
            return dns.query.tcp(q, self.host, port=self.port, timeout=3)
        return dns.query.udp(q, self.host, port=self.port, timeout=3, ignore_trailing=True)

    def stop(self) -> None:
        stop_process(self.proc)


def launch(servers: list[Server], manifests: Path | None, *args: str, **kw) -> Server:
    """Start and wait for a server; a port taken between our check and the server's bind
    (other test suites run on this machine too) gets fresh ports, up to three times."""
    for attempt in range(3):
        srv = Server(manifests, *args, **kw)
        servers.append(srv)
        try:
            srv.wait_ready()
            return srv
        except RuntimeError as e:
            if "Address already in use" not in str(e) or attempt == 2:
                raise
    raise AssertionError("unreachable")


@pytest.fixture
def start_server(tmp_path):
    servers: list[Server] = []

    def start(objects=None, *args: str, **kw) -> Server:
        path = tmp_path / f"objects{len(servers)}.json"
        write_manifests(path, lab_objects() if objects is None else objects)
        return launch(servers, path, *args, **kw)

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory):
    path = tmp_path_factory.mktemp("dns") / "lab.json"
    write_manifests(path, lab_objects())
    servers: list[Server] = []
    try:
        yield launch(servers, path, "--pods", "insecure")
    finally:
        for s in servers:
            s.stop()


def rrs(msg: dns.message.Message, section: str = "answer", rdtype: str | None = None) -> list:
    """The rdata texts of one section (optionally one type), sorted."""
    out = []
    for rrset in getattr(msg, section):
        if rdtype is None or rrset.rdtype == dns.rdatatype.from_text(rdtype):
            out += [r.to_text() for r in rrset]
    return sorted(out)


@pytest.fixture(scope="session")
def k8s():
    """The builders and helpers above, for test modules (importlib mode has no conftest import)."""
    return SimpleNamespace(
        service=service,
        endpoint_slice=endpoint_slice,
        pod=pod,
        lab_objects=lab_objects,
        write_manifests=write_manifests,
        rrs=rrs,
        Server=Server,
        launch=launch,
    )
