"""Commands learners type around the others: `wait`, `version`, `cluster-info`."""

from __future__ import annotations

import time

import click

from netplane.cluster.client import api
from netplane.cluster.client.cli import (
    GoDuration,
    KubectlCommand,
    cluster_options,
    namespace_option,
    targets,
)
from netplane.cluster.client.kinds import CLUSTER_SCOPED, kind_of, name_of, not_found, resource
from netplane.cluster.client.output import TemplateError, jsonpath
from netplane.cluster.statedir import StateDir, read_json

SERVER_VERSION = "v1.33.2"


def _met(obj: dict, condition: str) -> bool:
    """`condition=Ready` (status True), `condition=Ready=false`, `jsonpath={...}=VALUE`."""
    kind, _, rest = condition.partition("=")
    if kind == "condition":
        name, _, want = rest.partition("=")
        want = want or "true"
        return any(
            c.get("type", "").lower() == name.lower()
            and str(c.get("status", "")).lower() == want.lower()
            for c in (obj.get("status") or {}).get("conditions") or []
        )
    if kind == "jsonpath":
        expr, _, want = rest.rpartition("=")
        expr = expr.strip("'\"")
        try:
            return jsonpath(expr, obj) == want.strip("'\"")
        except TemplateError as e:
            raise click.ClickException(f"unable to parse the jsonpath {expr!r}: {e}") from None
    raise click.UsageError(f"unrecognized condition: {condition!r}")


@click.command(cls=KubectlCommand)
@cluster_options
@click.argument("args", nargs=-1, required=True)
@namespace_option
@click.option("--for", "condition", required=True,
              help="delete | condition=NAME[=VALUE] | jsonpath={.path}=VALUE")  # fmt: skip
@click.option("-l", "--selector", default=None)
@click.option("--all", "all_", is_flag=True)
@click.option("--timeout", type=GoDuration(), default="30s", show_default=True)
def wait(state: StateDir, cluster: str, args: tuple[str, ...], namespace: str, condition: str,
         selector: str | None, all_: bool, timeout: float) -> None:  # fmt: skip
    """`kubectl wait --for=condition=Ready pod -l app=blue`: until each object meets the
    condition (or is deleted, `--for=delete`)."""
    if (selector or all_) and len(args) == 1 and "/" not in args[0]:
        kind = kind_of(args[0])
        ns = "" if kind in CLUSTER_SCOPED else namespace
        found = api.call(state, {"op": "get", "kind": kind, "namespace": ns,
                                 "selector": selector})["items"]  # fmt: skip
        keys = sorted((kind, ns, o["metadata"]["name"]) for o in found)  # the API's list order
        if not keys:
            raise click.ClickException("no matching resources found")
    else:
        keys = targets(args, namespace)
    deadline = time.monotonic() + timeout
    for kind, ns, name in keys:
        while True:
            found = api.call(state, {"op": "get", "kind": kind, "namespace": ns,
                                     "name": name})["items"]  # fmt: skip
            if condition == "delete":
                if not found:
                    break
            elif not found:
                raise not_found(kind, name)
            elif _met(found[0], condition):
                break
            if time.monotonic() > deadline:
                raise click.ClickException(
                    f"timed out waiting for the condition on {resource(kind)}/{name}"
                )
            time.sleep(0.2)
        click.echo(f"{name_of(kind, name)} condition met")


@click.command(cls=KubectlCommand)
@cluster_options
@click.option("--client", is_flag=True, help="Only the client's version.")
def version(state: StateDir, cluster: str, client: bool) -> None:
    """`kubectl version`: the emulated kubectl's and the cluster's Kubernetes version."""
    click.echo(f"Client Version: {SERVER_VERSION}")
    if not client:
        api.call(state, {"op": "status"})  # a cluster must be running, as kubectl needs one
        click.echo(f"Server Version: {SERVER_VERSION}")


@click.command("cluster-info", cls=KubectlCommand)
@cluster_options
def cluster_info(state: StateDir, cluster: str) -> None:
    """`kubectl cluster-info`: where the control plane and cluster DNS are."""
    api.call(state, {"op": "status"})
    topo = read_json(state.path / "topology.json", {})
    ip = topo["nodes"][0][1] if topo.get("nodes") else "192.168.0.152"
    base = f"https://{ip}:6443"
    click.echo(f"Kubernetes control plane is running at {base}")
    click.echo(
        f"CoreDNS is running at {base}/api/v1/namespaces/kube-system/services/kube-dns:dns/proxy"
    )
    click.echo("\nTo further debug and diagnose cluster problems, use 'netplane get events -A'.")
