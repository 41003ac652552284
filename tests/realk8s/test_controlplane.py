"""The real control plane itself: TLS, identities (certificates, ServiceAccount tokens,
RBAC), node namespaces, stop/start, teardown."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from netplane import netns
from netplane.testing.controlplane import APISERVER_IP, Api, ApiError, ControlPlane

REPO = Path(__file__).resolve().parents[2]


def test_admin_kubectl_and_version(controlplane: ControlPlane) -> None:
    version = yaml.safe_load(controlplane.kubectl("version", "-o", "yaml"))
    assert version["serverVersion"]["gitVersion"] == "v1.33.13"
    assert version["clientVersion"]["gitVersion"] == "v1.33.13"
    svc = controlplane.api.get("/api/v1/namespaces/default/services/kubernetes")
    assert svc["spec"]["clusterIP"] == "10.96.0.1"


def test_node_namespace_reaches_the_api_server_over_tls(controlplane: ControlPlane) -> None:
    node = controlplane.add_node(netns.unique_name("node"))
    curl = ["curl", "-sS", "--cacert", str(controlplane.ca)]
    version = netns.run(node.netns, [*curl, f"{controlplane.url}/version"])
    assert '"gitVersion": "v1.33.13"' in version  # TLS verified against the CA
    anonymous = netns.run(node.netns, [*curl, f"{controlplane.url}/api/v1/services"])
    assert '"code": 403' in anonymous and "system:anonymous" in anonymous
    got = controlplane.api.get(f"/api/v1/nodes/{node.name}")
    assert {"type": "InternalIP", "address": node.ip} in got["status"]["addresses"]
    assert netns.run(node.netns, ["ip", "-4", "-o", "addr", "show", "eth0"]).count(node.ip) == 1
    assert APISERVER_IP not in netns.run(None, ["ip", "-4", "-o", "addr"])  # root ns untouched


def _client(cp: ControlPlane, kubeconfig: Path) -> Api:
    doc = yaml.safe_load(kubeconfig.read_text())
    user = doc["users"][0]["user"]
    host, port = doc["clusters"][0]["cluster"]["server"].removeprefix("https://").split(":")
    if "token" in user:
        return Api(host, int(port), cp.ca, token=user["token"])
    import base64
    import tempfile

    tmp = Path(tempfile.mkdtemp(dir=cp.directory))
    (tmp / "c.crt").write_bytes(base64.b64decode(user["client-certificate-data"]))
    (tmp / "c.key").write_bytes(base64.b64decode(user["client-key-data"]))
    return Api(host, int(port), cp.ca, tmp / "c.crt", tmp / "c.key")


def test_kube_proxy_certificate_gets_node_proxier_rights_only(controlplane: ControlPlane) -> None:
    proxier = _client(controlplane, controlplane.kubeconfig("system:kube-proxy", host=True))
    assert proxier.get("/apis/discovery.k8s.io/v1/endpointslices?limit=1")["kind"]
    with pytest.raises(ApiError) as e:
        proxier.post("/api/v1/namespaces/default/configmaps", {"metadata": {"name": "x"}})
    assert e.value.status == 403


def test_shipped_rbac_and_serviceaccount_tokens(controlplane: ControlPlane) -> None:
    controlplane.apply_manifest(REPO / "deploy" / "rbac.yaml")
    proxy = _client(
        controlplane, controlplane.token_kubeconfig("kube-system", "netplane-proxy", host=True)
    )
    assert proxy.get("/api/v1/services?limit=1")["kind"] == "ServiceList"
    with pytest.raises(ApiError) as e:
        proxy.get("/api/v1/secrets?limit=1")
    assert e.value.status == 403
    who = controlplane.kubectl(
        "auth", "can-i", "watch", "endpointslices.discovery.k8s.io",
        "--as=system:serviceaccount:kube-system:netplane-dns",
    )  # fmt: skip
    assert who.strip() == "yes"


def test_create_missing_lists_first(controlplane: ControlPlane, k8s_namespace: str) -> None:
    cms = [
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": f"cm-{i}", "namespace": k8s_namespace}, "data": {"i": str(i)}}
        for i in range(30)
    ]  # fmt: skip
    assert controlplane.create_missing(cms[:10]) == 10
    assert controlplane.create_missing(cms) == 20
    assert controlplane.create_missing(cms) == 0


def test_stop_and_start_the_api_server(controlplane: ControlPlane, k8s_namespace: str) -> None:
    try:
        controlplane.stop_apiserver(deadline=5)
        assert not controlplane.apiserver_running
        with pytest.raises(OSError):
            controlplane.api.raw("GET", "/readyz")
    finally:
        controlplane.start_apiserver()
    assert controlplane.api.get(f"/api/v1/namespaces/{k8s_namespace}")["metadata"]["name"]


def test_a_second_control_plane_is_removed_completely() -> None:
    before = set(netns.run(None, ["ip", "netns", "list"]).split())
    cp = ControlPlane(prefix="npk8sx").start()
    directory, namespaces = cp.directory, [cp.hub, cp.netns]
    pids = [p.pid for p in (cp._etcd, cp._apiserver) if p]
    cp.add_node("extra")
    cp.close()
    after = netns.run(None, ["ip", "netns", "list"])
    assert not any(ns in after for ns in namespaces)
    assert not directory.exists()
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)
    assert not {n for n in after.split() if n.startswith("npk8sx")} - before


def test_controller_manager_makes_endpoint_slices(
    controlplane: ControlPlane, k8s_namespace: str
) -> None:
    """Optional kube-controller-manager: a Service with a selector gets its EndpointSlice."""
    from netplane.testing import anchors
    from netplane.testing.lab import wait_for

    if not anchors.is_built("kube-controller-manager"):
        pytest.fail("kube-controller-manager not built: run `netplane anchors build`")
    controlplane.start_controller_manager()
    controlplane.kubectl(
        "create", "service", "clusterip", "sel", "--tcp=80:8080", "-n", k8s_namespace
    )
    path = f"/apis/discovery.k8s.io/v1/namespaces/{k8s_namespace}/endpointslices"

    def managed():
        items = controlplane.api.get(path)["items"]
        return [
            s for s in items
            if s["metadata"]["labels"].get("endpointslice.kubernetes.io/managed-by")
            == "endpointslice-controller.k8s.io"
        ]  # fmt: skip

    (made,) = wait_for(managed, 90, interval=0.5, what="the controller's EndpointSlice")
    assert made["metadata"]["labels"]["kubernetes.io/service-name"] == "sel"
