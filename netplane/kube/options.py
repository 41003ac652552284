"""Choosing the object source from command-line options (shared by proxy and DNS)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from netplane.sources import ManifestSource, Source

if TYPE_CHECKING:  # the client costs ~0.3 s to import: only where it is used
    from kubernetes.client import ApiClient

    from netplane.kube.source import Codec, Resource, Tuning


class SourceChoiceError(click.UsageError, ValueError):
    """Not exactly one source was given, or the one given cannot be used.

    A `click.UsageError`, so a command shows it as a usage error, and a `ValueError` for
    callers outside click.
    """


def source_options(command: Callable) -> Callable:
    """Adds `--kubeconfig PATH` and `--in-cluster` to a click command."""
    command = click.option(
        "--in-cluster",
        is_flag=True,
        help="Watch the API server with the pod's service account (mutually exclusive "
        "with --manifests and --kubeconfig).",
    )(command)
    return click.option(
        "--kubeconfig",
        type=click.Path(dir_okay=False),
        default=None,
        help="Watch the API server described by this kubeconfig file (mutually exclusive "
        "with --manifests and --in-cluster).",
    )(command)


def source_from_options(
    manifests: str | None,
    kubeconfig: str | None,
    in_cluster: bool,
    kinds: set[str],
    codec: Callable[[Resource], Codec] | None = None,
    tuning: Tuning | None = None,
) -> Source:
    """The one source the options ask for; `kinds` are the API kinds the caller needs.

    CODEC: a consumer's own decoding of the API's JSON (`netplane.kube.source.Codec`); the
    API is then read through `netplane.kube.transport`, without importing the official
    client (~0.5 s of CPU). Without one: the full object model, through the client.

    Raises `SourceChoiceError` when not exactly one of them is given or the kubeconfig /
    service account cannot be loaded, with a message that says which and why.
    """
    given = [
        name
        for name, value in (
            ("--manifests", manifests),
            ("--kubeconfig", kubeconfig),
            ("--in-cluster", in_cluster),
        )
        if value
    ]
    if len(given) != 1:
        raise SourceChoiceError(
            "give exactly one object source: --manifests PATH, --kubeconfig PATH or "
            f"--in-cluster (got {', '.join(given) if given else 'none'})"
        )
    if manifests:
        return ManifestSource(manifests)
    from netplane.kube.source import KubeApiSource, Tuning

    if codec is not None:
        from netplane.kube.transport import ConfigError, HttpTransport, load_config

        try:
            transport = HttpTransport(load_config(kubeconfig, in_cluster))
        except ConfigError as e:
            raise SourceChoiceError(str(e)) from e
        return KubeApiSource(transport, kinds, tuning or Tuning(), codec)
    client = api_client(kubeconfig=kubeconfig, in_cluster=in_cluster)  # imports it: ~0.5 s
    return KubeApiSource(client, kinds, tuning or Tuning())


def api_client(kubeconfig: str | None = None, in_cluster: bool = False) -> ApiClient:
    """A `kubernetes.client.ApiClient` for a kubeconfig file or the pod's service account."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        if in_cluster:
            config.load_incluster_config(client_configuration=configuration)
        else:
            if not kubeconfig or not os.path.isfile(kubeconfig):
                raise SourceChoiceError(f"--kubeconfig {kubeconfig}: no such file")
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    except config.ConfigException as e:
        where = "--in-cluster" if in_cluster else f"--kubeconfig {kubeconfig}"
        raise SourceChoiceError(f"{where}: {e}") from e
    configuration.retries = False  # our reflectors back off themselves
    return client.ApiClient(configuration)
