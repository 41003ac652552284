"""Every record kind of the spec, asked over the wire of a real server process."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

Z = "cluster.local."
pytestmark = pytest.mark.slow  # a real server process and real traffic


def test_clusterip_a_and_nodata_aaaa(lab_server, k8s):
    r = lab_server.query(f"blue.default.svc.{Z}")
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert k8s.rrs(r) == ["10.108.244.161"]
    assert r.answer[0].ttl == 5
    r = lab_server.query(f"blue.default.svc.{Z}", "AAAA")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    assert k8s.rrs(r, "authority", "SOA")[0].startswith("ns.dns.cluster.local. hostmaster")


def test_dual_stack(lab_server, k8s):
    assert k8s.rrs(lab_server.query(f"dual.default.svc.{Z}")) == ["10.96.5.5"]
    assert k8s.rrs(lab_server.query(f"dual.default.svc.{Z}", "AAAA")) == ["fd00::5:5"]


def test_headless_endpoints_hostnames_and_dashed_names(lab_server, k8s):
    assert k8s.rrs(lab_server.query(f"hdls.default.svc.{Z}")) == ["172.0.0.2", "172.0.0.3"]
    assert k8s.rrs(lab_server.query(f"hdls.default.svc.{Z}", "AAAA")) == ["5678:abcd::1"]
    assert k8s.rrs(lab_server.query(f"web-1.hdls.default.svc.{Z}")) == ["172.0.0.3"]
    assert k8s.rrs(lab_server.query(f"172-0-0-2.hdls.default.svc.{Z}")) == ["172.0.0.2"]
    r = lab_server.query(f"5678-abcd--1.hdls.default.svc.{Z}", "AAAA")
    assert k8s.rrs(r) == ["5678:abcd::1"]
    r = lab_server.query(f"bogusendpoint.hdls.default.svc.{Z}")
    assert r.rcode() == dns.rcode.NXDOMAIN


def test_srv_with_additional_section(lab_server, k8s):
    r = lab_server.query(f"_http._tcp.blue.default.svc.{Z}", "SRV")
    assert k8s.rrs(r) == ["0 100 80 blue.default.svc.cluster.local."]
    assert k8s.rrs(r, "additional", "A") == ["10.108.244.161"]
    r = lab_server.query(f"_http._tcp.hdls.default.svc.{Z}", "SRV")
    assert k8s.rrs(r) == [
        "0 33 80 172-0-0-2.hdls.default.svc.cluster.local.",
        "0 33 80 5678-abcd--1.hdls.default.svc.cluster.local.",
        "0 33 80 web-1.hdls.default.svc.cluster.local.",
    ]
    assert k8s.rrs(r, "additional", "A") == ["172.0.0.2", "172.0.0.3"]
    assert k8s.rrs(r, "additional", "AAAA") == ["5678:abcd::1"]
    r = lab_server.query(f"_dns._udp.kube-dns.kube-system.svc.{Z}", "SRV")
    assert k8s.rrs(r) == ["0 100 53 kube-dns.kube-system.svc.cluster.local."]


def test_ptr_v4_and_v6(lab_server, k8s):
    r = lab_server.query("161.244.108.10.in-addr.arpa.", "PTR")
    assert k8s.rrs(r) == ["blue.default.svc.cluster.local."]
    r = lab_server.query("3.0.0.172.in-addr.arpa.", "PTR")
    assert k8s.rrs(r) == ["web-1.hdls.default.svc.cluster.local."]
    v6 = "1.0.0.0." + "0.0.0.0." * 5 + "d.c.b.a.8.7.6.5.ip6.arpa."
    assert k8s.rrs(lab_server.query(v6, "PTR")) == ["5678-abcd--1.hdls.default.svc.cluster.local."]
    v6 = "5.0.0.0.5.0.0.0." + "0.0.0.0." * 5 + "0.0.d.f.ip6.arpa."
    assert k8s.rrs(lab_server.query(v6, "PTR")) == ["dual.default.svc.cluster.local."]


def test_external_name(lab_server, k8s):
    r = lab_server.query(f"numbers-api.default.svc.{Z}")
    assert k8s.rrs(r) == ["numbersapi.com."]
    r = lab_server.query(f"alias.default.svc.{Z}")
    assert k8s.rrs(r, rdtype="CNAME") == ["blue.default.svc.cluster.local."]
    assert k8s.rrs(r, rdtype="A") == ["10.108.244.161"]
    assert r.answer[0].rdtype == dns.rdatatype.CNAME  # the CNAME comes first
    r = lab_server.query(f"endpoint.numbers-api.default.svc.{Z}")
    assert r.rcode() == dns.rcode.NXDOMAIN


def test_pods_insecure(lab_server, k8s):
    assert k8s.rrs(lab_server.query(f"1-2-3-4.default.pod.{Z}")) == ["1.2.3.4"]
    r = lab_server.query(f"fd00--1.default.pod.{Z}", "AAAA")
    assert k8s.rrs(r) == ["fd00::1"]
    assert lab_server.query(f"not-an-ip.default.pod.{Z}").rcode() == dns.rcode.NXDOMAIN


def test_version_apex_soa_ns(lab_server, k8s):
    assert k8s.rrs(lab_server.query(f"dns-version.{Z}", "TXT")) == ['"1.1.0"']
    soa = k8s.rrs(lab_server.query(Z, "SOA"))
    assert soa[0].startswith("ns.dns.cluster.local. hostmaster.cluster.local. ")
    assert soa[0].endswith(" 7200 1800 86400 5")
    r = lab_server.query(Z, "NS")
    assert k8s.rrs(r) == ["ns.dns.cluster.local."]
    assert k8s.rrs(r, "additional", "A") == ["10.96.0.10"]


@pytest.mark.parametrize(
    ("name", "rcode"),
    [
        (f"svc.{Z}", dns.rcode.NOERROR),
        (f"default.svc.{Z}", dns.rcode.NOERROR),
        (f"pod.{Z}", dns.rcode.NOERROR),
        (f"svc0.default.svc.{Z}", dns.rcode.NXDOMAIN),
        (f"nosuchns.svc.{Z}", dns.rcode.NXDOMAIN),
        (f"blue.default.svc.{Z}".replace("blue", "blue.extra"), dns.rcode.NXDOMAIN),
    ],
)
def test_nxdomain_versus_nodata(lab_server, name, rcode):
    r = lab_server.query(name)
    assert r.rcode() == rcode and not r.answer
    assert [rr.rdtype for rr in r.authority] == [dns.rdatatype.SOA]


def test_case_insensitive_and_question_case_preserved(lab_server, k8s):
    r = lab_server.query("BlUe.DeFaUlT.sVc.ClUsTeR.lOcAl.")
    assert k8s.rrs(r) == ["10.108.244.161"]
    assert r.question[0].name.to_text() == "BlUe.DeFaUlT.sVc.ClUsTeR.lOcAl."
    assert r.answer[0].name.to_text() == "BlUe.DeFaUlT.sVc.ClUsTeR.lOcAl."


def test_edns0_and_plain_queries(lab_server):
    r = lab_server.query(f"blue.default.svc.{Z}", use_edns=0, payload=4096)
    assert r.edns == 0 and r.payload >= 512
    r = lab_server.query(f"blue.default.svc.{Z}", use_edns=False)
    assert r.edns == -1


def test_truncation_then_tcp_with_200_endpoints(lab_server, k8s):
    r = lab_server.query(f"big.default.svc.{Z}", use_edns=False)
    assert r.flags & dns.flags.TC
    r = lab_server.query(f"big.default.svc.{Z}", tcp=True)
    assert not r.flags & dns.flags.TC and len(k8s.rrs(r)) == 200
    r = lab_server.query(f"big.default.svc.{Z}", use_edns=0, payload=65000)
    assert len(k8s.rrs(r)) == 200  # fits in a large EDNS buffer


def test_name_compression(lab_server):
    q = dns.message.make_query(f"big.default.svc.{Z}", "A")
    wire = dns.query.tcp(q, lab_server.host, port=lab_server.port, timeout=3).to_wire()
    uncompressed = 200 * (len(f"big.default.svc.{Z}") + 1 + 14)
    assert len(wire) < uncompressed / 2


def test_outside_zone_refused_without_upstream(lab_server):
    r = lab_server.query("example.com.")
    assert r.rcode() == dns.rcode.REFUSED and not r.answer
    r = lab_server.query("1.0.0.127.in-addr.arpa.", "PTR")
    assert r.rcode() == dns.rcode.REFUSED


def test_dig_client(lab_server):
    import subprocess

    out = subprocess.run(
        ["dig", "+short", "+tries=1", "+time=3", "-p", str(lab_server.port), f"@{lab_server.host}",
         "blue.default.svc.cluster.local"],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout  # fmt: skip
    assert out.split() == ["10.108.244.161"]


def _dig(srv, *args: str) -> str:
    import subprocess

    return subprocess.run(
        ["dig", "+tries=1", "+time=3", "-p", str(srv.port), f"@{srv.host}", *args],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout  # fmt: skip


def test_ptr_for_endpoints_of_clusterip_services(lab_server, k8s):
    assert _dig(lab_server, "+short", "-x", "10.244.1.5").split() == [
        "10-244-1-5.blue.default.svc.cluster.local."
    ]
    assert _dig(lab_server, "+short", "-x", "10.244.1.6").split() == [
        "named.blue.default.svc.cluster.local."
    ]
    assert k8s.rrs(lab_server.query(f"named.blue.default.svc.{Z}")) == ["10.244.1.6"]
    assert k8s.rrs(lab_server.query(f"blue.default.svc.{Z}")) == ["10.108.244.161"]


def test_service_cidr_reverse_zone_is_authoritative(lab_server, k8s):
    out = _dig(lab_server, "-x", "10.96.99.99")
    assert "status: NXDOMAIN" in out and "flags: qr aa rd" in out
    r = lab_server.query("99.99.96.10.in-addr.arpa.", "PTR")
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert k8s.rrs(r, "authority", "SOA")[0].startswith("ns.dns.10.in-addr.arpa. hostmaster.")
    assert lab_server.query("1.2.0.192.in-addr.arpa.", "PTR").rcode() == dns.rcode.REFUSED


def test_namespace_without_services_is_nodata(lab_server, k8s):
    r = lab_server.query(f"empty.svc.{Z}")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    assert k8s.rrs(r, "authority", "SOA")
    assert lab_server.query(f"nosuchns.svc.{Z}").rcode() == dns.rcode.NXDOMAIN


def test_zone_transfers_are_refused(lab_server):
    q = dns.message.make_query(Z, "AXFR")
    r = dns.query.tcp(q, lab_server.host, port=lab_server.port, timeout=3)
    assert r.rcode() == dns.rcode.REFUSED
    assert "Transfer failed" in _dig(lab_server, "AXFR", Z)


def test_truncation_keeps_the_answer_and_drops_additional_first(lab_server, k8s):
    name = f"_http._tcp.srvh.default.svc.{Z}"
    full = lab_server.query(name, "SRV", tcp=True)
    assert len(full.to_wire()) > 512 and len(k8s.rrs(full, "additional")) == 6
    out = _dig(lab_server, "+noedns", "+ignore", "+notcp", name, "SRV")
    assert "flags: qr aa rd;" in out and "ANSWER: 6, AUTHORITY: 0, ADDITIONAL: 0" in out
    r = lab_server.query(name, "SRV", use_edns=False)
    assert not r.flags & dns.flags.TC and len(k8s.rrs(r)) == 6


def test_external_name_without_upstream_is_the_cname_alone(lab_server, k8s):
    r = lab_server.query(f"external.testns.svc.{Z}")
    assert r.rcode() == dns.rcode.NOERROR and k8s.rrs(r) == ["ext.interwebs.test."]
