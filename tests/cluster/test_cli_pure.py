"""Output formats and built-in applications, without a cluster."""

from __future__ import annotations

import datetime

from click.testing import CliRunner

from netplane.cluster.client import tables
from netplane.cluster.client.get import get
from netplane.cluster.node.responders import PLATFORM, _reply, image_base, listeners


def test_age_like_kubectl():
    now = datetime.datetime(2026, 1, 1, 1, 0, 0, tzinfo=datetime.UTC)
    assert tables.age("2026-01-01T00:59:55Z", now) == "5s"
    assert tables.age("2026-01-01T00:55:30Z", now) == "4m30s"
    assert tables.age("2026-01-01T00:00:00Z", now) == "60m"
    assert tables.age("2025-12-30T01:00:00Z", now) == "2d"


def test_table_columns_are_padded_like_tabwriter():
    text = tables.render([["NAME", "TYPE"], ["blue", "ClusterIP"], ["kubernetes", "ClusterIP"]])
    assert text.splitlines() == [
        "NAME         TYPE",
        "blue         ClusterIP",
        "kubernetes   ClusterIP",
    ]


def test_service_table_shows_node_ports_and_lb_addresses():
    svc = {
        "metadata": {"name": "lb", "namespace": "default", "creationTimestamp": ""},
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": "10.96.5.5",
            "ports": [{"port": 8080, "nodePort": 31000, "protocol": "TCP"}],
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "192.168.0.240"}]}},
    }
    rows = tables.services_table([svc], wide=False, all_ns=False)
    assert rows[1][:5] == ["lb", "LoadBalancer", "10.96.5.5", "192.168.0.240", "8080:31000/TCP"]


def test_color_app_answers_like_the_course():
    body = _reply("color", "default/blue-5c986bd7bf-2gf7d", "GET", "/", ("10.244.0.0", 54312))
    assert body.decode() == (
        f"This is pod default/blue-5c986bd7bf-2gf7d on {PLATFORM}, serving / for "
        "10.244.0.0:54312.\n"
    )


def test_images_choose_the_application():
    assert image_base("docker.io/library/nginx:1.27") == "nginx"
    assert image_base("jpetazzo/color:latest") == "jpetazzo/color"
    assert [(x.port, x.app) for x in listeners([{"image": "jpetazzo/color"}])] == [(80, "color")]
    assert listeners([{"image": "alpine", "ports": [{"containerPort": 80}]}]) == []
    assert listeners([{"image": "registry.k8s.io/coredns/coredns:v1.12.0"}]) == []
    echo = listeners([{"image": "foo/bar", "ports": [{"containerPort": 53, "protocol": "UDP"}]}])
    assert [(x.port, x.protocol, x.app) for x in echo] == [(53, "UDP", "echo")]


def test_commands_without_a_cluster_say_how_to_start_one(tmp_path):
    result = CliRunner().invoke(get, ["pods", "--state-dir", str(tmp_path / "none")])
    assert result.exit_code == 1
    assert "netplane up" in result.output


def test_pod_resolv_conf_follows_dns_policy():
    from netplane.cluster.node.kubelet import resolv_conf

    def pod(**spec):
        return {"kind": "Pod", "metadata": {"name": "p", "namespace": "other"},
                "spec": {"containers": [], **spec}}  # fmt: skip

    assert resolv_conf(pod()) == (
        "search other.svc.cluster.local svc.cluster.local cluster.local\n"
        "nameserver 10.96.0.10\noptions ndots:5\n"
    )
    assert resolv_conf(pod(dnsPolicy="Default")) is None
    custom = pod(dnsPolicy="None", dnsConfig={"nameservers": ["192.168.0.1"]})
    assert resolv_conf(custom) == "nameserver 192.168.0.1\n"


def test_tabwriter_aligns_blocks_as_gos():
    from netplane.cluster.client.tabwriter import tabwrite

    text = "Name:\tweb\nLabels:\tapp=web\n\ttier=front\nIPs:\n  IP:\t10.0.0.1\nEvents:\t<none>"
    assert tabwrite(text, 0, 2) == (
        "Name:    web\nLabels:  app=web\n         tier=front\nIPs:\n  IP:    10.0.0.1\n"
        "Events:  <none>"  # consecutive lines with a tab share the column, whatever the indent
    )
    # get's tables: every column at least 6 wide; an empty last cell keeps the padding
    assert tabwrite("A\tB\tC\nx\t\t", 6, 3) == "A     B     C\nx           "
    # a line with fewer cells ends a column's block
    assert tabwrite("a\tb\tc\nlong-one\td\nz\tyy\tq", 0, 1) == (
        "a        b c\nlong-one d\nz        yy q"
    )


def test_strategic_merge_patch_merges_lists_by_their_keys():
    from netplane.cluster.control.patch import apply_patch

    env = [{"name": "A", "value": "1"}]
    pod = {"spec": {"containers": [{"name": "a", "image": "x", "env": env},
                                   {"name": "b", "image": "y"}],
                    "hostAliases": [{"ip": "10.0.0.1", "hostnames": ["one"]}],
                    "tolerations": [{"key": "k", "operator": "Exists"}]}}  # fmt: skip
    patch = {"spec": {"containers": [{"name": "a", "env": [{"name": "B", "value": "2"}]},
                                     {"name": "b", "$patch": "delete"}],
                      "hostAliases": [{"ip": "10.0.0.2", "hostnames": ["two"]}],
                      "tolerations": [{"key": "other", "operator": "Exists"}],
                      "$setElementOrder/containers": [{"name": "a"}]}}  # fmt: skip
    out = apply_patch(pod, patch)["spec"]
    assert out["containers"] == [
        {
            "name": "a",
            "image": "x",
            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
        }
    ]
    assert [h["ip"] for h in out["hostAliases"]] == ["10.0.0.1", "10.0.0.2"]
    assert out["tolerations"] == [{"key": "other", "operator": "Exists"}]  # no merge key
    assert "$setElementOrder/containers" not in out
    replaced = apply_patch({"metadata": {"labels": {"a": "1", "b": "2"}}},
                           {"metadata": {"labels": {"$patch": "replace", "c": "3"}}})  # fmt: skip
    assert replaced["metadata"]["labels"] == {"c": "3"}
    assert apply_patch({"spec": {"replicas": 1}}, {"spec": {"replicas": None}}) == {"spec": {}}
