"""The emulated control plane without the system: admission, controllers, slices, env."""

from __future__ import annotations

import ipaddress
import json
import random
import re

import pytest

from netplane.cluster.control import defaults
from netplane.cluster.control.admission import admit, object_key
from netplane.cluster.control.builtin import builtin_objects
from netplane.cluster.control.controller import reconcile
from netplane.cluster.control.envvars import service_env
from netplane.cluster.control.events import MAX_EVENTS
from netplane.cluster.control.naming import ALPHABET, template_hash
from netplane.cluster.control.topology import build_topology, node_names
from netplane.cluster.control.workloads import deployment_manifest, service_manifest
from netplane.model import InvalidField, parse_object

NOW = "2026-01-01T00:00:00Z"
TOPO = build_topology("t", "/tmp/x", node_names(None))


class Cluster:
    """The store plus the controller, with pods made Running/Ready like kubelet would."""

    def __init__(self) -> None:
        self.objects: dict = {}
        self.rng = random.Random(7)
        self.next_ip = {n.name: 2 for n in TOPO.nodes}

    def apply(self, body: dict) -> dict:
        obj = admit(body, self.objects, TOPO, self.rng, NOW)
        self.objects[object_key(obj)] = obj
        return obj

    def settle(self, start_pods: bool = True) -> None:
        for _ in range(5):
            plan = reconcile(self.objects, TOPO, self.rng, NOW)
            for body in plan.upserts:
                self.objects[object_key(body)] = body
            for key in plan.deletes:
                self.objects.pop(key, None)
            if start_pods:
                self._kubelet()
            if not plan:
                return

    def _kubelet(self) -> None:
        for key, body in list(self.objects.items()):
            if key[0] != "Pod":
                continue
            if body["metadata"].get("deletionTimestamp"):
                continue
            if body["status"].get("phase") == "Pending" and body["spec"].get("nodeName"):
                node = TOPO.node(body["spec"]["nodeName"])
                n = self.next_ip[node.name]
                self.next_ip[node.name] += 1
                ip = str(ipaddress.ip_network(node.pod_cidr)[n])
                self.objects[key] = {
                    **body,
                    "status": {
                        "phase": "Running",
                        "podIP": ip,
                        "podIPs": [{"ip": ip}],
                        "conditions": [{"type": "Ready", "status": "True"}],
                    },
                }

    def finish_deletions(self) -> None:
        for key in [k for k, b in self.objects.items() if b["metadata"].get("deletionTimestamp")]:
            del self.objects[key]

    def pods(self, namespace: str = "default") -> list[dict]:
        return [b for k, b in self.objects.items() if k[0] == "Pod" and k[1] == namespace]

    def live(self, namespace: str = "default") -> list[dict]:
        return [p for p in self.pods(namespace) if not p["metadata"].get("deletionTimestamp")]

    def slices(self, service: str, namespace: str = "default") -> list[dict]:
        return [
            b
            for k, b in self.objects.items()
            if k[0] == "EndpointSlice"
            and k[1] == namespace
            and b["metadata"]["labels"].get("kubernetes.io/service-name") == service
        ]


@pytest.fixture
def c() -> Cluster:
    cluster = Cluster()
    for body in builtin_objects(TOPO):
        cluster.apply(body)
    return cluster


def test_deployment_pods_have_replicaset_names_and_spread_over_nodes(c):
    c.apply(deployment_manifest("blue", "jpetazzo/color", replicas=4))
    c.settle()
    pods = c.live()
    assert len(pods) == 4
    stored = deployment_manifest("blue", "jpetazzo/color")
    defaults.apply(stored)  # the hash is of the template as stored, with the API's defaults
    h = template_hash(stored["spec"]["template"])
    assert all(ch in ALPHABET for ch in h) and 8 <= len(h) <= 10
    for p in pods:
        assert re.fullmatch(rf"blue-{h}-[{ALPHABET}]{{5}}", p["metadata"]["name"])
        assert p["metadata"]["labels"] == {"app": "blue", "pod-template-hash": h}
    nodes = [p["spec"]["nodeName"] for p in pods]
    assert sorted(nodes) == ["pi-black", "pi-black", "pi-red", "pi-red"]


def test_pods_get_the_service_account_token_volume_as_from_its_admission_plugin(c):
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]}}  # fmt: skip
    spec = c.apply(json.loads(json.dumps(body)))["spec"]
    (volume,) = spec["volumes"]
    assert re.fullmatch(rf"kube-api-access-[{ALPHABET}]{{5}}", volume["name"])
    assert [next(iter(s)) for s in volume["projected"]["sources"]] == [
        "serviceAccountToken", "configMap", "downwardAPI"]  # fmt: skip
    assert spec["containers"][0]["volumeMounts"] == [{"name": volume["name"], "readOnly": True,
        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]  # fmt: skip
    # applied again: the same volume (the spec does not change)
    assert c.apply(json.loads(json.dumps(body)))["spec"] == spec
    body["metadata"]["name"] = "q"
    body["spec"]["automountServiceAccountToken"] = False
    assert "volumes" not in c.apply(body)["spec"]
    # a Deployment's pods get one each; its template (and so its hash) stays without
    c.apply(deployment_manifest("blue", "nginx", replicas=2))
    c.settle()
    pods = [p for p in c.live() if p["metadata"]["name"].startswith("blue-")]
    names = {p["spec"]["volumes"][0]["name"] for p in pods}
    assert len(pods) == 2 and len(names) == 2
    (rs,) = [b for k, b in c.objects.items() if k[0] == "ReplicaSet" and k[2].startswith("blue")]
    assert "volumes" not in rs["spec"]["template"]["spec"]


def test_events_are_capped_oldest_first(c):
    c.apply(deployment_manifest("web", "nginx"))
    c.settle()
    events = lambda: sorted(  # noqa: E731
        (int(b["metadata"].get("resourceVersion", "0")), k)
        for k, b in c.objects.items()
        if k[0] == "Event"
    )
    first = events()
    assert first
    for _, key in first:  # stored, as the API server's store does
        c.objects[key]["metadata"]["resourceVersion"] = "1"
    for n in range(MAX_EVENTS):
        key = ("Event", "default", f"filler.{n}")
        c.objects[key] = {**c.objects[first[0][1]], "metadata": {
            "name": key[2], "namespace": "default", "resourceVersion": str(10**6 + n)}}  # fmt: skip
    c.settle()
    left = events()
    assert len(left) == MAX_EVENTS
    assert not {k for _, k in first} & {k for _, k in left}
    c.apply(deployment_manifest("late", "nginx"))  # its events, made in this pass, stay
    c.settle()
    assert any(k[2].startswith("late") for _, k in events())


def test_scaling_down_and_up(c):
    c.apply(deployment_manifest("blue", "jpetazzo/color", replicas=3))
    c.settle()
    body = c.objects[("Deployment", "default", "blue")]
    c.apply({**body, "spec": {**body["spec"], "replicas": 1}})
    c.settle()
    assert len(c.live()) == 1
    c.finish_deletions()
    c.apply({**body, "spec": {**body["spec"], "replicas": 3}})
    c.settle()
    assert len(c.live()) == 3


def test_deleted_pod_is_replaced_with_a_new_name_and_marked_terminating_in_slices(c):
    c.apply(deployment_manifest("blue", "jpetazzo/color"))
    c.apply(service_manifest("blue", "default", {"app": "blue"}, 80))
    c.settle()
    (old,) = c.live()
    key = ("Pod", "default", old["metadata"]["name"])
    c.objects[key] = {**old, "metadata": {**old["metadata"], "deletionTimestamp": NOW}}
    c.settle()
    (new,) = c.live()
    assert new["metadata"]["name"] != old["metadata"]["name"]
    endpoints = {e["targetRef"]["name"]: e for s in c.slices("blue") for e in s["endpoints"]}
    assert endpoints[old["metadata"]["name"]]["conditions"] == {
        "ready": False,
        "serving": True,
        "terminating": True,
    }
    assert endpoints[new["metadata"]["name"]]["conditions"]["ready"] is True
    c.finish_deletions()
    c.settle()
    assert [e["targetRef"]["name"] for s in c.slices("blue") for e in s["endpoints"]] == [
        new["metadata"]["name"]
    ]


def test_slices_carry_node_target_ref_and_ports(c):
    c.apply(deployment_manifest("blue", "jpetazzo/color", replicas=2))
    c.apply(service_manifest("blue", "default", {"app": "blue"}, 80))
    c.settle()
    (s,) = c.slices("blue")
    assert s["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == (
        "endpointslice-controller.k8s.io"
    )
    assert s["ports"] == [{"name": "", "protocol": "TCP", "port": 80}]
    pods = {p["metadata"]["name"]: p for p in c.live()}
    for e in s["endpoints"]:
        pod = pods[e["targetRef"]["name"]]
        assert e["nodeName"] == pod["spec"]["nodeName"]
        assert e["addresses"] == [pod["status"]["podIP"]]
        assert e["targetRef"]["uid"] == pod["metadata"]["uid"]
    parse_object(s)  # the data plane accepts what the controller writes


def test_named_target_port_resolves_per_pod(c):
    for name, port in (("a", 8080), ("b", 9090)):
        c.apply(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {
                            "name": "c",
                            "image": "nginx",
                            "ports": [{"name": "http", "containerPort": port}],
                        }
                    ]
                },
            }
        )
    c.apply(service_manifest("web", "default", {"app": "web"}, 80, "http"))
    c.settle()
    got = sorted(
        (s["ports"][0]["port"], [e["targetRef"]["name"] for e in s["endpoints"]])
        for s in c.slices("web")
    )
    assert got == [(8080, ["a"]), (9090, ["b"])]


def test_selectorless_service_keeps_hand_written_endpoints(c):
    c.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "ext"},
            "spec": {"ports": [{"port": 80}]},
        }
    )
    subsets = [{"addresses": [{"ip": "192.168.123.234"}], "ports": [{"port": 80}]}]
    c.apply(
        {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "ext"}, "subsets": subsets}
    )
    c.settle()
    (mirrored,) = c.slices("ext")
    assert mirrored["metadata"]["name"] == "ext-0"
    assert mirrored["endpoints"] == [
        {"addresses": ["192.168.123.234"], "conditions": {"ready": True}}
    ]
    assert mirrored["ports"] == [{"port": 80}]
    parse_object(mirrored)
    del c.objects[("Endpoints", "default", "ext")]
    c.settle()
    assert c.slices("ext") == []


def test_deleting_a_deployment_terminates_its_pods_and_a_service_its_slices(c):
    c.apply(deployment_manifest("blue", "jpetazzo/color", replicas=2))
    c.apply(service_manifest("blue", "default", {"app": "blue"}, 80))
    c.settle()
    del c.objects[("Deployment", "default", "blue")]
    del c.objects[("Service", "default", "blue")]
    c.settle()
    assert c.live() == [] and c.slices("blue") == []


def test_cluster_ips_node_ports_and_lb_addresses_are_allocated_once(c):
    a = c.apply(service_manifest("a", "default", {"app": "a"}, 80, svc_type="LoadBalancer"))
    b = c.apply(service_manifest("b", "default", {"app": "b"}, 80, svc_type="NodePort"))
    ip = ipaddress.ip_address(a["spec"]["clusterIP"])
    assert ip in ipaddress.ip_network("10.96.0.0/12")
    assert a["spec"]["clusterIP"] != b["spec"]["clusterIP"]
    for svc in (a, b):
        assert 30000 <= svc["spec"]["ports"][0]["nodePort"] <= 32767
    assert a["status"]["loadBalancer"]["ingress"][0]["ip"] == "192.168.0.240"
    again = c.apply(service_manifest("a", "default", {"app": "a"}, 80, svc_type="LoadBalancer"))
    assert again["spec"]["clusterIP"] == a["spec"]["clusterIP"]
    assert again["spec"]["ports"][0]["nodePort"] == a["spec"]["ports"][0]["nodePort"]
    assert again["status"] == a["status"]
    assert c.objects[("Service", "kube-system", "kube-dns")]["spec"]["clusterIP"] == "10.96.0.10"


def test_admission_names_the_bad_field(c):
    bad = service_manifest("x", "default", {"app": "x"}, 80)
    bad["spec"]["ports"][0]["targetport"] = 80
    with pytest.raises(InvalidField) as e:
        c.apply(bad)
    assert e.value.field == "spec.ports[0].targetport"
    taken = service_manifest("y", "default", {}, 80)
    taken["spec"]["clusterIP"] = "10.96.0.10"
    with pytest.raises(InvalidField, match="already allocated"):
        c.apply(taken)
    with pytest.raises(InvalidField, match="no matches for kind"):
        c.apply({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "s"}})
    dep = deployment_manifest("d", "nginx")
    dep["spec"]["selector"]["matchLabels"] = {"app": "other"}
    with pytest.raises(InvalidField, match="selector"):
        c.apply(dep)


def test_service_environment_variables(c):
    c.apply(service_manifest("blue", "default", {"app": "blue"}, 80))
    c.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}})
    c.apply(service_manifest("other-ns", "other", {"app": "x"}, 80))
    ip = c.objects[("Service", "default", "blue")]["spec"]["clusterIP"]
    services = [parse_object(b)[0] for k, b in c.objects.items() if k[0] == "Service"]
    env = service_env(services, "default")
    assert {k: v for k, v in env.items() if k.startswith("BLUE")} == {
        "BLUE_SERVICE_HOST": ip,
        "BLUE_SERVICE_PORT": "80",
        "BLUE_PORT": f"tcp://{ip}:80",
        "BLUE_PORT_80_TCP": f"tcp://{ip}:80",
        "BLUE_PORT_80_TCP_PROTO": "tcp",
        "BLUE_PORT_80_TCP_PORT": "80",
        "BLUE_PORT_80_TCP_ADDR": ip,
    }
    assert env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
    assert env["KUBERNETES_SERVICE_PORT_HTTPS"] == "443"
    assert not any(k.startswith("OTHER_NS") for k in env)
    assert "KUBE_DNS_SERVICE_HOST" in service_env(services, "kube-system")


def test_deployment_pods_are_owned_by_its_replica_set(c):
    c.apply(deployment_manifest("blue", "jpetazzo/color"))
    c.settle()
    (pod,) = c.live()
    (ref,) = pod["metadata"]["ownerReferences"]
    rs = c.objects[("ReplicaSet", "default", ref["name"])]
    assert ref["kind"] == "ReplicaSet" and ref["uid"] == rs["metadata"]["uid"]
    assert rs["metadata"]["ownerReferences"][0]["kind"] == "Deployment"


def test_node_names():
    assert node_names(None) == ("pi-red", "pi-black")
    assert node_names("3") == ("pi-red", "pi-black", "node-3")
    assert node_names("a,b") == ("a", "b")
    with pytest.raises(ValueError):
        node_names("Bad_Name")
    topo = build_topology("t", "/x", node_names("3"))
    assert [n.pod_cidr for n in topo.nodes] == ["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"]
    assert topo.nodes[0].ip == "192.168.0.152" and topo.nodes[0].control_plane
    assert build_topology("t", "/y", node_names(None)).id != TOPO.id


# -- regression tests for issue 16's bugs ------------------------------------------------------


def test_a_typo_in_a_deployment_template_is_refused_like_in_a_bare_pod(c):
    dep = deployment_manifest("blue", "nginx")
    dep["spec"]["template"]["spec"]["containers"][0]["ports"] = [{"containerport": 80}]
    with pytest.raises(InvalidField) as e:
        c.apply(dep)
    assert 'unknown field "spec.template.spec.containers[0].ports[0].containerport"' in str(e.value)
    typo = deployment_manifest("blue", "nginx")
    typo["spec"]["replica"] = 3
    with pytest.raises(InvalidField, match=r'unknown field "spec\.replica"'):
        c.apply(typo)
    svc = service_manifest("blue", "default", {"app": "blue"}, 80)
    with pytest.raises(InvalidField, match="no matches for kind"):
        c.apply({**svc, "apiVersion": "apps/v1"})
    with pytest.raises(InvalidField, match="apiVersion not set"):
        c.apply({k: v for k, v in svc.items() if k != "apiVersion"})


def test_pods_that_never_start_are_not_replaced_by_more_pods(c):
    c.apply(deployment_manifest("blue", "nginx", replicas=2))
    for _ in range(20):  # many controller passes while no pod ever becomes Running
        c.settle(start_pods=False)
    assert len(c.live()) == 2
    # even a pod the data plane cannot parse (a broken status) counts as a replica
    key = next(k for k in c.objects if k[0] == "Pod")
    c.objects[key] = {**c.objects[key], "status": {"podIP": "not-an-ip"}}
    c.settle(start_pods=False)
    assert len(c.live()) == 2
    del c.objects[("Deployment", "default", "blue")]
    c.settle(start_pods=False)
    assert c.live() == []
    assert not [k for k in c.objects if k[0] == "ReplicaSet" and k[1] == "default"]


@pytest.mark.parametrize(
    ("kind", "name", "message"),
    [
        ("Deployment", "Blue", "a lowercase RFC 1123 subdomain"),
        ("Deployment", "under_score", "a lowercase RFC 1123 subdomain"),
        ("Pod", "x" * 300, "must be no more than 253 characters"),
        ("Service", "9lives", "a DNS-1035 label"),
        ("Service", "s" * 64, "must be no more than 63 characters"),
    ],
)
def test_names_are_checked_like_the_api_server(c, kind, name, message):
    body = {
        "Deployment": deployment_manifest(name, "nginx"),
        "Pod": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                "spec": {"containers": [{"name": "c", "image": "nginx"}]}},
        "Service": service_manifest(name, "default", {"app": "x"}, 80),
    }[kind]  # fmt: skip
    with pytest.raises(InvalidField, match=message) as e:
        c.apply(body)
    assert e.value.field == "metadata.name"
    assert f'"{name}" is invalid' in str(e.value)


def test_an_empty_image_is_refused(c):
    dep = deployment_manifest("blue", "nginx")
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = ""
    with pytest.raises(InvalidField, match=r"containers\[0\]\.image: Required value"):
        c.apply(dep)


def test_one_bad_object_never_stops_the_controller_for_the_others(c):
    bad = deployment_manifest("x" * 300, "nginx")  # bypasses admission, as a corrupt store
    bad["metadata"]["uid"] = "u"
    bad["spec"]["template"] = None
    c.objects[("Deployment", "default", "x" * 300)] = bad
    c.apply(deployment_manifest("blue", "jpetazzo/color", replicas=2))
    c.apply(service_manifest("blue", "default", {"app": "blue"}, 80))
    c.settle()
    assert len(c.live()) == 2
    assert [e["targetRef"]["name"] for s in c.slices("blue") for e in s["endpoints"]]


def test_rolling_update_keeps_available_pods_within_max_unavailable(c):
    c.apply(deployment_manifest("blue", "jpetazzo/color", replicas=4))
    c.settle()
    dep = c.objects[("Deployment", "default", "blue")]
    new = json.loads(json.dumps(dep))
    new["spec"]["template"]["spec"]["containers"][0]["image"] = "jpetazzo/color:v2"
    c.apply(new)
    steps = 0
    while True:
        plan = reconcile(c.objects, TOPO, c.rng, NOW)
        for key in plan.deletes:
            c.objects.pop(key, None)
        for body in plan.upserts:
            c.objects[object_key(body)] = body
        ready = [
            p
            for p in c.live()
            if any(
                x["type"] == "Ready" and x["status"] == "True"
                for x in p["status"].get("conditions", [])
            )
        ]
        assert len(ready) >= 3  # maxUnavailable 25% of 4
        assert len(c.live()) <= 5  # maxSurge 25% of 4
        c._kubelet()
        c.finish_deletions()
        steps += 1
        images = {p["spec"]["containers"][0]["image"] for p in c.live()}
        if images == {"jpetazzo/color:v2"} and len(c.live()) == 4:
            break
        assert steps < 50
    sets = sorted(k[2] for k in c.objects if k[0] == "ReplicaSet" and k[1] == "default")
    assert len(sets) == 2  # the old one is kept at 0 replicas for rollout undo


def test_objects_read_back_with_the_api_servers_defaults(c):
    c.apply(deployment_manifest("blue", "jpetazzo/color:v2"))
    c.apply(service_manifest("blue", "default", {"app": "blue"}, 80, 80, "NodePort"))
    c.settle()
    dep = c.objects[("Deployment", "default", "blue")]
    assert dep["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
    }
    assert (dep["spec"]["revisionHistoryLimit"], dep["spec"]["progressDeadlineSeconds"]) == (
        10,
        600,
    )
    template = dep["spec"]["template"]["spec"]
    assert template["containers"][0]["imagePullPolicy"] == "IfNotPresent"  # tagged, not latest
    assert "serviceAccountName" not in template and "tolerations" not in template
    (pod,) = c.live()
    assert pod["spec"]["serviceAccountName"] == "default"
    assert pod["spec"]["dnsPolicy"] == "ClusterFirst"
    assert [t["key"] for t in pod["spec"]["tolerations"]] == [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ]
    spec = c.objects[("Service", "default", "blue")]["spec"]
    assert spec["ipFamilies"] == ["IPv4"] and spec["ipFamilyPolicy"] == "SingleStack"
    assert spec["externalTrafficPolicy"] == spec["internalTrafficPolicy"] == "Cluster"
