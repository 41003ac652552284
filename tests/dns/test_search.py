"""kubelet's resolv.conf rules and glibc's search order: pure functions, plus the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from netplane.dns.search import search_names
from netplane.model import Pod, PodDNSConfig
from netplane.resolvconf import ResolvConf, for_pod, parse_resolv_conf, pod_resolv_conf

HOST = parse_resolv_conf(
    "# node\nnameserver 192.168.0.1\nnameserver 192.168.0.2\nsearch lan example.org\n"
    "options timeout:2 rotate\n"
)
LAB = "search default.svc.cluster.local svc.cluster.local cluster.local\n"


def test_parse_host_resolv_conf():
    assert HOST.nameservers == ("192.168.0.1", "192.168.0.2")
    assert HOST.searches == ("lan", "example.org")
    assert HOST.options == (("timeout", "2"), ("rotate", None))


def test_cluster_first_is_the_labs():
    conf = pod_resolv_conf("default", ResolvConf(), ("10.96.0.10",))
    assert conf.render() == LAB + "nameserver 10.96.0.10\noptions ndots:5\n"
    assert conf.ndots == 5


def test_cluster_first_appends_host_search_domains():
    conf = pod_resolv_conf("other", HOST, ("10.96.0.10",))
    assert conf.searches == (
        "other.svc.cluster.local", "svc.cluster.local", "cluster.local", "lan", "example.org"
    )  # fmt: skip
    assert conf.nameservers == ("10.96.0.10",)


def test_default_none_and_host_network():
    assert pod_resolv_conf("default", HOST, ("10.96.0.10",), "Default") == HOST
    assert pod_resolv_conf("default", HOST, ("10.96.0.10",), host_network=True) == HOST
    conf = pod_resolv_conf("default", HOST, ("10.96.0.10",), "ClusterFirstWithHostNet",
                           host_network=True)  # fmt: skip
    assert conf.nameservers == ("10.96.0.10",)
    assert pod_resolv_conf("default", HOST, ("10.96.0.10",), "None") == ResolvConf()
    with pytest.raises(ValueError, match="dnsPolicy"):
        pod_resolv_conf("default", HOST, (), "Sometimes")


def test_dns_config_merge():
    extra = PodDNSConfig(
        nameservers=("1.2.3.4",),
        searches=("my.dns.search.suffix", "svc.cluster.local"),
        options=(("ndots", "2"), ("edns0", None)),
    )
    conf = pod_resolv_conf("ns1", ResolvConf(), ("10.96.0.10",), dns_config=extra)
    assert conf.nameservers == ("10.96.0.10", "1.2.3.4")
    assert conf.searches[-1] == "my.dns.search.suffix" and len(conf.searches) == 4
    assert conf.options == (("ndots", "2"), ("edns0", None))
    only = pod_resolv_conf("ns1", HOST, ("10.96.0.10",), "None", extra)
    assert only.render() == (
        "search my.dns.search.suffix svc.cluster.local\nnameserver 1.2.3.4\noptions ndots:2 edns0\n"
    )


def test_for_a_pod_object():
    pod = Pod("web", "p", host_network=True, dns_policy="ClusterFirstWithHostNet",
              dns_config=PodDNSConfig(searches=("extra.example",)))  # fmt: skip
    conf = for_pod(pod, HOST, ("10.96.0.10",), "cluster.local")
    assert conf.nameservers == ("10.96.0.10",)
    assert conf.searches[0] == "web.svc.cluster.local" and conf.searches[-1] == "extra.example"


def test_kubelet_limits():
    many = PodDNSConfig(
        nameservers=tuple(f"10.0.0.{i}" for i in range(1, 6)),
        searches=tuple(f"d{i}.example" for i in range(40)),
    )
    conf = pod_resolv_conf("default", ResolvConf(), (), "None", many)
    assert len(conf.nameservers) == 3 and len(conf.searches) == 32
    long = PodDNSConfig(searches=tuple(f"{'x' * 60}{i}.example" for i in range(32)))
    conf = pod_resolv_conf("default", ResolvConf(), (), "None", long)
    assert len(" ".join(conf.searches)) <= 2048 and len(conf.searches) < 32


def test_glibc_search_order():
    s = ("default.svc.cluster.local", "svc.cluster.local", "cluster.local")
    assert search_names("blue", s, 5) == [
        "blue.default.svc.cluster.local.",
        "blue.svc.cluster.local.",
        "blue.cluster.local.",
        "blue.",
    ]
    assert search_names("thesvc.other", s, 5)[1] == "thesvc.other.svc.cluster.local."
    assert search_names("blue.", s, 5) == ["blue."]
    assert search_names("a.b.c.d.e.f", s, 5)[0] == "a.b.c.d.e.f."  # >= ndots dots: as-is first


def test_resolv_conf_command(tmp_path):
    host = tmp_path / "resolv.conf"
    host.write_text("nameserver 192.168.0.1\nsearch lan\n")
    netplane = str(Path(sys.executable).with_name("netplane"))
    out = subprocess.run(
        [netplane, "dns", "resolv-conf", "--namespace", "other", "--host-resolv", str(host)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert (
        out.splitlines()[0] == "search other.svc.cluster.local svc.cluster.local cluster.local lan"
    )
    out = subprocess.run(
        [netplane, "dns", "resolv-conf", "--namespace", "x", "--policy", "Default",
         "--host-resolv", str(host)], capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out == "search lan\nnameserver 192.168.0.1\n"
    bad = subprocess.run(
        [netplane, "dns", "resolv-conf", "--namespace", "x", "--host-resolv", "/nonexistent"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and "/nonexistent" in bad.stderr
