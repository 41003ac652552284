"""kubectl-shaped commands for the emulated cluster: `netplane up`, `apply`, `delete`, ...

The course's commands carry over by replacing `kubectl` with `netplane`. Every command
talks to the cluster's daemon through its state directory (`--state-dir`, default
/run/netplane/<cluster>/); `--cluster` names the cluster (default `netplane`). Reading
commands live in get.py, imperative ones in imperative.py, pod access in pods.py.
"""

from __future__ import annotations

import functools
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from netplane.cluster.client import api, manifests
from netplane.cluster.client.kinds import (
    CLUSTER_SCOPED,
    KubectlError,
    error_text,
    kind_of,
    name_of,
    report,
)
from netplane.cluster.statedir import StateDir, read_json


class KubectlCommand(click.Command):
    """Takes Go's `--flag=true|false` for boolean flags (`delete --wait=false`,
    `label --overwrite=true`), as kubectl's flag parser does; click alone refuses them."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        flags: dict[str, tuple[click.Option, bool]] = {}
        for p in self.params:
            if isinstance(p, click.Option) and p.is_flag:
                flags.update({o: (p, True) for o in p.opts})
                flags.update({o: (p, False) for o in p.secondary_opts})
        out, rest = [], list(args)
        while rest and rest[0] != "--":
            arg = rest.pop(0)
            name, eq, value = arg.partition("=")
            if eq and name in flags and value.lower() in ("true", "false"):
                param, positive = flags[name]
                if (value.lower() == "true") == positive:
                    out.append(param.opts[0])
                elif param.secondary_opts:
                    out.append(param.secondary_opts[0])
                continue  # a plain flag set to false: its default
            out.append(arg)
        return super().parse_args(ctx, out + rest)


class GoDuration(click.ParamType):
    """A Go duration as kubectl takes it (`60s`, `5m`, `1m30s`, `500ms`, a bare number of
    seconds), in seconds."""

    name = "duration"
    _UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        text = str(value).strip()
        try:
            return float(text)
        except ValueError:
            pass
        parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
        if not parts or "".join(n + u for n, u in parts) != text:
            self.fail(f'invalid duration "{text}" (e.g. 30s, 5m, 1m30s)', param, ctx)
        return sum(float(n) * self._UNITS[u] for n, u in parts)


class KubectlGroup(click.Group):
    command_class = KubectlCommand


def cluster_options(f: Callable[..., None]) -> Callable[..., None]:
    @click.option(
        "--cluster",
        default="netplane",
        envvar="NETPLANE_CLUSTER",
        show_default=True,
        help="Cluster name [env NETPLANE_CLUSTER].",
    )
    @click.option(
        "--state-dir",
        default=None,
        envvar="NETPLANE_STATE_DIR",
        help="State directory [default /run/netplane/<cluster>].",
    )
    @functools.wraps(f)
    def wrapper(cluster: str, state_dir: str | None, **kw: Any) -> None:
        state = api.resolve_state(cluster, state_dir)
        try:
            return f(state=state, cluster=cluster, **kw)
        except api.NotRunning as e:
            raise KubectlError(f"error: {e}") from None
        except click.UsageError:
            raise
        except click.ClickException as e:
            if isinstance(e, KubectlError):
                raise
            raise KubectlError(f"error: {e.message}") from None

    return wrapper


def namespace_option(f: Callable[..., None]) -> Callable[..., None]:
    return click.option("-n", "--namespace", default="default", show_default=True)(f)


def targets(args: tuple[str, ...], namespace: str) -> list[tuple[str, str, str]]:
    """`TYPE NAME...`, `TYPE/NAME...` or `TYPE1,TYPE2 NAME` -> object keys."""
    if args and "/" in args[0]:
        keys = []
        for a in args:
            word, _, name = a.partition("/")
            kind = kind_of(word)
            keys.append((kind, "" if kind in CLUSTER_SCOPED else namespace, name))
        return keys
    if len(args) >= 2:
        kind = kind_of(args[0])
        return [(kind, "" if kind in CLUSTER_SCOPED else namespace, n) for n in args[1:]]
    raise click.UsageError("say what: TYPE NAME, TYPE/NAME or -f FILE")


# -- up / down -------------------------------------------------------------------------------


@click.command(cls=KubectlCommand)
@cluster_options
@click.option(
    "--nodes",
    default=None,
    help="Node count or comma-separated names [default: the lab's pi-red,pi-black].",
)
@click.option("-f", "--filename", "path", default=None, help="Manifests to apply once up.")
@click.option(
    "--cni",
    type=click.Choice(["auto", "netplane", "reference"]),
    default="auto",
    show_default=True,
    help="Pod network plugins: netplane-bridge or the reference "
    "bridge/host-local (auto: ours when it answers).",
)
@click.option(
    "--wait",
    "wait",
    type=float,
    default=120,
    show_default=True,
    help="Seconds to wait for every pod to be ready.",
)
def up(
    state: StateDir, cluster: str, nodes: str | None, path: str | None, cni: str, wait: float
) -> None:
    """Create the emulated cluster (idempotent: an existing one is reused)."""
    from netplane.cluster.client.launch import ensure_up

    docs = [d.body for d in manifests.read(path)] if path else []
    ensure_up(state, cluster, nodes, cni, wait, docs)


@click.command(cls=KubectlCommand)
@cluster_options
def down(state: StateDir, cluster: str) -> None:
    """Delete the cluster: every namespace, interface, rule, file and process it made."""
    from netplane.cluster.client.launch import teardown

    topo = read_json(state.path / "topology.json", {})
    click.echo(f'Deleting cluster "{topo.get("cluster", cluster)}" ...')
    removed = teardown(state)
    click.echo(f"Deleted {removed} network namespaces; state directory {state.path} removed.")


# -- apply / delete --------------------------------------------------------------------------


def send_documents(state: StateDir, docs: list, op: str, namespace: str | None) -> list[dict]:
    """Send the documents of `-f`; errors name the file (and the document in a multi-document
    file) they came from."""
    bodies = []
    for d in docs:
        if namespace:
            d.body.setdefault("metadata", {}).setdefault("namespace", namespace)
        bodies.append(d.body)
    results = api.call(state, {"op": op, "objects": bodies})["results"]
    per_file: dict[str, int] = {}
    for d in docs:
        per_file[d.source] = per_file.get(d.source, 0) + 1
    for d, r in zip(docs, results, strict=True):
        if "error" in r:
            r["source"] = d.source
            if per_file[d.source] > 1:
                r["error"] = f"document {d.number}: {r['error']}"
    return results


@click.command(cls=KubectlCommand)
@cluster_options
@click.option("-f", "--filename", "path", required=True, help="File, directory or - (stdin).")
@click.option("-n", "--namespace", default=None)
@click.option("--dry-run", type=click.Choice(["none", "client", "server"]), default="none")
def apply(state: StateDir, cluster: str, path: str, namespace: str | None, dry_run: str) -> None:
    """Create or update objects from manifests."""
    docs = manifests.read(path, "apply")
    if dry_run != "none":
        bodies = [d.body for d in docs]
        results = api.call(state, {"op": "apply", "objects": bodies, "dryRun": True})["results"]
        report(results, dry_run=True)
        return
    report(send_documents(state, docs, "apply", namespace))


def wait_gone(state: StateDir, results: list[dict], timeout: float = 60) -> None:
    waiting = [r for r in results if r["key"][0] in ("Pod", "Namespace") and "error" not in r]
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        uids = set()
        for kind in {r["key"][0] for r in waiting}:
            items = api.call(state, {"op": "get", "kind": kind})["items"]
            uids |= {o["metadata"]["uid"] for o in items}
        waiting = [r for r in waiting if r.get("uid") in uids]
        time.sleep(0.05)


@click.command(cls=KubectlCommand)
@cluster_options
@click.argument("args", nargs=-1)
@click.option("-f", "--filename", "path", default=None)
@namespace_option
@click.option("-l", "--selector", default=None, help="Delete what has these labels.")
@click.option("--all", "all_", is_flag=True, help="Delete every object of the type(s).")
@click.option("--ignore-not-found", is_flag=True)
@click.option(
    "--wait/--no-wait", default=True, show_default=True, help="Wait for deleted pods to be gone."
)
@click.option("--now", is_flag=True, help="Accepted for kubectl's --now.")
@click.option("--force", is_flag=True, help="Accepted for kubectl's --force.")
@click.option("--grace-period", type=int, default=None, help="Accepted for kubectl's flag.")
def delete(
    state: StateDir,
    cluster: str,
    args: tuple[str, ...],
    path: str | None,
    namespace: str,
    selector: str | None,
    all_: bool,
    ignore_not_found: bool,
    wait: bool,
    now: bool,
    force: bool,
    grace_period: int | None,
) -> None:
    """Delete objects: `delete -f FILE`, `delete TYPE NAME...`, `delete TYPE/NAME`,
    `delete TYPE -l app=blue`, `delete TYPE --all`."""
    from netplane.cluster.control.admission import object_key

    if path:
        keys = [object_key(d.body) for d in manifests.read(path, "delete")]
    elif args and (selector or all_) and "/" not in args[0] and len(args) == 1:
        keys = []
        for word in args[0].split(","):
            kind = kind_of(word)
            found = api.call(state, {"op": "get", "kind": kind,
                                     "namespace": None if kind in CLUSTER_SCOPED else namespace,
                                     "selector": selector})  # fmt: skip
            if "error" in found:
                raise click.ClickException(found["error"])
            keys += sorted((kind, o["metadata"].get("namespace", ""), o["metadata"]["name"])
                           for o in found["items"])  # fmt: skip
        if not keys:
            click.echo("No resources found", err=True)
            return
    else:
        keys = targets(args, namespace)
    results = api.call(state, {"op": "delete", "keys": keys})["results"]
    if ignore_not_found:
        results = [r for r in results if r.get("error") != "NotFound"]
    if wait:
        wait_gone(state, results)
    report(results, "deleted")


def fail(result: dict) -> None:
    click.echo(error_text(result), err=True)
    sys.exit(1)


__all__ = ["apply", "cluster_options", "delete", "down", "fail", "name_of", "up"]
