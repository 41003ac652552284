"""The object model parses real manifests and names the field when it cannot."""

from __future__ import annotations

import json

import pytest

from netplane.model import EndpointSlice, RawObject, Service, load_path, parse_manifests

LAB = """
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ipFamilies: [IPv4]
  ipFamilyPolicy: SingleStack
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
  - {name: metrics, port: 9153, protocol: TCP, targetPort: 9153}
  sessionAffinity: None
  type: ClusterIP
status: {loadBalancer: {}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: LoadBalancer
  clusterIPs: [10.96.5.5, "fd00::5"]
  ports: [{port: 8080, targetPort: http, nodePort: 30080}]
  externalIPs: [192.0.2.10]
  loadBalancerSourceRanges: [" 203.0.113.0/24 "]
  externalTrafficPolicy: Local
  healthCheckNodePort: 31000
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
status: {loadBalancer: {ingress: [{ip: 198.51.100.7}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-x1
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
- addresses: [10.244.0.5]
  conditions: {ready: false, serving: true, terminating: true}
  nodeName: pi-red
  targetRef: {kind: Pod, name: web-1, namespace: default}
  hints: {forZones: [{name: z1}]}
- addresses: [10.244.1.5]
ports: [{name: "", port: 80, protocol: TCP}]
"""


def test_lab_objects_parse_with_api_defaults():
    result = parse_manifests(LAB, "lab.yaml")
    assert result.errors == ()
    dns, web, sl = result.objects
    assert isinstance(dns, Service) and dns.cluster_ips == ("10.96.0.10",)
    assert [(p.name, p.protocol, p.port) for p in dns.ports] == [
        ("dns", "UDP", 53),
        ("dns-tcp", "TCP", 53),
        ("metrics", "TCP", 9153),
    ]
    assert web.type == "LoadBalancer" and web.ip_families == ("IPv4", "IPv6")
    assert web.cluster_ips == ("10.96.5.5", "fd00::5")
    assert web.ports[0].target_port == "http" and web.ports[0].node_port == 30080
    assert web.load_balancer_ips == ("198.51.100.7",)
    assert web.load_balancer_source_ranges == ("203.0.113.0/24",)
    assert (web.session_affinity, web.session_affinity_timeout) == ("ClientIP", 60)
    assert web.external_traffic_policy == "Local" and web.health_check_node_port == 31000
    assert isinstance(sl, EndpointSlice) and sl.service_key == ("default", "web")
    terminating, plain = sl.endpoints
    assert (terminating.ready, terminating.serving, terminating.terminating) == (False, True, True)
    assert terminating.target_pod == "web-1" and terminating.hint_zones == ("z1",)
    # unset conditions mean ready and serving, not terminating (API semantics)
    assert (plain.ready, plain.serving, plain.terminating) == (True, True, False)


def test_headless_externalname_and_selectorless():
    result = parse_manifests("""
kind: Service
apiVersion: v1
metadata: {name: hdls}
spec: {clusterIP: None, selector: {app: x}}
---
kind: Service
apiVersion: v1
metadata: {name: numbers-api}
spec: {type: ExternalName, externalName: numbersapi.com.}
---
kind: Service
apiVersion: v1
metadata: {name: ext}
spec: {ports: [{port: 80}]}
""")
    assert result.errors == ()
    hdls, ext_name, selectorless = result.objects
    assert hdls.headless and hdls.cluster_ips == ()
    assert ext_name.external_name == "numbersapi.com"
    assert selectorless.selector is None and hdls.selector == (("app", "x"),)


def test_legacy_endpoints_become_slices_per_family():
    result = parse_manifests(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {"name": "ext"},
                "subsets": [
                    {
                        "addresses": [{"ip": "192.168.123.234"}, {"ip": "fd00::1"}],
                        "notReadyAddresses": [{"ip": "192.168.123.235"}],
                        "ports": [{"port": 80}],
                    }
                ],
            }
        ),
        "ep.json",
    )
    assert result.errors == ()
    v4, v6 = sorted(result.objects, key=lambda s: s.address_type)
    assert v4.service_name == "ext" and v4.address_type == "IPv4"
    assert [(e.addresses, e.ready) for e in v4.endpoints] == [
        (("192.168.123.234",), True),
        (("192.168.123.235",), False),
    ]
    assert v6.endpoints[0].addresses == ("fd00::1",)


def test_list_kind_and_unmodelled_kinds_are_kept():
    result = parse_manifests(
        json.dumps(
            {
                "kind": "List",
                "items": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "metadata": {"name": "blue"},
                        "spec": {"replicas": 1},
                    },
                    {
                        "apiVersion": "v1",
                        "kind": "Node",
                        "metadata": {"name": "pi-red"},
                        "spec": {"podCIDR": "10.244.0.0/24"},
                        "status": {
                            "addresses": [
                                {"type": "InternalIP", "address": "192.168.0.152"},
                                {"type": "Hostname", "address": "pi-red"},
                            ]
                        },
                    },
                ],
            }
        )
    )
    assert result.errors == ()
    dep, node = result.objects
    assert isinstance(dep, RawObject) and dep.key == ("Deployment", "default", "blue")
    assert node.internal_ips == ("192.168.0.152",) and node.pod_cidrs == ("10.244.0.0/24",)


@pytest.mark.parametrize(
    ("doc", "field", "words"),
    [
        (
            "spec: {ports: [{port: 80, targetport: 90}]}",
            "spec.ports[0].targetport",
            "unknown field",
        ),
        (
            "spec: {ports: [{port: 80, name: a}, {port: 80, name: b}]}",
            "spec.ports[1]",
            "duplicate port 80/TCP",
        ),
        (
            "spec: {ports: [{port: 80, name: a}, {port: 81, name: a}]}",
            "spec.ports[1].name",
            "duplicate port name",
        ),
        (
            "spec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}",
            "spec.clusterIP",
            "not a valid IP address",
        ),
        ("spec: {ports: [{port: 70000}]}", "spec.ports[0].port", "out of range"),
        (
            "spec: {ports: [{port: 80, protocol: ICMP}]}",
            "spec.ports[0].protocol",
            "unsupported value",
        ),
        ("spec: {type: Weird, ports: [{port: 80}]}", "spec.type", "unsupported value"),
        (
            "spec: {externalIPs: [nope], ports: [{port: 80}]}",
            "spec.externalIPs[0]",
            "not a valid IP",
        ),
        ("spec: {ports: [{port: 80}, {port: 81}]}", "spec.ports[0].name", "required"),
    ],
)
def test_invalid_service_names_the_field(doc, field, words):
    text = (
        f"kind: Service\napiVersion: v1\nmetadata: {{name: good}}\n---\n"
        f"kind: Service\napiVersion: v1\nmetadata: {{name: bad}}\n{doc}\n"
    )
    # the first document is valid but has no ports: it is reported too, on document 1
    result = parse_manifests(
        text.replace(
            "metadata: {name: good}", "metadata: {name: good}\nspec: {ports: [{port: 1}]}", 1
        ),
        "svc.yaml",
    )
    assert [o.name for o in result.objects] == ["good"]
    (error,) = result.errors
    assert error.document == 2 and error.field == field and words in error.message
    assert str(error).startswith("svc.yaml: document 2 (Service default/bad): " + field)
    assert result.rejected_keys == {("Service", "default", "bad")}


def test_unreadable_yaml_is_one_error_not_a_crash(tmp_path):
    (tmp_path / "a.yaml").write_text("kind: Service\nmetadata: {name: [\n")
    (tmp_path / "b.yaml").write_text(
        "kind: Service\napiVersion: v1\nmetadata: {name: ok}\nspec: {ports: [{port: 1}]}\n"
    )
    (tmp_path / "notes.txt").write_text("ignored")
    result = load_path(tmp_path)
    assert [o.name for o in result.objects] == ["ok"]
    (error,) = result.errors
    assert error.source.endswith("a.yaml") and "not valid YAML/JSON" in error.message


def test_duplicate_definitions_across_files(tmp_path):
    svc = "kind: Service\napiVersion: v1\nmetadata: {name: ok}\nspec: {ports: [{port: %d}]}\n"
    (tmp_path / "a.yaml").write_text(svc % 1)
    (tmp_path / "b.yaml").write_text(svc % 2)
    result = load_path(tmp_path)
    assert [o.ports[0].port for o in result.objects] == [1]
    assert "defined more than once" in result.errors[0].message


def test_api_objects_may_carry_fields_newer_than_ours():
    from netplane.model import parse_object

    doc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "a", "newMeta": 1},
        "spec": {"ports": [{"port": 80, "futureField": True}], "futureSpec": {}},
    }
    with pytest.raises(ValueError, match="unknown field"):
        parse_object(doc)
    (svc,) = parse_object(doc, strict=False)
    assert svc.ports[0].port == 80
    with pytest.raises(ValueError, match="out of range"):  # values are still checked
        parse_object({**doc, "spec": {"ports": [{"port": 0}]}}, strict=False)
