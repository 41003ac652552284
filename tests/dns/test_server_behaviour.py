"""Following object changes, forwarding with a cache, bad input, health/ready/metrics."""

from __future__ import annotations

import random
import socket
import struct
import threading
import time

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from dnslib import QTYPE, RR, A, DNSRecord

Z = "cluster.local."
pytestmark = pytest.mark.slow  # real server processes and real traffic


class Upstream:
    """A tiny authoritative server of our own on loopback (never a real resolver)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.queries: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            q = DNSRecord.parse(data)
            name = str(q.q.qname)
            self.queries.append(name)
            reply = q.reply()
            if name.startswith("nx.") or name.endswith(".lan."):
                reply.header.rcode = 3
            elif q.q.qtype == QTYPE.A:
                reply.add_answer(RR(name, QTYPE.A, rdata=A("192.0.2.1"), ttl=60))
            self.sock.sendto(reply.pack(), addr)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def upstream():
    u = Upstream()
    yield u
    u.close()


def test_forwarding_with_cache(start_server, upstream, k8s):
    srv = start_server(None, "--upstream", f"127.0.0.1:{upstream.port}")
    r = srv.query("www.example.test.")
    assert k8s.rrs(r) == ["192.0.2.1"] and r.rcode() == dns.rcode.NOERROR
    r2 = srv.query("WWW.example.test.")
    assert k8s.rrs(r2) == ["192.0.2.1"]
    assert r2.question[0].name.to_text() == "WWW.example.test."
    assert r2.answer[0].ttl <= 60
    assert upstream.queries.count("www.example.test.") == 1  # the second came from the cache
    assert srv.query("nx.example.test.").rcode() == dns.rcode.NXDOMAIN
    assert k8s.rrs(srv.query(f"blue.default.svc.{Z}")) == ["10.108.244.161"]
    assert not [q for q in upstream.queries if "cluster.local" in q]  # the zone is never forwarded
    deadline = time.monotonic() + 10
    metrics = ""
    while "coredns_cache_hits_total" not in metrics and time.monotonic() < deadline:
        metrics = srv.http(srv.metrics_port, "/metrics")[1]
        time.sleep(0.3)
    assert "coredns_cache_hits_total{server=" in metrics


def test_external_name_out_of_zone_through_the_upstream(start_server, upstream, k8s):
    """CNAME + the target's A from the upstream (as CoreDNS and the DNS spec's example);
    RA only on what the upstreams answered, never on our own authoritative answers."""
    import subprocess

    srv = start_server(None, "--upstream", f"127.0.0.1:{upstream.port}")
    out = subprocess.run(
        ["dig", "+tries=1", "+time=3", "-p", str(srv.port), f"@{srv.host}",
         f"external.testns.svc.{Z}", "A"],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout  # fmt: skip
    assert "ext.interwebs.test." in out and "192.0.2.1" in out
    r = srv.query(f"external.testns.svc.{Z}")
    assert [(rr.rdtype, rr[0].to_text()) for rr in r.answer] == [
        (dns.rdatatype.CNAME, "ext.interwebs.test."),
        (dns.rdatatype.A, "192.0.2.1"),
    ]
    assert upstream.queries == ["ext.interwebs.test."]
    r = srv.query(f"blue.default.svc.{Z}")
    assert r.flags & dns.flags.AA and not r.flags & dns.flags.RA
    r = srv.query("www.example.test.")
    assert r.flags & dns.flags.RA and not r.flags & dns.flags.AA


def test_object_changes_show_up(start_server, k8s):
    objects = k8s.lab_objects()
    srv = start_server(objects)
    name = f"late.default.svc.{Z}"
    assert srv.query(name).rcode() == dns.rcode.NXDOMAIN
    k8s.write_manifests(srv.manifests, [*objects, k8s.service("late", ips=("10.96.7.7",))])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not k8s.rrs(srv.query(name)):
        time.sleep(0.02)
    assert k8s.rrs(srv.query(name)) == ["10.96.7.7"]
    k8s.write_manifests(srv.manifests, objects)
    while time.monotonic() < deadline and srv.query(name).rcode() != dns.rcode.NXDOMAIN:
        time.sleep(0.02)
    assert srv.query(name).rcode() == dns.rcode.NXDOMAIN


def _bad_packets(seed: int = 1234, count: int = 3000):
    rng = random.Random(seed)
    good = dns.message.make_query("blue.default.svc.cluster.local.", "A").to_wire()
    yield b""
    yield b"\x00"
    yield good[:11]
    yield good[:20]  # truncated question
    yield good[:12] + b"\xc0\x0c\x00\x01\x00\x01"  # compression pointer to itself
    yield good[:4] + b"\x00\x02" + good[6:]  # two questions announced, one present
    yield good[:12] + b"\x01a" * 127 + b"\x00\x00\x01\x00\x01"  # 127 labels
    yield good[:12] + b"\x3fx" + b"y" * 62 + b"\x00\x00\x01\x00\x01"  # label shorter than said
    yield good[:12] + b"\x40" + b"z" * 64 + b"\x00\x00\x01\x00\x01"  # label length 64
    yield good[:2] + b"\x80\x00" + good[4:]  # a response: must not be answered
    yield good[:2] + b"\x28\x00" + good[4:]  # opcode UPDATE
    for _ in range(count):
        kind = rng.randrange(3)
        if kind == 0:
            yield bytes(rng.randrange(256) for _ in range(rng.randrange(1, 120)))
        elif kind == 1:
            b = bytearray(good)
            for _ in range(rng.randrange(1, 6)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            yield bytes(b)
        else:
            yield good[: rng.randrange(len(good))]


def test_bad_input_never_crashes(lab_server, k8s):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.05)
        for i, packet in enumerate(_bad_packets()):
            s.sendto(packet, (lab_server.host, lab_server.port))
            if i % 50 == 0:  # drain replies now and then; check a FORMERR is well formed
                try:
                    while True:
                        data = s.recv(65535)
                        assert len(data) >= 12 and data[2] & 0x80
                except TimeoutError:
                    pass
    with socket.create_connection((lab_server.host, lab_server.port), timeout=3) as t:
        t.sendall(struct.pack("!H", 40) + b"\x01" * 10)  # announces more than it sends
    assert lab_server.proc.poll() is None
    assert k8s.rrs(lab_server.query(f"blue.default.svc.{Z}")) == ["10.108.244.161"]
    q = dns.message.make_query("blue.default.svc.cluster.local.", "A").to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(q[:12] + b"\xc0\x0c\x00\x01\x00\x01", (lab_server.host, lab_server.port))
        reply = s.recv(512)
    assert reply[:2] == q[:2] and reply[3] & 0x0F == 1  # FORMERR


def test_health_ready_metrics(lab_server):
    assert lab_server.http(lab_server.health_port, "/health") == (200, "OK")
    assert lab_server.http(lab_server.ready_port, "/ready")[0] == 200
    lab_server.query(f"blue.default.svc.{Z}")
    deadline = time.monotonic() + 10
    text = ""
    while "coredns_dns_requests_total" not in text and time.monotonic() < deadline:
        text = lab_server.http(lab_server.metrics_port, "/metrics")[1]
        time.sleep(0.3)
    for name in (
        "coredns_dns_requests_total",
        'coredns_dns_responses_total{rcode="NOERROR"',
        "coredns_dns_request_duration_seconds_bucket",
        "coredns_cache_misses_total",
    ):
        assert name in text


def test_several_workers(start_server, k8s):
    srv = start_server(None, workers=2)
    for _ in range(20):
        assert k8s.rrs(srv.query(f"blue.default.svc.{Z}")) == ["10.108.244.161"]


def test_autopath_server_side_search(start_server, upstream, k8s, tmp_path):
    pod_ip = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.7"
    host_resolv = tmp_path / "resolv.conf"
    host_resolv.write_text("search lan\n")
    objects = [*k8s.lab_objects(), k8s.pod("me", "default", pod_ip)]
    srv = start_server(objects, "--pods", "verified", "--autopath", "--upstream",
                       f"127.0.0.1:{upstream.port}", "--host-resolv", str(host_resolv))  # fmt: skip

    def ask(name: str, source: str):
        q = dns.message.make_query(name, "A")
        return dns.query.udp(q, srv.host, port=srv.port, timeout=5, source=source)

    r = ask(f"thesvc.other.default.svc.{Z}", pod_ip)
    assert [(rr.name.to_text(), rr[0].to_text()) for rr in r.answer] == [
        (f"thesvc.other.default.svc.{Z}", f"thesvc.other.svc.{Z}"),
        (f"thesvc.other.svc.{Z}", "10.100.0.5"),
    ]
    r = ask(f"www.example.test.default.svc.{Z}", pod_ip)
    assert r.rcode() == dns.rcode.NOERROR
    assert [rr[0].to_text() for rr in r.answer] == ["www.example.test.", "192.0.2.1"]
    assert "www.example.test.lan." in upstream.queries  # the host's search domain came first
    assert ask(f"thesvc.other.default.svc.{Z}", "127.0.0.1").rcode() == dns.rcode.NXDOMAIN
    assert ask(f"nx.default.svc.{Z}", pod_ip).rcode() == dns.rcode.NXDOMAIN
    dashed = pod_ip.replace(".", "-")
    assert k8s.rrs(srv.query(f"{dashed}.default.pod.{Z}")) == [pod_ip]  # --pods verified
    assert srv.query(f"{dashed}.other.pod.{Z}").rcode() == dns.rcode.NXDOMAIN


def test_kubernetes_api_source(tmp_path, k8s):
    from netplane.testing.fakeapi import FakeApiServer, make_service, write_kubeconfig

    with FakeApiServer() as api:
        api.load([make_service("default", "blue", "10.108.244.161")])
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url)
        servers: list = []
        try:
            srv = k8s.launch(servers, None, "--kubeconfig", kubeconfig)
            assert k8s.rrs(srv.query(f"blue.default.svc.{Z}")) == ["10.108.244.161"]
            api.put(make_service("default", "late", "10.96.7.8"))
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not k8s.rrs(srv.query(f"late.default.svc.{Z}")):
                time.sleep(0.05)
            assert k8s.rrs(srv.query(f"late.default.svc.{Z}")) == ["10.96.7.8"]
        finally:
            for s in servers:
                s.stop()
