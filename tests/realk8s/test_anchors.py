"""The anchors' build logic without building anything: wrapper go.mod, pins and stamps, the
cache's reuse, and the message when the Go module proxy is unreachable."""

from __future__ import annotations

from dataclasses import replace

import pytest

from netplane.testing import anchors
from netplane.testing.ports import free_port

KUBE_GOMOD = """module k8s.io/kubernetes

go 1.24.0

godebug default=go1.24

require (
\tgithub.com/spf13/cobra v1.8.1
\tk8s.io/api v0.0.0
\tk8s.io/client-go v0.0.0 // indirect
)

require k8s.io/apiserver v0.0.0

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
\tk8s.io/never-required => ./FORBIDDEN_DEPENDENCY
)

replace k8s.io/apiserver => ./staging/src/k8s.io/apiserver
"""

ETCD_GOMOD = """module go.etcd.io/etcd/server/v3

go 1.23

require (
\tgo.etcd.io/etcd/api/v3 v3.5.35
\tgo.etcd.io/etcd/pkg/v3 v3.5.35
\tgo.uber.org/zap v1.17.0
)

replace (
\tgo.etcd.io/etcd/api/v3 => ../api
\tgo.etcd.io/etcd/pkg/v3 => ../pkg
)
"""


def test_kubernetes_staging_modules_point_at_their_published_v0_versions() -> None:
    files = anchors.wrapper_files(anchors.ANCHORS["kube-proxy"], KUBE_GOMOD)
    gomod = files["go.mod"]
    assert "require k8s.io/kubernetes v1.33.13" in gomod
    assert "go 1.24.0" in gomod
    for module in ("k8s.io/api", "k8s.io/client-go", "k8s.io/apiserver"):
        assert f"\t{module} => {module} v0.33.13\n" in gomod
    assert "never-required" not in gomod  # a guard, not a dependency
    assert "cobra" not in gomod  # published modules need no replace
    # one wrapper builds every Kubernetes binary: all their packages are imported
    assert '_ "k8s.io/kubernetes/cmd/kube-proxy"' in files["tools.go"]
    assert '_ "k8s.io/kubernetes/cmd/kubectl"' in files["tools.go"]
    assert "coredns" not in files["tools.go"]


def test_etcd_siblings_keep_the_version_etcd_requires() -> None:
    gomod = anchors.wrapper_files(anchors.ANCHORS["etcd"], ETCD_GOMOD)["go.mod"]
    assert "\tgo.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 v3.5.35\n" in gomod
    assert "\tgo.etcd.io/etcd/pkg/v3 => go.etcd.io/etcd/pkg/v3 v3.5.35\n" in gomod
    assert "zap" not in gomod


def test_pins_carry_version_and_build_flags() -> None:
    kube = anchors.ANCHORS["kube-apiserver"]
    assert kube.pin.startswith("k8s.io/kubernetes@v1.33.13 k8s.io/kubernetes/cmd/kube-apiserver")
    assert "gitVersion=v1.33.13" in kube.pin and "gitMinor=33" in kube.pin
    assert all("cgo=0" in a.pin for a in anchors.ANCHORS.values())  # static: shared build cache
    assert set(anchors.ANCHORS) == {
        "etcd", "kube-apiserver", "kubectl", "kube-controller-manager", "kube-scheduler",
        "kube-proxy", "kubelet", "coredns",
    }  # fmt: skip


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NETPLANE_ANCHORS", str(tmp_path))
    return tmp_path


def _fake_built(name: str, pin: str) -> None:
    path = anchors.binary(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.with_name(f".{name}.pin").write_text(pin)


def test_a_changed_pin_means_not_built(cache, monkeypatch) -> None:
    with pytest.raises(anchors.AnchorError, match=r"not built: etcd .*netplane anchors build"):
        anchors.require("etcd")
    _fake_built("etcd", anchors.ANCHORS["etcd"].pin)
    assert anchors.require("etcd") == {"etcd": cache / "bin" / "etcd"}
    bumped = replace(anchors.ANCHORS["etcd"], version="v3.5.99")
    monkeypatch.setitem(anchors.ANCHORS, "etcd", bumped)
    assert not anchors.is_built("etcd")


@pytest.mark.skipif(not anchors.go(), reason="needs the Go toolchain")
def test_build_reuses_the_cache_without_the_network(cache, monkeypatch) -> None:
    monkeypatch.setenv("GOPROXY", f"http://127.0.0.1:{free_port()}")
    _fake_built("kubectl", anchors.ANCHORS["kubectl"].pin)
    assert anchors.build(["kubectl"]) == {"kubectl": None}


@pytest.mark.skipif(not anchors.go(), reason="needs the Go toolchain")
def test_unreachable_module_proxy_says_so(cache, monkeypatch, capsys) -> None:
    port = free_port()
    monkeypatch.setenv("GOPROXY", f"http://127.0.0.1:{port}")
    with pytest.raises(anchors.AnchorError) as e:
        anchors.build(["etcd"])
    message = str(e.value)
    assert "Go module proxy is unreachable" in message
    assert f"127.0.0.1:{port}/go.etcd.io/etcd/server/v3/@v/v3.5.35.info" in message
    assert "GOPROXY" in message
    assert not anchors.binary("etcd").exists()


def test_module_paths_are_case_encoded() -> None:
    assert anchors._escape("github.com/Azure/go-autorest") == "github.com/!azure/go-autorest"


def test_for_tests_builds_what_the_suite_runs(cache, monkeypatch) -> None:
    from click.testing import CliRunner

    from netplane.testing.cli import anchors_group

    for name in anchors.FOR_TESTS:
        _fake_built(name, anchors.ANCHORS[name].pin)
    monkeypatch.setenv("GOPROXY", f"http://127.0.0.1:{free_port()}")
    result = CliRunner().invoke(anchors_group, ["build", "--for-tests"])
    assert result.exit_code == 0, result.output
    assert {line.split()[0] for line in result.output.splitlines()} == set(anchors.FOR_TESTS)
