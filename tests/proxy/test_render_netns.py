"""The real tools accept the rendered text: `iptables-restore --test` (legacy and nft,
IPv4 and IPv6) and a real restore into a private network namespace, whose
`iptables-save` must print our rules back (modulo the defaults it spells out)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid

import pytest

from netplane.proxy._trace import Packet
from netplane.proxy._trace_iptables import Tracer

from .conftest import EXTERNAL, NODE_IP, POD, endpoint, port

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("ip"),
        reason="needs root and iproute2 to create network namespaces",
    ),
]


def _build(cluster, v6: bool) -> str:
    fam = (lambda a, b: b) if v6 else (lambda a, b: a)
    cip = lambda n: fam(f"172.30.0.{n}", f"fd00:30::{n}")  # noqa: E731
    ep = lambda n: fam(f"10.180.0.{n}", f"fd00:180::{n}")  # noqa: E731
    at = fam("IPv4", "IPv6")
    cluster.service(
        "plain", cip(1), ports=[port(80, target=8080), port(53, name="dns", protocol="UDP")]
    )
    cluster.endpoints(
        "plain",
        [endpoint(ep(1)), endpoint(ep(2), node="node2")],
        ports=[("p80", 8080), ("dns", 53, "UDP")],
        address_type=at,
    )
    cluster.service(
        "lb",
        cip(2),
        type="LoadBalancer",
        ports=[port(80, node_port=30080), port(9, name="s", protocol="SCTP", node_port=30009)],
        external_ips=(fam("192.168.99.11", "2001:db8::11"),),
        load_balancer_ips=(fam("1.2.3.4", "2001:db8::1234"),),
        load_balancer_source_ranges=(fam("203.0.113.0/25", "2001:db8:1::/64"),),
        external_traffic_policy="Local",
        health_check_node_port=30000,
        session_affinity="ClientIP",
    )
    cluster.endpoints(
        "lb",
        [endpoint(ep(3)), endpoint(ep(4), node="node2")],
        ports=[("p80", 80), ("s", 9, "SCTP")],
        address_type=at,
    )
    cluster.service("itp", cip(3), internal_traffic_policy="Local")
    cluster.endpoints("itp", [endpoint(ep(5), node="node2")], address_type=at)
    cluster.service("empty", cip(4), type="NodePort", ports=[port(80, node_port=30004)])
    return cluster.render(
        family=fam("ipv4", "ipv6"),
        cluster_cidr=fam("10.0.0.0/8", "fd00::/8"),
        node_ips=(fam(NODE_IP, "2001:db8::2"),),
    )


def _tool(variant: str, v6: bool, action: str) -> str:
    name = f"{'ip6' if v6 else 'ip'}tables-{variant}-{action}"
    if not shutil.which(name):
        pytest.skip(f"{name} not installed")
    return name


@pytest.fixture
def netns():
    name = f"np-render-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def _run(ns: str, argv: list[str], stdin: str = "") -> str:
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, *argv], input=stdin, text=True, capture_output=True, timeout=60
    )
    assert proc.returncode == 0, f"{argv}: {proc.stderr}"
    return proc.stdout


def _normalize(line: str, v6: bool) -> str:
    """Our spelling -> iptables-save's spelling of the same rule."""
    mask = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff" if v6 else "255.255.255.255"
    line = re.sub(r"--or-mark (\S+)", r"--set-xmark \1/\1", line)
    line = re.sub(r"--xor-mark (\S+)", r"--set-xmark \1/0x0", line)
    line = re.sub(
        r"-m recent --name (\S+) --rcheck --seconds (\d+) --reap",
        rf"-m recent --rcheck --seconds \2 --reap --name \1 --mask {mask} --rsource",
        line,
    )
    line = re.sub(
        r"-m recent --name (\S+) --set", rf"-m recent --set --name \1 --mask {mask} --rsource", line
    )
    if line.endswith("-j REJECT"):
        line += " --reject-with " + ("icmp6-port-unreachable" if v6 else "icmp-port-unreachable")
    return re.sub(r"--probability (\S+)", lambda m: f"--probability {float(m[1]):.8f}", line)


def _rules(text: str) -> list[str]:
    return [x for x in text.splitlines() if x.startswith("-A ")]


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("variant", ["legacy", "nft"])
def test_restore_accepts_and_save_prints_it_back(cluster, netns, variant, v6):
    text = _build(cluster, v6)
    restore = _tool(variant, v6, "restore")
    _run(netns, [restore, "--test"], text)
    _run(netns, [restore, "--noflush"], text)  # really load it: the kernel accepts it too
    saved = _run(netns, [_tool(variant, v6, "save")])
    want = sorted(_normalize(x, v6) for x in _rules(text))
    got = sorted(_normalize(x, v6) for x in _rules(saved))  # probability rounding only
    assert got == want
    # and what the kernel holds still traces like our text
    if not v6:
        ours, theirs = Tracer(text, [NODE_IP]), Tracer(saved, [NODE_IP])
        for pkt in (
            Packet(POD, "172.30.0.1"),
            Packet(EXTERNAL, "1.2.3.4"),
            Packet("198.51.100.1", "1.2.3.4"),
            Packet(EXTERNAL, NODE_IP, dport=30004),
            Packet(EXTERNAL, NODE_IP, "sctp", 30009),
            Packet(POD, "172.30.0.3"),
            Packet(NODE_IP, "172.30.0.2", output=True),
        ):
            assert ours.trace(pkt).outcomes == theirs.trace(pkt).outcomes, pkt
