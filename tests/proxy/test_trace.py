# ruff: noqa: E501  (golden restore lines are as long as iptables writes them)
"""The tracer itself: parsing, branch exploration, and failing loudly on the unknown."""

from __future__ import annotations

import pytest

from netplane.proxy._trace import Outcome, Packet, TraceError
from netplane.proxy._trace_iptables import Tracer, parse_rule, trace

from .conftest import EXTERNAL, NODE_IP, POD, endpoint

BASE = """\
*nat
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
{nat}
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
COMMIT
"""


def _rules(*lines: str, chains: tuple[str, ...] = ()) -> str:
    decl = "".join(f":{c} - [0:0]\n" for c in chains)
    return BASE.format(nat=decl + "\n".join(lines))


@pytest.mark.parametrize(
    "line",
    [
        "-A X -m multiport --dports 80,443 -j ACCEPT",  # unknown match
        "-A X -m tcp -p tcp --sport 80 -j ACCEPT",  # unknown option
        "-A X -i eth0 -j ACCEPT",  # interfaces are not modelled
        "-A X ! -p tcp -j ACCEPT",
        "-A X -m addrtype --dst-type UNICAST -j ACCEPT",
        "-A X -m statistic --mode nth --every 2 -j ACCEPT",
        "-A X -j SNAT --to-source 1.2.3.4",  # option of an unknown target
        "-A X -j ACCEPT extra",
        "-I X -j ACCEPT",
        "-A X -m tcp --dport 80 -j ACCEPT",  # -m tcp without -p tcp
    ],
)
def test_unknown_syntax_fails_loudly(line):
    with pytest.raises(TraceError):
        parse_rule(line)


def test_unknown_chain_and_loop_fail_loudly():
    text = _rules("-A KUBE-SERVICES -j KUBE-NOWHERE")
    with pytest.raises(TraceError, match="unknown chain"):
        trace(text, Packet(POD, "172.30.0.1"))
    text = _rules("-A KUBE-SERVICES -j LOOP", "-A LOOP -j KUBE-SERVICES", chains=("LOOP",))
    with pytest.raises(TraceError, match="loop"):
        trace(text, Packet(POD, "172.30.0.1"))
    with pytest.raises(TraceError, match="not declared"):
        trace("*nat\n-A X -j ACCEPT\nCOMMIT\n", Packet(POD, "172.30.0.1"))


def test_every_probabilistic_branch_is_explored():
    eps = [f"10.180.0.{i}" for i in range(1, 9)]
    lines, chains = [], []
    for i, ip in enumerate(eps):
        chains.append(f"SEP{i}")
        prob = f" -m statistic --mode random --probability {1 / (len(eps) - i):.10f}"
        lines.append(f"-A SVC{prob if i < len(eps) - 1 else ''} -j SEP{i}")
        lines.append(f"-A SEP{i} -p tcp -m tcp -j DNAT --to-destination {ip}:80")
    lines.insert(0, "-A KUBE-SERVICES -d 172.30.0.1/32 -p tcp -m tcp --dport 80 -j SVC")
    t = trace(_rules(*lines, chains=("SVC", *chains)), Packet(POD, "172.30.0.1"))
    assert t.endpoints == {f"{ip}:80" for ip in eps}
    assert t.masquerade == {False}


def test_zero_and_one_probability_are_not_branches():
    text = _rules(
        "-A KUBE-SERVICES -m statistic --mode random --probability 0.0000000000 -j A",
        "-A KUBE-SERVICES -m statistic --mode random --probability 1.0000000000 -j B",
        "-A A -p tcp -m tcp -j DNAT --to-destination 10.0.0.1:1",
        "-A B -p tcp -m tcp -j DNAT --to-destination 10.0.0.2:2",
        chains=("A", "B"),
    )
    assert trace(text, Packet(POD, "1.1.1.1")).endpoints == {"10.0.0.2:2"}


def test_iptables_save_output_is_understood(cluster):
    """What iptables-save prints back for our rules (defaults spelled out) traces the same."""
    saved = """\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-Y - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-X - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SEP-Y -s 10.180.0.1/32 -m comment --comment "ns1/svc1:p80" -j KUBE-MARK-MASQ
-A KUBE-SEP-Y -p tcp -m comment --comment "ns1/svc1:p80" -m recent --set --name KUBE-SEP-Y --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 10.180.0.1:80
-A KUBE-SERVICES -d 172.30.0.41/32 -p tcp -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp --dport 80 -j KUBE-SVC-X
-A KUBE-SVC-X ! -s 10.0.0.0/8 -d 172.30.0.41/32 -p tcp -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-X -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-Y --mask 255.255.255.255 --rsource -j KUBE-SEP-Y
-A KUBE-SVC-X -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j KUBE-SEP-Y
COMMIT
*filter
:INPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
-A KUBE-SERVICES -d 172.30.0.42/32 -p tcp -m comment --comment "ns1/svc2:p80 has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
COMMIT
"""
    tracer = Tracer(saved, [NODE_IP])
    assert tracer.trace(Packet(POD, "172.30.0.41")).outcomes == {
        Outcome("DNAT", "10.180.0.1:80", False)
    }
    assert tracer.trace(Packet(EXTERNAL, "172.30.0.41")).outcomes == {
        Outcome("DNAT", "10.180.0.1:80", True)
    }
    assert tracer.trace(Packet(POD, "172.30.0.42")).outcomes == {Outcome("REJECT")}


def test_rendered_rules_parse_completely(cluster):
    """Every line the renderer can emit is understood (affinity, FW, Local, v4)."""
    from .conftest import port

    cluster.service(
        "svc1",
        "172.30.0.41",
        type="LoadBalancer",
        ports=[port(80, node_port=3001)],
        external_ips=("192.168.99.11",),
        load_balancer_ips=("1.2.3.4",),
        load_balancer_source_ranges=("203.0.113.0/25",),
        external_traffic_policy="Local",
        session_affinity="ClientIP",
        health_check_node_port=30000,
    )
    cluster.endpoints("svc1", [endpoint("10.180.0.1"), endpoint("10.180.0.2", node="node2")])
    tracer = cluster.tracer()
    t = tracer.trace(Packet(EXTERNAL, "1.2.3.4"))
    assert t.outcomes == {Outcome("DNAT", "10.180.0.1:80", False)}
    assert tracer.trace(Packet("198.51.100.1", "1.2.3.4")).outcomes == {Outcome("DROP")}


def test_tracer_accepts_tables(cluster):
    from netplane.proxy.render import assemble, render_service

    cluster.service("svc1", "172.30.0.41")
    cluster.endpoints("svc1", [endpoint("10.180.0.1")])
    snap, config = cluster.snapshot(), cluster.config()
    tables = assemble(config, [render_service(snap, k, config) for k in snap.services])
    t = Tracer(tables, [NODE_IP]).trace(Packet(POD, "172.30.0.41"))
    assert t.outcomes == {Outcome("DNAT", "10.180.0.1:80", False)}


def test_kube_proxy_option_order_is_understood():
    """kube-proxy writes `-m tcp -p tcp -d IP --dport N`; iptables-save writes ours."""
    kp = parse_rule(
        '-A KUBE-SVC-X -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp'
        " -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ"
    )
    ours = parse_rule(
        "-A KUBE-SVC-X ! -s 10.0.0.0/8 -d 172.30.0.41/32 -p tcp -m comment --comment"
        ' "ns1/svc1:p80 cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ'
    )
    fields = ("chain", "src", "dst", "proto", "target", "target_args")
    assert all(getattr(kp, f) == getattr(ours, f) for f in fields)
    assert sorted(kp.matches) == sorted(ours.matches)


def test_reports_from_a_saved_ruleset_and_from_a_reader_without_paths():
    from netplane.proxy import trace as report
    from netplane.proxy._trace import Trace

    lines = [
        "-A KUBE-SERVICES -d 172.30.0.1/32 -p tcp -m tcp --dport 80 -j SVC",
        "-A SVC -m statistic --mode random --probability 0.25000000000 -j A",
        "-A SVC -j B",
        "-A A -p tcp -m tcp -j DNAT --to-destination 10.0.0.1:80",
        "-A B -p tcp -m tcp -j DNAT --to-destination 10.0.0.2:80",
    ]
    ruleset = report.read_file("saved", _rules(*lines, chains=("SVC", "A", "B")))
    assert ruleset.format == "iptables"
    packet = Packet(POD, "172.30.0.1")
    result = report.trace(ruleset, packet)
    doc = report.as_json(result, packet, ruleset)
    assert doc["endpoints"] == {"10.0.0.1:80": 0.25, "10.0.0.2:80": 0.75}
    text = report.format_text(result, packet, ruleset)
    assert "   75.0%  DNAT     10.0.0.2:80" in text and "<- taken (25.0%)" in text
    # a reader that only knows the ends (no paths) still gets a report
    ends = Trace(frozenset({Outcome("DNAT", "10.0.0.1:80")}))
    assert report.as_json(ends, packet, ruleset)["endpoints"] == {"10.0.0.1:80": None}
    assert "outcomes (no path details" in report.format_text(ends, packet, ruleset)
    with pytest.raises(TraceError, match="not a ruleset"):
        report.read_file("junk", "hello\n")
