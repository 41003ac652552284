"""The nftables renderer, text and reader, pure (no root, no kernel). The Service semantics
(by tracing) are checked for both backends in test_render.py (`any_cluster`)."""

from __future__ import annotations

from click.testing import CliRunner

from netplane.proxy._trace import Packet
from netplane.proxy.nft._model import Unparsed
from netplane.proxy.nft._names import endpoint_base, port_base
from netplane.proxy.nft._parse import looks_like_nft, parse_rule, parse_ruleset
from netplane.proxy.nft._tables import SHARD_SERVICES, shard_count, shard_of, table_name
from netplane.proxy.nft._text import duration, format_tables
from netplane.proxy.nft._trace import NftTracer
from netplane.proxy.nft.render import render_full, render_service

from .conftest import EXTERNAL, NODE_IP, POD, Cluster, endpoint, port


def test_names_are_kube_proxys() -> None:
    assert port_base("ns1", "svc1", "tcp", "p80") == "ULMVA6XW-ns1/svc1/tcp/p80"
    assert endpoint_base("ns1", "svc1", "tcp", "p80", "10.180.0.1", 80) == (
        "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    )
    assert "__fd00.1..5/80" in endpoint_base("ns1", "svc1", "tcp", "", "fd00:1::5", 80)


def _lb_cluster(shards: int | None = None) -> Cluster:
    c = Cluster("nftables", shards)
    c.service(
        "svc1",
        "172.30.0.41",
        type="LoadBalancer",
        ports=[port(80, node_port=3001)],
        external_ips=("192.168.99.11",),
        load_balancer_ips=("1.2.3.4",),
        load_balancer_source_ranges=("203.0.113.0/25",),
        external_traffic_policy="Local",
        session_affinity="ClientIP",
    )
    c.endpoints("svc1", [endpoint("10.180.0.1"), endpoint("10.180.0.2", node="node2")])
    c.service("svc2", "172.30.0.42", ports=[port(53, "dns", "UDP")])
    c.service("svc3", "172.30.0.43", ports=[port(9, "", "SCTP")], internal_traffic_policy="Local")
    c.endpoints("svc3", [endpoint("10.180.0.3")], (("", 9, "SCTP"),))
    return c


def test_text_reads_back_as_the_same_objects() -> None:
    for shards in (None, 4):
        c = _lb_cluster(shards)
        tables = render_full(c.snapshot(), c.config(), shards)
        text = format_tables(tables)
        assert looks_like_nft(text)
        parsed = parse_ruleset(text)
        assert [t.table for t in parsed.tables] == [t.table for t in tables]
        for got, want in zip(parsed.tables, tables, strict=True):
            assert got.chains == want.chains and got.sets == want.sets
            assert {k: v for k, v in got.elements.items() if v} == {
                k: v for k, v in want.elements.items() if v
            }


def test_reader_keeps_others_rules_as_not_understood() -> None:
    rule = parse_rule('iifname "eth0" counter packets 3 bytes 180 accept')
    assert rule.stmts == (Unparsed('iifname "eth0" counter packets 3 bytes 180 accept'),)
    c = _lb_cluster()
    [table] = render_full(c.snapshot(), c.config())
    text = format_tables([table]).replace(
        "\t\tjump services\n", '\t\tiifname "lo" counter accept\n\t\tjump services\n', 1
    )
    parsed = parse_ruleset("table ip other {\n}\n" + text)
    assert parsed.others == ["ip other"]
    result = NftTracer(parsed.tables, [NODE_IP]).trace(Packet(POD, "172.30.0.41"))
    assert result.endpoints == {"10.180.0.1:80", "10.180.0.2:80"}
    assert all('iifname "lo" counter accept' in p.warnings for p in result.paths)


def test_spread_over_tables_traces_the_same() -> None:
    one, four = _lb_cluster(), _lb_cluster(4)
    for packet in (
        Packet(POD, "172.30.0.41"),
        Packet(EXTERNAL, "1.2.3.4"),
        Packet("203.0.113.200", "1.2.3.4"),
        Packet(EXTERNAL, NODE_IP, dport=3001),
        Packet(POD, "172.30.0.42", "udp", 53),
        Packet(POD, "172.30.0.43", "sctp", 9),
        Packet(NODE_IP, "172.30.0.41", output=True),
    ):
        assert one.tracer().trace(packet).outcomes == four.tracer().trace(packet).outcomes


def test_shards_by_service_count() -> None:
    assert shard_count(0) == shard_count(SHARD_SERVICES) == 1
    assert shard_count(SHARD_SERVICES + 1) == 2 and shard_count(10_000) == 16
    assert shard_count(10_000, current=8) == 16  # grows at once
    assert shard_count(5_000, current=16) == 16  # shrinks only when four times too many
    assert shard_count(3_000, current=16) == 4
    assert shard_of(("ns", "a"), 1) == 0 and 0 <= shard_of(("ns", "a"), 16) < 16
    assert table_name(0) == "kube-proxy" and table_name(3) == "kube-proxy-3"


def test_duplicate_addresses_first_service_wins() -> None:
    c = Cluster("nftables")
    c.service("b", "172.30.0.50")
    c.endpoints("b", [endpoint("10.180.0.2")])
    c.service("a", "172.30.0.50")
    c.endpoints("a", [endpoint("10.180.0.1")])
    assert c.tracer().trace(Packet(POD, "172.30.0.50")).endpoints == {"10.180.0.1:80"}


def test_memo_reuses_an_unchanged_service() -> None:
    c = Cluster("nftables")
    c.service("a", "172.30.0.50")
    c.endpoints("a", [endpoint("10.180.0.1"), endpoint("10.180.0.2")])
    snap, config = c.snapshot(), c.config()
    first = render_service(snap, ("ns1", "a"), config)
    assert render_service(snap, ("ns1", "a"), config) is first


def test_render_cli(tmp_path) -> None:
    from netplane.proxy.cli import proxy

    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n"
        "spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}\n"
    )
    argv = ["render", "--manifests", str(manifest), "--node", "n1", "--backend", "nftables"]
    out = CliRunner().invoke(proxy, argv)
    assert out.exit_code == 0, out.output
    assert out.output.startswith("table ip kube-proxy {")
    assert '10.96.0.10 . tcp . 80 comment "default/web:http" : goto reject-chain' in out.output


def test_durations_as_nft_prints_them() -> None:
    assert [duration(s) for s in (10800, 90, 86400 + 7200 + 5, 0)] == [
        "3h",
        "1m30s",
        "1d2h5s",
        "0s",
    ]
