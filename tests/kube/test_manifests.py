"""deploy/: every document validates strictly against the Kubernetes 1.33 JSON schemas
shipped in the `kubernetes-validate` PyPI package (no network), plus the properties the
issue asks for."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from netplane.model import parse_object

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S_VERSION = "1.33.0"  # the lab's cluster runs v1.33.2


def documents() -> list[tuple[str, dict]]:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    return [
        (f"{name}#{i}", doc)
        for name in kustomization["resources"]
        for i, doc in enumerate(yaml.safe_load_all((DEPLOY / name).read_text()))
        if doc
    ]


def find(kind: str, name: str) -> dict:
    return next(d for _, d in documents() if d["kind"] == kind and d["metadata"]["name"] == name)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    on_disk = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk


@pytest.mark.parametrize("where, doc", documents(), ids=[w for w, _ in documents()])
def test_document_is_valid_kubernetes(where, doc):
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"deploy/{where}: {str(e).splitlines()[0]}")


def _container(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]["containers"][0]


def test_proxy_daemonset():
    ds = find("DaemonSet", "netplane-proxy")
    pod = ds["spec"]["template"]["spec"]
    c = _container(ds)
    assert pod["hostNetwork"] is True
    assert {"operator": "Exists"} in pod["tolerations"]
    assert c["securityContext"]["capabilities"] == {
        "drop": ["ALL"],
        "add": ["NET_ADMIN", "NET_RAW"],
    }
    assert "privileged" not in c["securityContext"]
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["livenessProbe"]["httpGet"]["port"] == 10256
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/run/xtables.lock", "/lib/modules"} <= mounts
    assert "--in-cluster" in c["command"]


def test_dns_replaces_coredns_behind_kube_dns():
    svc = find("Service", "kube-dns")
    assert svc["metadata"]["namespace"] == "kube-system"
    assert svc["spec"]["clusterIP"] == "10.96.0.10"
    ports = {(p["port"], p["protocol"]) for p in svc["spec"]["ports"]}
    assert ports == {(53, "UDP"), (53, "TCP"), (9153, "TCP")}
    parsed = parse_object(svc)[0]  # netplane itself must accept its own Service
    assert parsed.cluster_ips == ("10.96.0.10",)
    dep = find("Deployment", "netplane-dns")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    c = _container(dep)
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["capabilities"]["add"] == ["NET_BIND_SERVICE"]
    assert (c["readinessProbe"]["httpGet"]["path"], c["readinessProbe"]["httpGet"]["port"]) == (
        "/ready",
        8181,
    )
    assert (c["livenessProbe"]["httpGet"]["path"], c["livenessProbe"]["httpGet"]["port"]) == (
        "/health",
        8080,
    )


def test_rbac_is_read_only():
    """list/watch of what each component follows; `get` only of single objects: a node's pod
    CIDR (CNI), the components' own DaemonSets (uninstall or restart?)."""
    roles = [d for _, d in documents() if d["kind"] in ("ClusterRole", "Role")]
    assert {r["metadata"]["name"] for r in roles} == {
        "netplane-proxy",
        "netplane-dns",
        "netplane-cni",
        "netplane-node-lifecycle",
    }
    for role in roles:
        for rule in role["rules"]:
            if rule["verbs"] == ["get"]:
                assert rule["resources"] in (["nodes"], ["daemonsets"]), role["metadata"]["name"]
            else:
                assert sorted(rule["verbs"]) == ["list", "watch"], role["metadata"]["name"]
    lifecycle = find("Role", "netplane-node-lifecycle")
    assert lifecycle["rules"][0]["resourceNames"] == ["netplane-proxy", "netplane-cni"]
    granted = {
        (r["metadata"]["name"], res)
        for r in roles
        for rule in r["rules"]
        for res in rule["resources"]
    }
    assert ("netplane-proxy", "endpointslices") in granted
    assert ("netplane-proxy", "pods") not in granted  # the proxy never reads pods
    accounts = {
        d["spec"]["template"]["spec"].get("serviceAccountName")
        for _, d in documents()
        if d["kind"] in ("DaemonSet", "Deployment")
    }
    assert accounts == {"netplane-proxy", "netplane-dns", "netplane-cni"}


def test_cni_installer_writes_host_directories():
    ds = find("DaemonSet", "netplane-cni")
    pod = ds["spec"]["template"]["spec"]
    paths = {v["hostPath"]["path"] for v in pod["volumes"]}
    assert {"/opt/cni/bin", "/etc/cni/net.d", "/run/netplane", "/var/lib/cni"} <= paths
    assert pod["initContainers"][0]["command"][:3] == ["netplane", "cni", "install"]
    agent = pod["containers"][0]["command"]
    assert agent[:2] == ["netplane", "supervise"] and "agent" in agent
    assert "--node=$(NODE_NAME)" in agent
