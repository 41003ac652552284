"""`netplane.kube.transport` (the DNS server's, without the official client) against the real
kube-apiserver: client certificates and CA from kubeconfig data, a ServiceAccount token, RBAC
refusals as ApiError, and a watch stream."""

from __future__ import annotations

import json

import pytest

from netplane.kube.transport import ApiError, HttpTransport, load_config
from netplane.testing.controlplane import ControlPlane

TIMEOUT = (5.0, 30.0)


def _get(http: HttpTransport, path: str, **query) -> dict:
    response = http.get(path, query, TIMEOUT)
    try:
        return json.loads(response.data)
    finally:
        response.release_conn()


def test_client_certificate_kubeconfig(controlplane: ControlPlane) -> None:
    http = HttpTransport(load_config(str(controlplane.kubeconfig(host=True))))
    body = _get(http, "/api/v1/namespaces", limit=1)
    assert body["kind"] == "NamespaceList" and len(body["items"]) == 1
    assert body["metadata"].get("continue")  # paged: more than one namespace exists


def test_service_account_token_and_rbac(shipped_rbac: ControlPlane) -> None:
    kubeconfig = shipped_rbac.token_kubeconfig("kube-system", "netplane-dns", host=True)
    http = HttpTransport(load_config(str(kubeconfig)))
    assert _get(http, "/api/v1/services", limit=1)["kind"] == "ServiceList"
    with pytest.raises(ApiError) as e:  # the DNS role reads no secrets
        http.get("/api/v1/secrets", {"limit": 1}, TIMEOUT)
    assert e.value.status == 403


def test_watch_streams_events(controlplane: ControlPlane, k8s_namespace: str) -> None:
    http = HttpTransport(load_config(str(controlplane.kubeconfig(host=True))))
    rv = _get(http, f"/api/v1/namespaces/{k8s_namespace}/configmaps")["metadata"]["resourceVersion"]
    controlplane.api.post(f"/api/v1/namespaces/{k8s_namespace}/configmaps",
                          {"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": "watched"}})  # fmt: skip
    response = http.get(f"/api/v1/namespaces/{k8s_namespace}/configmaps",
                        {"watch": "true", "resourceVersion": rv, "timeoutSeconds": 5},
                        TIMEOUT)  # fmt: skip
    try:
        buffer = b""
        for chunk in response.stream():
            buffer += chunk
            if b"\n" in buffer:
                break
        event = json.loads(buffer.split(b"\n")[0])
    finally:
        response.release_conn()
    assert event["type"] == "ADDED" and event["object"]["metadata"]["name"] == "watched"
