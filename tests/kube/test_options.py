"""Choosing the source from the command line: exactly one of the three."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from netplane.kube import SourceChoiceError, source_from_options, source_options
from netplane.kube.source import KubeApiSource
from netplane.sources import ManifestSource

KINDS = {"Service", "EndpointSlice"}


@pytest.mark.parametrize(
    "manifests, kubeconfig, in_cluster, named",
    [
        (None, None, False, "none"),
        ("m.yaml", "kc", False, "--manifests, --kubeconfig"),
        (None, "kc", True, "--kubeconfig, --in-cluster"),
        ("m.yaml", "kc", True, "--manifests, --kubeconfig, --in-cluster"),
    ],
)
def test_not_exactly_one_source_is_a_usage_error(manifests, kubeconfig, in_cluster, named):
    with pytest.raises(SourceChoiceError, match=f"exactly one.*got {named}"):
        source_from_options(manifests, kubeconfig, in_cluster, KINDS)
    assert issubclass(SourceChoiceError, ValueError)
    assert issubclass(SourceChoiceError, click.UsageError)


def test_manifests_give_the_manifest_source(tmp_path):
    source = source_from_options(str(tmp_path), None, False, KINDS)
    assert isinstance(source, ManifestSource)


def test_kubeconfig_gives_the_api_source(kubeconfig):
    source = source_from_options(None, kubeconfig, False, {"Service"})
    assert isinstance(source, KubeApiSource) and source.kinds == {"Service"}


def test_missing_or_broken_kubeconfig_says_which_and_why(tmp_path):
    with pytest.raises(SourceChoiceError, match=r"--kubeconfig .*nope: no such file"):
        source_from_options(None, str(tmp_path / "nope"), False, KINDS)
    broken = tmp_path / "kc"
    broken.write_text("apiVersion: v1\nkind: Config\ncurrent-context: missing\n")
    with pytest.raises(SourceChoiceError, match=f"--kubeconfig {broken}"):
        source_from_options(None, str(broken), False, KINDS)


def test_in_cluster_outside_a_pod_says_why(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(SourceChoiceError, match=r"--in-cluster: \S"):
        source_from_options(None, None, True, KINDS)


def test_click_options_reach_the_command(tmp_path, kubeconfig):
    seen = {}

    @click.command()
    @click.option("--manifests")
    @source_options
    def run(manifests, kubeconfig, in_cluster):
        seen["source"] = source_from_options(manifests, kubeconfig, in_cluster, KINDS)

    runner = CliRunner()
    result = runner.invoke(run, ["--kubeconfig", kubeconfig])
    assert result.exit_code == 0, result.output
    assert isinstance(seen["source"], KubeApiSource)
    result = runner.invoke(run, ["--kubeconfig", kubeconfig, "--manifests", str(tmp_path)])
    assert result.exit_code == 2 and "exactly one object source" in result.output
    assert "--in-cluster" in runner.invoke(run, ["--help"]).output
