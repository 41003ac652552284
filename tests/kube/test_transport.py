"""`netplane.kube.transport`: kubeconfig and service-account loading without the official
client, the client's loader for what only it can run (exec plugins), clear errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from netplane.kube import transport
from netplane.kube.options import SourceChoiceError, source_from_options
from netplane.kube.transport import ApiError, ConfigError, HttpTransport, load_config
from netplane.testing.fakeapi import FakeApiServer


def kubeconfig(tmp_path: Path, user: dict, cluster: dict | None = None, **top) -> str:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster or {"server": "https://10.0.0.1:6443/"}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
        **top,
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_token_and_server(tmp_path):
    config = load_config(kubeconfig(tmp_path, {"token": "abc"}))
    assert config.server == "https://10.0.0.1:6443"
    assert config.authorization() == "Bearer abc"


def test_basic_auth(tmp_path):
    config = load_config(kubeconfig(tmp_path, {"username": "me", "password": "pw"}))
    assert config.authorization() == "Basic bWU6cHc="


def test_token_file_is_read_again_after_rotation(tmp_path, monkeypatch):
    token = tmp_path / "token"
    token.write_text("first\n")
    config = load_config(kubeconfig(tmp_path, {"tokenFile": "token"}))  # relative to the file
    assert config.authorization() == "Bearer first"
    token.write_text("second\n")
    assert config.authorization() == "Bearer first"  # re-read once a minute, as client-go
    monkeypatch.setattr(transport, "TOKEN_REREAD", 0.0)
    assert config.authorization() == "Bearer second"


def test_exec_plugin_goes_through_the_official_loader(tmp_path):
    credential = {"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                  "status": {"token": "from-exec"}}  # fmt: skip
    plugin = {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": sys.executable,
              "args": ["-c", f"print({json.dumps(json.dumps(credential))})"]}  # fmt: skip
    config = load_config(kubeconfig(tmp_path, {"exec": plugin}))
    assert config.server == "https://10.0.0.1:6443"
    assert config.authorization() == "Bearer from-exec"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"user": {"token": "x"}, "current-context": ""}, "no current-context"),
        ({"user": {"token": "x"}, "cluster": {"server": ""}}, "has no server"),
        ({"user": {"token": "x"}, "cluster": {"server": "https://a", "certificate-authority":
          "missing-ca.crt"}}, "missing-ca.crt"),
    ],
)  # fmt: skip
def test_unusable_kubeconfig_says_why(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config(kubeconfig(tmp_path, **kwargs))
    assert "--kubeconfig" in str(e.value)


def test_missing_file_and_in_cluster_outside_a_pod(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "nope"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match="KUBERNETES_SERVICE_HOST"):
        load_config(None, in_cluster=True)


def test_source_choice_error_for_the_lean_path(tmp_path):
    """The DNS server's source (a codec given): a bad kubeconfig is a usage error."""
    from netplane.dns.objects import ApiCodec

    with pytest.raises(SourceChoiceError, match="no such file"):
        source_from_options(None, str(tmp_path / "nope"), False, {"Service"}, ApiCodec)


def test_http_get_and_errors(tmp_path):
    from netplane.testing.fakeapi import write_kubeconfig

    api = FakeApiServer().start()
    try:
        http = HttpTransport(load_config(write_kubeconfig(tmp_path / "kubeconfig", api.url)))
        response = http.get("/api/v1/services", {"limit": 5}, (2.0, 5.0))
        try:
            assert response.status == 200 and json.loads(response.data)["kind"] == "ServiceList"
        finally:
            response.release_conn()
        with pytest.raises(ApiError) as e:
            http.get("/api/v1/nosuchkind", {}, (2.0, 5.0))
        assert e.value.status == 404
    finally:
        api.stop()
