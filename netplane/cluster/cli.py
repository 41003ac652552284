"""kubectl-shaped commands for the emulated cluster: `netplane up`, `get pods`, `exec`, ...

The course's commands carry over by replacing `kubectl` with `netplane`. Every command
talks to the cluster's supervisor through its state directory (`--state-dir`, default
/run/netplane/<cluster>/); `--cluster` names the cluster (default `netplane`).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import click
import yaml

from netplane.cluster import api, tables
from netplane.cluster.store import StateDir, read_json

ALIASES = {
    "pods": "Pod",
    "pod": "Pod",
    "po": "Pod",
    "services": "Service",
    "service": "Service",
    "svc": "Service",
    "deployments": "Deployment",
    "deployment": "Deployment",
    "deploy": "Deployment",
    "endpointslices": "EndpointSlice",
    "endpointslice": "EndpointSlice",
    "nodes": "Node",
    "node": "Node",
    "no": "Node",
    "endpoints": "Endpoints",
    "ep": "Endpoints",
}
PLURAL = {
    "Pod": "pods",
    "Service": "services",
    "Deployment": "deployments",
    "EndpointSlice": "endpointslices",
    "Node": "nodes",
    "Endpoints": "endpoints",
}
API_GROUP = {"Deployment": "deployment.apps", "EndpointSlice": "endpointslice.discovery.k8s.io"}


def cluster_options(f):
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
    def wrapper(cluster: str, state_dir: str | None, **kw):
        state = api.resolve_state(cluster, state_dir)
        try:
            return f(state=state, cluster=cluster, **kw)
        except api.NotRunning as e:
            raise click.ClickException(str(e)) from None

    return wrapper


def _kind(word: str) -> str:
    kind = ALIASES.get(word.lower())
    if kind is None:
        raise click.UsageError(
            f'the server doesn\'t have a resource type "{word}" '
            f"(known: pods, services, deployments, endpointslices, endpoints, nodes)"
        )
    return kind


def _name_of(kind: str, name: str) -> str:
    return f"{API_GROUP.get(kind, kind.lower())}/{name}"


def _load(path: str) -> list[dict]:
    """Manifests from a file, a directory or `-` (stdin), as plain documents."""
    from netplane.model import manifest_files

    texts = []
    if path == "-":
        texts.append(("<stdin>", sys.stdin.read()))
    else:
        if not Path(path).exists():
            raise click.ClickException(f'the path "{path}" does not exist')
        texts += [(str(f), f.read_text()) for f in manifest_files(path)]
    docs = []
    for source, text in texts:
        try:
            loaded = (
                [json.loads(text)]
                if text.lstrip().startswith("{")
                else list(yaml.safe_load_all(text))
            )
        except (yaml.YAMLError, ValueError) as e:
            raise click.ClickException(f"{source}: not valid YAML/JSON: {e}") from None
        for d in loaded:
            if isinstance(d, dict) and str(d.get("kind", "")).endswith("List"):
                docs.extend(d.get("items") or [])
            elif d is not None:
                docs.append(d)
    for i, d in enumerate(docs):
        if not isinstance(d, dict):
            raise click.ClickException(f"{path}: document {i + 1} is not a Kubernetes object")
    return docs


def _report(results: list[dict], verb: str | None = None) -> None:
    failed = False
    for r in results:
        kind, _, name = r["key"]
        if "error" in r:
            failed = True
            what = "" if f'"{name}"' in r["error"] else f'{PLURAL.get(kind, kind)} "{name}": '
            click.echo(f"Error from server: {what}{r['error']}", err=True)
        else:
            click.echo(f"{_name_of(kind, name)} {verb or r['action']}")
    if failed:
        sys.exit(1)


# -- up / down -------------------------------------------------------------------------------


@click.command()
@cluster_options
@click.option(
    "--nodes",
    default=None,
    help="Node count or comma-separated names [default: the lab's pi-red,pi-black].",
)
@click.option("-f", "--filename", "manifests", default=None, help="Manifests to apply once up.")
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
    state: StateDir, cluster: str, nodes: str | None, manifests: str | None, cni: str, wait: float
) -> None:
    """Create the emulated cluster (idempotent: an existing one is reused)."""
    from netplane.cluster.launch import ensure_up

    ensure_up(state, cluster, nodes, cni, wait, _load(manifests) if manifests else [])


@click.command()
@cluster_options
def down(state: StateDir, cluster: str) -> None:
    """Delete the cluster: every namespace, interface, rule, file and process it made."""
    from netplane.cluster.launch import teardown

    topo = read_json(state.path / "topology.json", {})
    click.echo(f'Deleting cluster "{topo.get("cluster", cluster)}" ...')
    removed = teardown(state)
    click.echo(f"Deleted {removed} network namespaces; state directory {state.path} removed.")


# -- objects ---------------------------------------------------------------------------------


@click.command()
@cluster_options
@click.option("-f", "--filename", "path", required=True, help="File, directory or - (stdin).")
@click.option("-n", "--namespace", default=None)
def apply(state: StateDir, cluster: str, path: str, namespace: str | None) -> None:
    """Create or update objects from manifests."""
    docs = _load(path)
    if namespace:
        for d in docs:
            d.setdefault("metadata", {}).setdefault("namespace", namespace)
    _report(api.call(state, {"op": "apply", "objects": docs})["results"])


def _wait_gone(state: StateDir, results: list[dict], timeout: float = 30) -> None:
    pods = [r for r in results if r["key"][0] == "Pod" and "error" not in r]
    deadline = time.monotonic() + timeout
    while pods and time.monotonic() < deadline:
        items = api.call(state, {"op": "get", "kind": "Pod"})["items"]
        uids = {p["metadata"]["uid"] for p in items}
        pods = [r for r in pods if r.get("uid") in uids]
        time.sleep(0.05)


@click.command()
@cluster_options
@click.argument("args", nargs=-1)
@click.option("-f", "--filename", "path", default=None)
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option(
    "--wait/--no-wait", default=True, show_default=True, help="Wait for deleted pods to be gone."
)
def delete(
    state: StateDir,
    cluster: str,
    args: tuple[str, ...],
    path: str | None,
    namespace: str,
    wait: bool,
) -> None:
    """Delete objects: `delete -f FILE`, `delete TYPE NAME...` or `delete TYPE/NAME`."""
    if path:
        from netplane.cluster.admission import object_key

        keys = [object_key(d) for d in _load(path)]
    else:
        keys = []
        if args and "/" in args[0]:
            keys = [(_kind(a.split("/")[0]), namespace, a.split("/", 1)[1]) for a in args]
        elif len(args) >= 2:
            kind = _kind(args[0])
            keys = [(kind, "" if kind == "Node" else namespace, n) for n in args[1:]]
        else:
            raise click.UsageError("say what to delete: -f FILE, TYPE NAME or TYPE/NAME")
    results = api.call(state, {"op": "delete", "keys": keys})["results"]
    for r in results:
        if r.get("error") == "NotFound":
            kind, ns, name = r["key"]
            r["error"] = f'{PLURAL.get(kind, kind)} "{name}" not found' + (
                f' in namespace "{ns}"' if ns else ""
            )
    if wait:
        _wait_gone(state, results)
    _report(results, "deleted")


@click.command()
@cluster_options
@click.argument("what")
@click.argument("names", nargs=-1)
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("-A", "--all-namespaces", is_flag=True)
@click.option("-o", "--output", type=click.Choice(["wide", "yaml", "json", "name"]), default=None)
def get(
    state: StateDir,
    cluster: str,
    what: str,
    names: tuple[str, ...],
    namespace: str,
    all_namespaces: bool,
    output: str | None,
) -> None:
    """List objects as kubectl does: get nodes|pods|svc|endpointslices|deployments|endpoints."""
    kinds = [_kind(w) for w in what.split(",")]
    if "/" in what:
        kinds, names = [_kind(what.split("/")[0])], (what.split("/", 1)[1], *names)
    ns = None if all_namespaces else namespace
    for i, kind in enumerate(kinds):
        if i:
            click.echo()
        _get_one(state, kind, names, ns, output)


def _items(state: StateDir, kind: str, ns: str | None) -> list[dict]:
    source = "EndpointSlice" if kind == "Endpoints" else kind
    items = api.call(
        state, {"op": "get", "kind": source, "namespace": None if kind == "Node" else ns}
    )["items"]
    return sorted(items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))


def _get_one(state, kind: str, names: tuple[str, ...], ns: str | None, output: str | None) -> None:
    items = _items(state, kind, ns)
    if names and kind != "Endpoints":  # endpoints are filtered by service below
        by_name = {o["metadata"]["name"]: o for o in items}
        missing = [n for n in names if n not in by_name]
        if missing:
            where = f' in namespace "{ns}"' if ns and kind != "Node" else ""
            raise click.ClickException(f'{PLURAL[kind]} "{missing[0]}" not found{where}')
        items = [by_name[n] for n in names if n in by_name]
    if output in ("yaml", "json"):
        doc = (
            items[0]
            if len(items) == 1 and names
            else {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {}}
        )
        click.echo(
            json.dumps(doc, indent=4)
            if output == "json"
            else yaml.safe_dump(doc, sort_keys=True).rstrip()
        )
        return
    if output == "name":
        for o in items:
            click.echo(_name_of(kind, o["metadata"]["name"]))
        return
    if not items and kind != "Endpoints":
        click.echo(
            f"No resources found in {ns} namespace."
            if ns and kind != "Node"
            else "No resources found",
            err=True,
        )
        return
    wide, all_ns = output == "wide", ns is None and kind != "Node"
    if kind == "Pod":
        rows = tables.pods_table(items, wide, all_ns)
    elif kind == "Service":
        rows = tables.services_table(items, wide, all_ns)
    elif kind == "EndpointSlice":
        rows = tables.slices_table(items, wide, all_ns)
    elif kind == "Endpoints":
        rows = tables.endpoints_table(items, all_ns)
        if names:
            rows = [rows[0]] + [r for r in rows[1:] if r[-3] in names]
    elif kind == "Deployment":
        rows = tables.deployments_table(items, _items(state, "Pod", ns), wide, all_ns)
    else:
        rows = tables.nodes_table(items, wide, platform.release())
    click.echo(tables.render(rows))


@click.command()
@cluster_options
@click.argument("what")
@click.argument("name", required=False)
@click.option("-n", "--namespace", default="default", show_default=True)
def describe(state: StateDir, cluster: str, what: str, name: str | None, namespace: str) -> None:
    """Show one object in detail (key fields, then the full object)."""
    if "/" in what:
        what, name = what.split("/", 1)
    kind = _kind(what)
    items = _items(state, kind, namespace)
    items = [o for o in items if name is None or o["metadata"]["name"] == name]
    if not items:
        raise click.ClickException(f'{PLURAL[kind]} "{name}" not found')
    from netplane.cluster.describe import describe as render

    click.echo(
        "\n\n".join(render(kind, o, _items(state, "EndpointSlice", namespace)) for o in items)
    )


# -- imperative helpers ----------------------------------------------------------------------


@click.group()
def create() -> None:
    """Create an object from the command line."""


@create.command("deployment")
@cluster_options
@click.argument("name")
@click.option("--image", required=True)
@click.option("--replicas", type=int, default=1, show_default=True)
@click.option("--port", type=int, default=0, help="The container port to expose.")
@click.option("-n", "--namespace", default="default", show_default=True)
def create_deployment(
    state: StateDir, cluster: str, name: str, image: str, replicas: int, port: int, namespace: str
) -> None:
    """`kubectl create deployment NAME --image=IMAGE`."""
    from netplane.cluster.workloads import deployment_manifest

    body = deployment_manifest(name, image, replicas, namespace, port)
    results = api.call(state, {"op": "apply", "objects": [body]})["results"]
    if results[0].get("action") in ("configured", "unchanged"):
        raise click.ClickException(f'deployments.apps "{name}" already exists')
    _report(results)


@click.command()
@cluster_options
@click.argument("what")
@click.argument("name", required=False)
@click.option("--port", type=int, required=True)
@click.option("--target-port", default=None)
@click.option(
    "--type",
    "svc_type",
    type=click.Choice(["ClusterIP", "NodePort", "LoadBalancer"]),
    default="ClusterIP",
    show_default=True,
)
@click.option("--name", "svc_name", default=None, help="Service name [default: the object's].")
@click.option("--protocol", type=click.Choice(["TCP", "UDP"]), default="TCP", show_default=True)
@click.option("-n", "--namespace", default="default", show_default=True)
def expose(
    state: StateDir,
    cluster: str,
    what: str,
    name: str | None,
    port: int,
    target_port: str | None,
    svc_type: str,
    svc_name: str | None,
    protocol: str,
    namespace: str,
) -> None:
    """`kubectl expose deployment NAME --port=P [--target-port=T] [--type=...]`."""
    from netplane.cluster.workloads import service_manifest

    if "/" in what:
        what, name = what.split("/", 1)
    kind = _kind(what)
    if kind not in ("Deployment", "Pod", "Service") or not name:
        raise click.UsageError("expose deployment NAME, pod NAME or service NAME")
    found = api.call(state, {"op": "get", "kind": kind, "namespace": namespace, "name": name})
    if not found["items"]:
        raise click.ClickException(f'{PLURAL[kind]} "{name}" not found')
    obj = found["items"][0]
    if kind == "Deployment":
        selector = obj["spec"]["selector"]["matchLabels"]
    elif kind == "Pod":
        selector = obj["metadata"].get("labels") or {}
    else:
        selector = obj["spec"].get("selector") or {}
    target = int(target_port) if target_port and target_port.isdigit() else target_port
    body = service_manifest(svc_name or name, namespace, selector, port, target, svc_type, protocol)
    results = api.call(state, {"op": "apply", "objects": [body]})["results"]
    if results[0].get("action") in ("configured", "unchanged"):
        raise click.ClickException(f'services "{svc_name or name}" already exists')
    _report(results, "exposed")


@click.command()
@cluster_options
@click.argument("what")
@click.argument("name", required=False)
@click.option("--replicas", type=int, required=True)
@click.option("-n", "--namespace", default="default", show_default=True)
def scale(
    state: StateDir, cluster: str, what: str, name: str | None, replicas: int, namespace: str
) -> None:
    """`kubectl scale deployment NAME --replicas=N`."""
    if "/" in what:
        what, name = what.split("/", 1)
    if _kind(what) != "Deployment" or not name:
        raise click.UsageError("scale deployment NAME --replicas=N")
    found = api.call(
        state, {"op": "get", "kind": "Deployment", "namespace": namespace, "name": name}
    )["items"]
    if not found:
        raise click.ClickException(f'deployments.apps "{name}" not found')
    body = found[0]
    body["spec"]["replicas"] = replicas
    results = api.call(state, {"op": "apply", "objects": [body]})["results"]
    _report(results, "scaled")


@click.command()
@cluster_options
@click.argument("name")
@click.option("--image", required=True)
@click.option("--port", type=int, default=0)
@click.option("-n", "--namespace", default="default", show_default=True)
def run(state: StateDir, cluster: str, name: str, image: str, port: int, namespace: str) -> None:
    """`kubectl run NAME --image=IMAGE`: one bare pod (its command is not executed)."""
    from netplane.cluster.workloads import pod_manifest

    body = pod_manifest(name, image, namespace, port)
    results = api.call(state, {"op": "apply", "objects": [body]})
    if results["results"][0].get("action") in ("configured", "unchanged"):
        raise click.ClickException(f'pods "{name}" already exists')
    _report(results["results"])


@click.command("exec", context_settings={"ignore_unknown_options": True})
@cluster_options
@click.argument("pod", required=False)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("--node", default=None, help="Run on this node instead of in a pod.")
@click.option("--outside", is_flag=True, help="Run on the laptop outside the cluster.")
@click.option("-i", "--stdin", "interactive", is_flag=True, help="Accepted for kubectl's -it.")
@click.option("-t", "--tty", is_flag=True, help="Accepted for kubectl's -it.")
def exec_(
    state: StateDir,
    cluster: str,
    pod: str | None,
    command: tuple[str, ...],
    namespace: str,
    node: str | None,
    outside: bool,
    interactive: bool,
    tty: bool,
) -> None:
    """Run COMMAND in a pod's network namespace (with its resolv.conf and service
    environment), on a node (--node) or on the laptop (--outside):
    `netplane exec POD -- curl -s blue`."""
    from netplane.cluster.topology import Topology

    topo_json = read_json(state.path / "topology.json", None)
    if topo_json is None:
        raise api.NotRunning(f"no cluster at {state.path}: start one with `netplane up`")
    topo = Topology.from_json(topo_json)
    env = dict(os.environ)
    if (outside or node) and pod:  # no pod: the first word is the command's
        command = (pod, *command)
    if not command:
        raise click.UsageError("say what to run after --, e.g. `exec POD -- curl -s blue`")
    if outside:
        netns = topo.laptop_ns
    elif node:
        try:
            netns = topo.node_ns(topo.node(node).name)
        except KeyError as e:
            raise click.ClickException(str(e.args[0])) from None
    elif pod:
        info = api.call(state, {"op": "exec-info", "namespace": namespace, "name": pod})
        if "error" in info:
            raise click.ClickException(info["error"])
        netns = info["netns"]
        env.update(info["env"])
        env["HOSTNAME"] = pod
    else:
        raise click.UsageError("exec POD -- CMD, exec --node NODE -- CMD or exec --outside -- CMD")
    proc = subprocess.run(["ip", "netns", "exec", netns, *command], env=env)
    sys.exit(proc.returncode)
