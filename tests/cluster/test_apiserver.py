"""The API server stand-in's answers (pure), as kube-apiserver v1.33.13 gave them to an
anonymous client (bodies captured from the real one, netplane.testing.controlplane)."""

from __future__ import annotations

import json

import pytest

from netplane.cluster.node.apiserver import respond

ROOT = """{
  "kind": "Status",
  "apiVersion": "v1",
  "metadata": {},
  "status": "Failure",
  "message": "forbidden: User \\"system:anonymous\\" cannot get path \\"/\\"",
  "reason": "Forbidden",
  "details": {},
  "code": 403
}"""
PODS = """{
  "kind": "Status",
  "apiVersion": "v1",
  "metadata": {},
  "status": "Failure",
  "message": "pods is forbidden: User \\"system:anonymous\\" cannot list resource \\"pods\\" in API group \\"\\" in the namespace \\"default\\"",
  "reason": "Forbidden",
  "details": {
    "kind": "pods"
  },
  "code": 403
}"""  # noqa: E501


def test_anonymous_root_gets_the_api_servers_403_status():
    assert respond("GET", "/", {}, "linux/amd64") == (403, ROOT)
    assert respond("GET", "/api/v1/namespaces/default/pods", {}, "linux/amd64") == (403, PODS)


@pytest.mark.parametrize(
    ("method", "path", "message", "details"),
    [
        ("GET", "/apis/apps/v1/namespaces/default/deployments/blue",
         'deployments.apps "blue" is forbidden: User "system:anonymous" cannot get resource '
         '"deployments" in API group "apps" in the namespace "default"',
         {"name": "blue", "group": "apps", "kind": "deployments"}),
        ("GET", "/api/v1/nodes",
         'nodes is forbidden: User "system:anonymous" cannot list resource "nodes" in API group '
         '"" at the cluster scope', {"kind": "nodes"}),
        ("GET", "/api/v1/namespaces/default/pods?watch=true",
         'pods is forbidden: User "system:anonymous" cannot watch resource "pods" in API group '
         '"" in the namespace "default"', {"kind": "pods"}),
        ("GET", "/api/v1/namespaces/default/pods/x/log",
         'pods "x" is forbidden: User "system:anonymous" cannot get resource "pods/log" in API '
         'group "" in the namespace "default"', {"name": "x", "kind": "pods"}),
        ("DELETE", "/api/v1/namespaces/default/pods",
         'pods is forbidden: User "system:anonymous" cannot deletecollection resource "pods" in '
         'API group "" in the namespace "default"', {"kind": "pods"}),
        ("GET", "/api/v1/namespaces/default",
         'namespaces "default" is forbidden: User "system:anonymous" cannot get resource '
         '"namespaces" in API group "" in the namespace "default"',
         {"name": "default", "kind": "namespaces"}),
        ("PUT", "/foo", 'forbidden: User "system:anonymous" cannot put path "/foo"', {}),
    ],
)  # fmt: skip
def test_forbidden_messages_name_the_verb_resource_and_scope(method, path, message, details):
    code, body = respond(method, path, {}, "linux/amd64")
    status = json.loads(body)
    assert (code, status["message"], status["details"], status["reason"]) == (
        403, message, details, "Forbidden"
    )  # fmt: skip


def test_public_info_and_tokens():
    code, body = respond("GET", "/version", {}, "linux/arm64")
    version = json.loads(body)
    assert code == 200 and version["gitVersion"] == "v1.33.2"
    assert version["platform"] == "linux/arm64" and list(version)[:2] == ["major", "minor"]
    assert respond("GET", "/healthz", {}, "x") == (200, "ok")
    code, body = respond("GET", "/api", {"authorization": "Bearer abc"}, "x")
    assert code == 401 and json.loads(body) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "Unauthorized", "reason": "Unauthorized", "code": 401,
    }  # fmt: skip
