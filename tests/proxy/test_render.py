# ruff: noqa: E501  (golden restore lines are as long as iptables writes them)
"""Renderer: chain names, exact restore text, and every rule family checked by tracing."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from netplane.model import Service
from netplane.proxy._chains import endpoint_chain_name, port_hash, service_port_name
from netplane.proxy._trace import Outcome
from netplane.proxy._trace_iptables import parse_restore
from netplane.proxy.nft._names import port_base
from netplane.proxy.render import (
    EMPTY_RULES,
    ProxyConfig,
    ServiceRules,
    assemble,
    format_restore,
    render_full,
    render_service,
)

from .conftest import EXTERNAL, NODE_IP, POD, endpoint, port

# ---- chain names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "proto", "expected"),
    [
        ("ns1/svc1:p80", "tcp", "XPGD46QRK7WJZT7O"),  # kube-proxy's reference vector
        ("ns2/svc2:p80", "tcp", "GNZBNJ2PO5MGZ6GT"),
        ("ns4/svc4:p80", "tcp", "4SW47YFZTEDKD3PK"),
        ("ns5/svc5:p80", "tcp", "NUKIZ6OKUXPJNT4C"),
        ("ns1/svc1:p80", "TCP", "XPGD46QRK7WJZT7O"),  # protocol is lower-cased
    ],
)
def test_port_hash_vectors(name, proto, expected):
    assert port_hash(name, proto) == expected


@pytest.mark.parametrize(
    ("name", "ep", "expected"),
    [
        ("ns1/svc1:p80", "10.180.0.1:80", "KUBE-SEP-SXIVWICOYRO3J4NJ"),
        ("ns4/svc4:p80", "10.180.0.4:80", "KUBE-SEP-UKSFD7AGPMPPLUHC"),
        ("ns4/svc4:p80", "10.180.0.5:80", "KUBE-SEP-C6EBXVWJJZMIWKLZ"),
    ],
)
def test_endpoint_chain_vectors(name, ep, expected):
    assert endpoint_chain_name(name, "tcp", ep) == expected


def test_service_port_name_like_kube_proxy():
    assert service_port_name("ns1", "svc1", "p80") == "ns1/svc1:p80"
    assert service_port_name("ns1", "svc1", "") == "ns1/svc1"  # no trailing colon


def test_unnamed_port_comment_and_ipv6_endpoint_chain(cluster):
    cluster.service("svc1", "fd00:30::41", ports=[port(80, name="")])
    cluster.endpoints("svc1", [endpoint("fd00:180::1")], ports=[("", 80)], address_type="IPv6")
    text = cluster.render(family="ipv6", cluster_cidr="fd00::/8")
    h = port_hash("ns1/svc1", "tcp")
    sep = endpoint_chain_name("ns1/svc1", "tcp", "[fd00:180::1]:80")
    assert '-d fd00:30::41/128 -p tcp -m comment --comment "ns1/svc1 cluster IP"' in text
    assert f"-j KUBE-SVC-{h}" in text
    assert (
        f'-A {sep} -p tcp -m comment --comment "ns1/svc1" -m tcp -j DNAT'
        " --to-destination [fd00:180::1]:80" in text
    )


# ---- exact text --------------------------------------------------------------------------

GOLDEN_CLUSTER_IP = """\
*filter
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-PROXY-CANARY - [0:0]
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
:KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]
:KUBE-SEP-LXVODXWDISEETFEF - [0:0]
-A KUBE-SERVICES -d 172.30.0.41/32 -p tcp -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-SERVICES ! -d 127.0.0.0/8 -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-SVC-XPGD46QRK7WJZT7O ! -s 10.0.0.0/8 -d 172.30.0.41/32 -p tcp -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-SXIVWICOYRO3J4NJ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.2:80" -j KUBE-SEP-LXVODXWDISEETFEF
-A KUBE-SEP-SXIVWICOYRO3J4NJ -s 10.180.0.1/32 -m comment --comment "ns1/svc1:p80" -j KUBE-MARK-MASQ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -p tcp -m comment --comment "ns1/svc1:p80" -m tcp -j DNAT --to-destination 10.180.0.1:80
-A KUBE-SEP-LXVODXWDISEETFEF -s 10.180.0.2/32 -m comment --comment "ns1/svc1:p80" -j KUBE-MARK-MASQ
-A KUBE-SEP-LXVODXWDISEETFEF -p tcp -m comment --comment "ns1/svc1:p80" -m tcp -j DNAT --to-destination 10.180.0.2:80
COMMIT
"""


def test_golden_cluster_ip_two_endpoints(cluster):
    cluster.service("svc1", "172.30.0.41")
    # given out of order, across two slices: output is sorted by "ip:port"
    cluster.endpoints("svc1", [endpoint("10.180.0.2", node="node2")])
    cluster.endpoints("svc1", [endpoint("10.180.0.1")])
    assert cluster.render() == GOLDEN_CLUSTER_IP


def test_golden_no_endpoints_reject(cluster):
    cluster.service("svc1", "172.30.0.41")
    text = cluster.render()
    assert (
        "-A KUBE-SERVICES -d 172.30.0.41/32 -p tcp -m comment --comment"
        ' "ns1/svc1:p80 has no endpoints" -m tcp --dport 80 -j REJECT\n'
    ) in text
    assert "KUBE-SVC-" not in text and "KUBE-SEP-" not in text


def test_affinity_rules(cluster):
    cluster.service(
        "svc1", "172.30.0.41", session_affinity="ClientIP", session_affinity_timeout=300
    )
    cluster.endpoints("svc1", [endpoint("10.180.0.1"), endpoint("10.180.0.2")])
    text = cluster.render()
    sep1 = "KUBE-SEP-SXIVWICOYRO3J4NJ"
    svc = "KUBE-SVC-XPGD46QRK7WJZT7O"
    lines = [x for x in text.splitlines() if x.startswith(f"-A {svc} ")]
    assert lines[1] == (
        f'-A {svc} -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m recent'
        f" --name {sep1} --rcheck --seconds 300 --reap -j {sep1}"
    )
    assert "--probability" in lines[3] and "--probability" not in lines[4]
    assert (
        f'-A {sep1} -p tcp -m comment --comment "ns1/svc1:p80" -m recent --name {sep1} --set'
        " -m tcp -j DNAT --to-destination 10.180.0.1:80"
    ) in text
    t = cluster.trace(POD, "172.30.0.41")
    assert t.endpoints == {"10.180.0.1:80", "10.180.0.2:80"}


def test_probabilities_ten_decimals(cluster):
    cluster.service("svc1", "172.30.0.41")
    cluster.endpoints("svc1", [endpoint(f"10.180.0.{i}") for i in range(1, 4)])
    probs = re.findall(r"--probability (\S+)", cluster.render())
    assert probs == ["0.3333333333", "0.5000000000"]


# ---- scenario 1: LB with externalIP, NodePort, LB IP and no endpoints --------------------


def test_scenario1_no_endpoints_everything_rejected(any_cluster):
    cluster = any_cluster
    cluster.service(
        "svc1",
        "172.30.0.41",
        type="LoadBalancer",
        ports=[port(80, node_port=3001)],
        external_ips=("192.168.99.11",),
        load_balancer_ips=("1.2.3.4",),
    )
    tracer = cluster.tracer()
    from netplane.proxy._trace import Packet

    for dst, dport in (
        ("172.30.0.41", 80),
        ("192.168.99.11", 80),
        ("1.2.3.4", 80),
        (NODE_IP, 3001),
    ):
        for src in (POD, EXTERNAL):
            assert tracer.trace(Packet(src, dst, dport=dport)).outcomes == {Outcome("REJECT")}
    # from the node itself, to the cluster IP
    assert tracer.trace(Packet(NODE_IP, "172.30.0.41", output=True)).verdicts == {"REJECT"}


# ---- scenario 2: ClusterIP with one endpoint ---------------------------------------------


def test_scenario2_cluster_ip(any_cluster):
    cluster = any_cluster
    cluster.service(
        "svc1",
        "172.30.0.41",
        ports=[
            port(80, name="p80", target=8080),
            port(53, name="dns-tcp", target=5353),
            port(53, name="dns-udp", protocol="UDP", target=5354),
        ],
    )
    cluster.endpoints(
        "svc1",
        [endpoint("10.180.0.1")],
        ports=[("p80", 8080), ("dns-tcp", 5353), ("dns-udp", 5354, "UDP")],
    )
    tracer = cluster.tracer()
    from netplane.proxy._trace import Packet

    t = tracer.trace(Packet(POD, "172.30.0.41", dport=80))
    assert t.outcomes == {Outcome("DNAT", "10.180.0.1:8080", False)}
    # hairpin: the endpoint calling its own service is masqueraded
    t = tracer.trace(Packet("10.180.0.1", "172.30.0.41", dport=80))
    assert t.outcomes == {Outcome("DNAT", "10.180.0.1:8080", True)}
    # same port number, different protocols, different target ports
    assert tracer.trace(Packet(POD, "172.30.0.41", "tcp", 53)).endpoints == {"10.180.0.1:5353"}
    assert tracer.trace(Packet(POD, "172.30.0.41", "udp", 53)).endpoints == {"10.180.0.1:5354"}
    # UDP to a TCP-only port: no match (nftables: rejected, as kube-proxy's cluster-ips-check)
    wrong_port = {"iptables": Outcome("NO_MATCH"), "nftables": Outcome("REJECT")}[cluster.backend]
    assert tracer.trace(Packet(POD, "172.30.0.41", "udp", 80)).outcomes == {wrong_port}
    # from outside the pod network: masqueraded
    t = tracer.trace(Packet(EXTERNAL, "172.30.0.41", dport=80))
    assert t.outcomes == {Outcome("DNAT", "10.180.0.1:8080", True)}
    t = tracer.trace(Packet(NODE_IP, "172.30.0.41", dport=80, output=True))
    assert t.outcomes == {Outcome("DNAT", "10.180.0.1:8080", True)}


# ---- scenario 3: loadBalancerSourceRanges ------------------------------------------------


def test_scenario3_source_ranges(any_cluster):
    cluster = any_cluster
    cluster.service(
        "svc1",
        "172.30.0.41",
        type="LoadBalancer",
        ports=[port(80, node_port=3001)],
        load_balancer_ips=("5.6.7.8",),
        load_balancer_source_ranges=("203.0.113.0/25",),
    )
    cluster.endpoints("svc1", [endpoint("10.180.0.1")])
    tracer = cluster.tracer()
    from netplane.proxy._trace import Packet

    allowed = tracer.trace(Packet(EXTERNAL, "5.6.7.8"))
    assert allowed.outcomes == {Outcome("DNAT", "10.180.0.1:80", True)}
    blocked = tracer.trace(Packet("203.0.113.200", "5.6.7.8"))
    assert blocked.outcomes == {Outcome("DROP")}
    # the same blocked client through the NodePort: source ranges do not apply
    via_nodeport = tracer.trace(Packet("203.0.113.200", NODE_IP, dport=3001))
    assert via_nodeport.outcomes == {Outcome("DNAT", "10.180.0.1:80", True)}
    if cluster.backend == "nftables":
        assert "ip saddr 203.0.113.0/25 return" in cluster.render_nft()
        return
    text = cluster.render()
    h = port_hash("ns1/svc1:p80", "tcp")
    assert (
        f"-A KUBE-PROXY-FIREWALL -d 5.6.7.8/32 -p tcp -m comment --comment"
        f' "ns1/svc1:p80 traffic not accepted by KUBE-FW-{h}" -m tcp --dport 80 -j DROP'
    ) in text


def test_source_ranges_containing_node_allow_lb_ip_as_source(any_cluster):
    cluster = any_cluster
    cluster.service(
        "svc1",
        "172.30.0.41",
        type="LoadBalancer",
        ports=[port(80, node_port=3001)],
        load_balancer_ips=("5.6.7.8",),
        load_balancer_source_ranges=("192.168.0.0/24",),
    )
    cluster.endpoints("svc1", [endpoint("10.180.0.1")])
    # the LB IP itself as a source (a node reaching the VIP routed back to itself)
    from netplane.proxy._trace import Packet

    t = cluster.tracer(node_ips=(NODE_IP,)).trace(Packet("5.6.7.8", "5.6.7.8"))
    assert t.endpoints == {"10.180.0.1:80"}
    if cluster.backend == "nftables":
        return
    text = cluster.render(node_ips=(NODE_IP,))
    h = port_hash("ns1/svc1:p80", "tcp")
    assert (
        f'-A KUBE-FW-{h} -s 5.6.7.8/32 -m comment --comment "ns1/svc1:p80 loadbalancer IP"'
        f" -j KUBE-EXT-{h}"
    ) in text


# ---- scenario 4: NodePort ----------------------------------------------------------------


def test_scenario4_nodeport(any_cluster):
    cluster = any_cluster
    cluster.service("svc1", "172.30.0.41", type="NodePort", ports=[port(80, node_port=3001)])
    cluster.endpoints("svc1", [endpoint("10.180.0.1"), endpoint("10.180.0.2", node="node2")])
    from netplane.proxy._trace import Packet

    tracer = cluster.tracer()
    both = {"10.180.0.1:80", "10.180.0.2:80"}
    t = tracer.trace(Packet(EXTERNAL, NODE_IP, dport=3001))
    assert t.endpoints == both and t.masquerade == {True}
    # a non-local address with the node port: nothing
    assert tracer.trace(Packet(EXTERNAL, "192.168.0.99", dport=3001)).verdicts == {"NO_MATCH"}
    # localhost node ports: off by default, on when enabled (iptables; kube-proxy's
    # nftables mode has none)
    lo = Packet("127.0.0.1", "127.0.0.1", dport=3001, output=True)
    assert tracer.trace(lo).verdicts == {"NO_MATCH"}
    if cluster.backend == "nftables":
        assert cluster.tracer(localhost_nodeports=True).trace(lo).verdicts == {"NO_MATCH"}
        return
    assert cluster.tracer(localhost_nodeports=True).trace(lo).endpoints == both
    # the node port jump is the last rule of KUBE-SERVICES
    nat = parse_restore(cluster.render())["nat"]
    assert nat["KUBE-SERVICES"][-1].target == "KUBE-NODEPORTS"


# ---- scenario 5/6: externalTrafficPolicy --------------------------------------------------


def _two_node_lb(cluster, policy: str) -> None:
    cluster.service(
        "svc1",
        "172.30.0.41",
        type="LoadBalancer",
        ports=[port(80, node_port=3001)],
        external_ips=("192.168.99.11",),
        load_balancer_ips=("1.2.3.4",),
        external_traffic_policy=policy,
        health_check_node_port=30000,
    )
    cluster.endpoints("svc1", [endpoint("10.180.0.1"), endpoint("10.180.0.2", node="node2")])


def test_scenario5_external_policy_local(any_cluster):
    cluster = any_cluster
    _two_node_lb(cluster, "Local")
    from netplane.proxy._trace import Packet

    tracer = cluster.tracer()
    both = {"10.180.0.1:80", "10.180.0.2:80"}
    for dst, dport in (
        ("172.30.0.41", 80),
        ("192.168.99.11", 80),
        ("1.2.3.4", 80),
        (NODE_IP, 3001),
    ):
        t = tracer.trace(Packet(POD, dst, dport=dport))
        assert t.endpoints == both and t.masquerade == {False}, dst
    for dst, dport in (("192.168.99.11", 80), ("1.2.3.4", 80), (NODE_IP, 3001)):
        t = tracer.trace(Packet(EXTERNAL, dst, dport=dport))
        assert t.outcomes == {Outcome("DNAT", "10.180.0.1:80", False)}, dst
    # from the node itself: short-circuited to all endpoints, masqueraded
    t = tracer.trace(Packet(NODE_IP, "1.2.3.4", output=True))
    assert t.endpoints == both and t.masquerade == {True}
    if cluster.backend == "nftables":
        return
    # health check node port accepted in filter KUBE-NODEPORTS
    assert (
        '-A KUBE-NODEPORTS -p tcp -m comment --comment "ns1/svc1:p80 health check node port"'
        " -m tcp --dport 30000 -j ACCEPT"
    ) in cluster.render()


def test_external_policy_local_without_local_endpoints_drops(any_cluster):
    cluster = any_cluster
    cluster.service(
        "svc1",
        "172.30.0.41",
        type="LoadBalancer",
        ports=[port(80, node_port=3001)],
        load_balancer_ips=("1.2.3.4",),
        external_traffic_policy="Local",
    )
    cluster.endpoints("svc1", [endpoint("10.180.0.2", node="node2")])
    from netplane.proxy._trace import Packet

    tracer = cluster.tracer()
    assert tracer.trace(Packet(EXTERNAL, "1.2.3.4")).outcomes == {Outcome("DROP")}
    assert tracer.trace(Packet(EXTERNAL, NODE_IP, dport=3001)).outcomes == {Outcome("DROP")}
    # pods still reach the remote endpoint (short-circuit), cluster IP works
    assert tracer.trace(Packet(POD, "1.2.3.4")).endpoints == {"10.180.0.2:80"}
    assert tracer.trace(Packet(POD, "172.30.0.41")).endpoints == {"10.180.0.2:80"}
    if cluster.backend == "iptables":
        assert '"ns1/svc1:p80 has no local endpoints"' in cluster.render()


def test_scenario6_external_policy_cluster(any_cluster):
    cluster = any_cluster
    _two_node_lb(cluster, "Cluster")
    from netplane.proxy._trace import Packet

    tracer = cluster.tracer()
    for dst, dport in (("192.168.99.11", 80), ("1.2.3.4", 80), (NODE_IP, 3001)):
        t = tracer.trace(Packet(EXTERNAL, dst, dport=dport))
        assert t.endpoints == {"10.180.0.1:80", "10.180.0.2:80"}, dst
        assert t.masquerade == {True}, dst
    if cluster.backend == "iptables":
        assert "health check node port" not in cluster.render()  # only with policy Local


# ---- scenario 7: internalTrafficPolicy Local ---------------------------------------------


def test_scenario7_internal_policy_local(any_cluster):
    cluster = any_cluster
    cluster.service("a", "172.30.0.41", internal_traffic_policy="Local")
    cluster.endpoints("a", [endpoint("10.180.0.1"), endpoint("10.180.0.2", node="node2")])
    cluster.service("b", "172.30.0.42", internal_traffic_policy="Local")
    cluster.endpoints("b", [endpoint("10.180.0.3", node="node2")])
    cluster.service("c", "172.30.0.43", internal_traffic_policy="Local")
    tracer = cluster.tracer()
    from netplane.proxy._trace import Packet

    assert tracer.trace(Packet(POD, "172.30.0.41")).outcomes == {
        Outcome("DNAT", "10.180.0.1:80", False)
    }
    assert tracer.trace(Packet(POD, "172.30.0.42")).outcomes == {Outcome("DROP")}
    assert tracer.trace(Packet(POD, "172.30.0.43")).outcomes == {Outcome("REJECT")}
    if cluster.backend == "nftables":
        text = cluster.render_nft()
        a = port_base("ns1", "a", "tcp", "p80")
        assert f"chain local-{a} " in text and f"chain service-{a} " not in text
        assert '172.30.0.42 . tcp . 80 comment "ns1/b:p80" : drop' in text
        return
    text = cluster.render()
    assert '"ns1/b:p80 has no local endpoints" -m tcp --dport 80 -j DROP' in text
    assert "KUBE-SVC-" + port_hash("ns1/a:p80", "tcp") not in text  # only SVL is used
    assert "KUBE-SVL-" + port_hash("ns1/a:p80", "tcp") in text


# ---- scenario 8: terminating endpoints ---------------------------------------------------


def test_scenario8_terminating_endpoints(any_cluster):
    cluster = any_cluster
    term = {"ready": False, "serving": True, "terminating": True}
    cluster.service("a", "172.30.0.41")
    cluster.endpoints("a", [endpoint("10.180.0.1"), endpoint("10.180.0.2", **term)])
    cluster.service("b", "172.30.0.42")
    cluster.endpoints(
        "b",
        [
            endpoint("10.180.0.3", **term),
            endpoint("10.180.0.4", **term),
            endpoint("10.180.0.5", ready=False, serving=False, terminating=True),
        ],
    )
    cluster.service(
        "c",
        "172.30.0.43",
        type="NodePort",
        ports=[port(80, node_port=3003)],
        external_traffic_policy="Local",
    )
    cluster.endpoints("c", [endpoint("10.180.0.6", **term), endpoint("10.180.0.7", node="node2")])
    cluster.service("d", "172.30.0.44")
    cluster.endpoints("d", [endpoint("10.180.0.8", ready=False)])  # not ready, not terminating
    tracer = cluster.tracer()
    from netplane.proxy._trace import Packet

    assert tracer.trace(Packet(POD, "172.30.0.41")).endpoints == {"10.180.0.1:80"}
    assert tracer.trace(Packet(POD, "172.30.0.42")).endpoints == {"10.180.0.3:80", "10.180.0.4:80"}
    # Local policy: no ready local endpoint -> the serving+terminating local one
    assert tracer.trace(Packet(EXTERNAL, NODE_IP, dport=3003)).endpoints == {"10.180.0.6:80"}
    assert tracer.trace(Packet(POD, "172.30.0.43")).endpoints == {"10.180.0.7:80"}
    assert tracer.trace(Packet(POD, "172.30.0.44")).verdicts == {"REJECT"}


# ---- scenario 9 (renderer side): per-service output is independent -----------------------


def test_adding_a_service_changes_only_its_rules(cluster):
    cluster.service("a", "172.30.0.41")
    cluster.endpoints("a", [endpoint("10.180.0.1")])
    before = cluster.snapshot()
    cluster.service("b", "172.30.0.42")
    cluster.endpoints("b", [endpoint("10.180.0.2")])
    after = cluster.snapshot()
    config = cluster.config()
    assert render_service(before, ("ns1", "a"), config) == render_service(
        after, ("ns1", "a"), config
    )
    assert render_service(before, ("ns1", "b"), config) == EMPTY_RULES
    rb = render_service(after, ("ns1", "b"), config)
    assert set(rb.nat_chains) == {
        "KUBE-SVC-" + port_hash("ns1/b:p80", "tcp"),
        endpoint_chain_name("ns1/b:p80", "tcp", "10.180.0.2:80"),
    }
    assert list(rb.shared) == [("nat", "KUBE-SERVICES")]
    assert rb.key == ("ns1", "b")


def test_format_restore_deleted_chains():
    tables = {"nat": {"KUBE-SERVICES": ("-A KUBE-SERVICES -j RETURN",)}}
    text = format_restore(tables, deleted={"nat": ["KUBE-SVC-GONE", "KUBE-SEP-GONE"]})
    assert text == (
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-GONE - [0:0]\n:KUBE-SEP-GONE - [0:0]\n"
        "-A KUBE-SERVICES -j RETURN\n-X KUBE-SVC-GONE\n-X KUBE-SEP-GONE\nCOMMIT\n"
    )


# ---- other rule families -----------------------------------------------------------------


def test_named_target_port_resolved_through_slice(cluster):
    cluster.service("svc1", "172.30.0.41", ports=[port(80, name="http", target="web")])
    # the slice carries the service port's name with the container port number
    cluster.endpoints("svc1", [endpoint("10.180.0.1")], ports=[("http", 8080)])
    assert cluster.trace(POD, "172.30.0.41").endpoints == {"10.180.0.1:8080"}


def test_slice_without_matching_port_gives_no_endpoints(cluster):
    cluster.service("svc1", "172.30.0.41", ports=[port(80, name="http")])
    cluster.endpoints("svc1", [endpoint("10.180.0.1")], ports=[("other", 8080)])
    assert cluster.trace(POD, "172.30.0.41").verdicts == {"REJECT"}


def test_sctp(cluster):
    cluster.service(
        "svc1",
        "172.30.0.41",
        type="NodePort",
        ports=[port(9999, name="s", protocol="SCTP", node_port=3009)],
    )
    cluster.endpoints("svc1", [endpoint("10.180.0.1")], ports=[("s", 9999, "SCTP")])
    text = cluster.render()
    assert '-p sctp -m comment --comment "ns1/svc1:s cluster IP" -m sctp --dport 9999' in text
    assert port_hash("ns1/svc1:s", "sctp") in text
    assert cluster.trace(POD, "172.30.0.41", 9999, "sctp").endpoints == {"10.180.0.1:9999"}
    assert cluster.trace(EXTERNAL, NODE_IP, 3009, "sctp").endpoints == {"10.180.0.1:9999"}
    assert cluster.trace(POD, "172.30.0.41", 9999, "tcp").verdicts == {"NO_MATCH"}


def test_ipv6_dual_stack(cluster):
    cluster.service(
        "svc1",
        ("172.30.0.41", "fd00:30::41"),
        type="NodePort",
        ports=[port(80, node_port=3001)],
        external_ips=("192.168.99.11", "2001:db8::11"),
    )
    cluster.endpoints("svc1", [endpoint("10.180.0.1")])
    cluster.endpoints(
        "svc1",
        [endpoint("fd00:180::1"), endpoint("fd00:180::2", node="node2")],
        address_type="IPv6",
    )
    v4 = cluster.render()
    v6 = cluster.render(family="ipv6", cluster_cidr="10.0.0.0/8,fd00:180::/64")
    assert "fd00" not in v4 and "2001:db8" not in v4
    assert "172.30" not in v6 and "10.180" not in v6 and "192.168.99" not in v6
    assert "/32" not in v6
    assert "! -s fd00:180::/64 -d fd00:30::41/128" in v6
    assert "! -d ::1/128" in v6
    from netplane.proxy._trace import Packet
    from netplane.proxy._trace_iptables import Tracer

    tracer = Tracer(v6, ["2001:db8::2"])
    t = tracer.trace(Packet("fd00:180::9", "fd00:30::41"))
    assert t.outcomes == {
        Outcome("DNAT", "[fd00:180::1]:80", False),
        Outcome("DNAT", "[fd00:180::2]:80", False),
    }
    t = tracer.trace(Packet("2001:db8::99", "2001:db8::2", dport=3001))
    assert t.endpoints == {"[fd00:180::1]:80", "[fd00:180::2]:80"} and t.masquerade == {True}
    t = tracer.trace(Packet("2001:db8::99", "2001:db8::11"))
    assert len(t.endpoints) == 2
    # hairpin in v6
    t = tracer.trace(Packet("fd00:180::1", "fd00:30::41"))
    assert Outcome("DNAT", "[fd00:180::1]:80", True) in t.outcomes


def test_single_stack_service_has_no_rules_in_other_family(cluster):
    cluster.service("svc1", "172.30.0.41")
    cluster.endpoints("svc1", [endpoint("10.180.0.1")])
    snap = cluster.snapshot()
    assert render_service(snap, ("ns1", "svc1"), cluster.config(family="ipv6")) == EMPTY_RULES


def test_headless_and_external_name_get_no_rules(cluster):
    cluster.objects.append(Service(namespace="ns1", name="h", headless=True, ports=(port(80),)))
    cluster.objects.append(
        Service(namespace="ns1", name="x", type="ExternalName", external_name="example.com")
    )
    cluster.endpoints("h", [endpoint("10.180.0.1")])
    snap = cluster.snapshot()
    for key in (("ns1", "h"), ("ns1", "x"), ("ns1", "missing")):
        assert render_service(snap, key, cluster.config()) == EMPTY_RULES


def test_masquerade_all_and_no_detector(cluster):
    cluster.service("svc1", "172.30.0.41")
    cluster.endpoints("svc1", [endpoint("10.180.0.1")])
    assert cluster.trace(POD, "172.30.0.41", masquerade_all=True).masquerade == {True}
    # without a cluster CIDR there is no local detector: nothing is masqueraded
    text = cluster.render(cluster_cidr=None)
    assert "! -s" not in text
    assert cluster.trace(EXTERNAL, "172.30.0.41", cluster_cidr=None).masquerade == {False}


def test_external_ip_on_cluster_ip_service(cluster):
    cluster.service("svc1", "172.30.0.41", external_ips=("192.168.99.11",))
    cluster.endpoints("svc1", [endpoint("10.180.0.1")])
    t = cluster.trace(EXTERNAL, "192.168.99.11")
    assert t.outcomes == {Outcome("DNAT", "10.180.0.1:80", True)}


def test_masquerade_bit(cluster):
    cluster.service("svc1", "172.30.0.41")
    cluster.endpoints("svc1", [endpoint("10.180.0.1")])
    text = cluster.render(masquerade_bit=15)
    assert "--or-mark 0x8000" in text and "--mark 0x8000/0x8000" in text
    assert cluster.trace(EXTERNAL, "172.30.0.41", masquerade_bit=15).masquerade == {True}


def test_duplicate_endpoints_across_slices_collapse(cluster):
    cluster.service("svc1", "172.30.0.41")
    cluster.endpoints("svc1", [endpoint("10.180.0.1", node="node2")])
    cluster.endpoints("svc1", [endpoint("10.180.0.1")])
    text = cluster.render()
    assert text.count("--to-destination 10.180.0.1:80") == 1


# ---- determinism, assemble, CLI ----------------------------------------------------------


def test_deterministic_output(cluster):
    for i in range(20):
        cluster.service(f"s{i:02d}", f"172.30.1.{i}")
        cluster.endpoints(f"s{i:02d}", [endpoint(f"10.180.1.{j}") for j in range(i % 4)])
    snap = cluster.snapshot()
    config = cluster.config()
    first = render_full(snap, config)
    assert render_full(cluster.snapshot(), config) == first
    rules = [render_service(snap, k, config) for k in snap.services]
    assert format_restore(assemble(config, reversed(rules))) == first


def test_assemble_top_level_chains():
    tables = assemble(ProxyConfig(node_name="n"), [])
    assert list(tables) == ["filter", "nat"]
    assert set(tables["nat"]) == {
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
        "KUBE-PROXY-CANARY",
    }
    assert set(tables["filter"]) == {
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL",
        "KUBE-PROXY-CANARY",
    }
    assert tables["nat"]["KUBE-PROXY-CANARY"] == ()
    # a keyless ServiceRules (built by hand) is still accepted
    extra = ServiceRules(
        {"KUBE-SVC-X": ("-A KUBE-SVC-X -j KUBE-MARK-MASQ",)},
        {("nat", "KUBE-SERVICES"): ("-A KUBE-SERVICES -j KUBE-SVC-X",)},
    )
    tables = assemble(ProxyConfig(node_name="n"), [extra])
    assert tables["nat"]["KUBE-SERVICES"][0] == "-A KUBE-SERVICES -j KUBE-SVC-X"
    assert tables["nat"]["KUBE-SVC-X"] == ("-A KUBE-SVC-X -j KUBE-MARK-MASQ",)


MANIFEST = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIP: 172.30.0.10
  ports: [{name: http, port: 80, targetPort: web, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.1.0.5], nodeName: n1}
- {addresses: [10.1.1.5], nodeName: n2, conditions: {ready: false}}
"""


def test_cli_render(tmp_path):
    from netplane.cli import cli

    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST)
    result = CliRunner().invoke(
        cli,
        [
            "proxy",
            "render",
            "--manifests",
            str(path),
            "--node",
            "n1",
            "--cluster-cidr",
            "10.0.0.0/8",
        ],
    )
    assert result.exit_code == 0, result.output
    text = result.stdout
    tables = parse_restore(text)  # well-formed and only what the tracer understands
    assert set(tables) == {"filter", "nat"}
    assert text.startswith("*filter\n") and text.endswith("COMMIT\n")
    from netplane.proxy._trace import Packet
    from netplane.proxy._trace_iptables import Tracer

    tracer = Tracer(text, ["192.168.0.2"])
    assert tracer.trace(Packet("10.1.2.3", "172.30.0.10")).endpoints == {"10.1.0.5:8080"}
    assert tracer.trace(Packet(EXTERNAL, "192.168.0.2", dport=30080)).endpoints == {"10.1.0.5:8080"}


# ---- the identity memo never serves stale rules ------------------------------------------


def test_memo_reuses_only_identical_inputs(cluster):
    from netplane.state import ClusterState

    from .conftest import NODE

    cluster.service("svc1", "172.30.0.41")
    sl = cluster.endpoints("svc1", [endpoint("10.180.0.1")], slice_name="s1")
    state = ClusterState()
    state.apply(cluster.objects)
    config = cluster.config()
    first = render_service(state.snapshot(), ("ns1", "svc1"), config)
    assert render_service(state.snapshot(), ("ns1", "svc1"), config) is first  # unchanged
    # the endpoint changes: new slice object -> new rules
    state.apply(
        [
            sl.__class__(
                **{
                    **{f: getattr(sl, f) for f in sl.__slots__},
                    "endpoints": (endpoint("10.180.0.9"),),
                }
            )
        ]
    )
    second = render_service(state.snapshot(), ("ns1", "svc1"), config)
    assert second is not first
    assert any("10.180.0.9:80" in x for lines in second.nat_chains.values() for x in lines)
    # another config (node, family, masquerade...) is another entry
    other = render_service(
        state.snapshot(), ("ns1", "svc1"), ProxyConfig(node_name=NODE, masquerade_all=True)
    )
    assert other != second
    # an equal but rebuilt snapshot (new objects) recomputes, with the same result
    assert render_service(cluster.snapshot(), ("ns1", "svc1"), config) == first


def test_node_ips_come_from_the_node_object(cluster):
    from netplane.model import Node

    cluster.service(
        "svc1",
        "172.30.0.41",
        type="LoadBalancer",
        ports=[port(80, node_port=3001)],
        load_balancer_ips=("5.6.7.8",),
        load_balancer_source_ranges=("192.168.0.0/24",),
    )
    cluster.endpoints("svc1", [endpoint("10.180.0.1")])
    h = port_hash("ns1/svc1:p80", "tcp")
    rule = f"-A KUBE-FW-{h} -s 5.6.7.8/32"
    assert rule not in cluster.render()  # node IP unknown
    cluster.objects.append(Node(name="node1", addresses=(("InternalIP", NODE_IP),)))
    assert rule in cluster.render()
