"""`netplane get` and `describe`: tables, label selectors and columns, templates, watch."""

from __future__ import annotations

import json
import time

import click
import yaml

from netplane.cluster.client import api, tables
from netplane.cluster.client.cli import cluster_options, namespace_option
from netplane.cluster.client.kinds import ALL, CLUSTER_SCOPED, PLURAL, kind_of, name_of, resource
from netplane.cluster.client.output import TemplateError, custom_columns, go_template, jsonpath
from netplane.cluster.statedir import StateDir


def fetch(
    state: StateDir, kind: str, ns: str | None, selector: str | None = None, name: str | None = None
) -> list[dict]:
    source = "EndpointSlice" if kind == "Endpoints" else kind
    reply = api.call(state, {"op": "get", "kind": source,
                             "namespace": None if kind in CLUSTER_SCOPED else ns,
                             "selector": selector, "name": name})  # fmt: skip
    if "error" in reply:
        raise click.ClickException(reply["error"])
    return sorted(
        reply["items"], key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])
    )


def render(
    kind: str, items: list[dict], output: str | None, all_ns: bool, show_labels: bool,
    label_columns: list[str], headers: bool = True, prefix_kind: bool = False,
) -> str:  # fmt: skip
    if output and output.startswith(("jsonpath=", "jsonpath-as-json=", "go-template=",
                                     "custom-columns=", "template=")):  # fmt: skip
        fmt, _, arg = output.partition("=")
        data = items[0] if len(items) == 1 and not prefix_kind else _as_list(items)
        try:
            if fmt.startswith("jsonpath"):
                return jsonpath(arg, data)
            if fmt == "custom-columns":
                return tables.render(custom_columns(arg, items, headers))
            return go_template(arg, data)
        except TemplateError as e:
            raise click.ClickException(f"error executing template: {e}") from None
    if output == "name":
        return "\n".join(name_of(kind, o["metadata"]["name"]) for o in items)
    rows = tables.TABLES[kind](items, output == "wide", all_ns)
    rows = tables.with_label_columns(rows, items, show_labels, label_columns)
    if prefix_kind:
        for row in rows[1:]:
            row[1 if all_ns else 0] = name_of(kind, row[1 if all_ns else 0])
    if not headers:
        rows = rows[1:]
    return tables.render(rows)


def _as_list(items: list[dict]) -> dict:
    return {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}


@click.command()
@cluster_options
@click.argument("args", nargs=-1)
@namespace_option
@click.option("-A", "--all-namespaces", is_flag=True)
@click.option("-o", "--output", default=None, help="wide|yaml|json|name|jsonpath=...|"
              "go-template=...|custom-columns=...")  # fmt: skip
@click.option("-l", "--selector", default=None, help="Label selector: app=blue,tier!=db.")
@click.option("--show-labels", is_flag=True)
@click.option("-L", "--label-columns", multiple=True, help="A column per label key.")
@click.option("--no-headers", is_flag=True)
@click.option("-w", "--watch", is_flag=True, help="After listing, print every change.")
@click.option("--watch-only", is_flag=True)
def get(
    state: StateDir,
    cluster: str,
    args: tuple[str, ...],
    namespace: str,
    all_namespaces: bool,
    output: str | None,
    selector: str | None,
    show_labels: bool,
    label_columns: tuple[str, ...],
    no_headers: bool,
    watch: bool,
    watch_only: bool,
) -> None:
    """List objects as kubectl does: get pods|svc|deploy|rs|ep|endpointslices|nodes|ns|
    events|all [NAME...] [-l SELECTOR] [-o FORMAT] [-w]."""
    if not args:
        raise click.UsageError("You must specify the type of resource to get.")
    what, names = args[0], list(args[1:])
    if "/" in what:
        pairs = [a.split("/", 1) for a in args]
        kinds = list(dict.fromkeys(kind_of(k) for k, _ in pairs))
        names = [n for _, n in pairs]
    else:
        kinds = []
        for word in what.split(","):
            kinds += list(ALL) if word == "all" else [kind_of(word)]
    ns = None if all_namespaces else namespace
    labels = [c for group in label_columns for c in group.split(",")]
    all_ns = ns is None
    if output in ("json", "yaml"):
        items = [o for kind in kinds for o in _select(state, kind, ns, selector, names)]
        doc = items[0] if len(items) == 1 and names and len(kinds) == 1 else _as_list(items)
        click.echo(json.dumps(doc, indent=4) if output == "json"
                   else yaml.safe_dump(doc, sort_keys=True).rstrip())  # fmt: skip
        return
    printed = False
    seen: dict[tuple, str] = {}
    for kind in kinds:
        items = _select(state, kind, ns, selector, names)
        for o in items:
            seen[(kind, o["metadata"].get("namespace", ""), o["metadata"]["name"])] = o[
                "metadata"
            ].get("resourceVersion", "")
        if not items:
            continue
        if printed and not output:
            click.echo()
        if not watch_only:
            click.echo(render(kind, items, output, all_ns and kind not in CLUSTER_SCOPED,
                              show_labels, labels, not no_headers, len(kinds) > 1))  # fmt: skip
        printed = True
    if not printed and not watch and not watch_only:
        where = f" in {ns} namespace" if ns and not set(kinds) <= set(CLUSTER_SCOPED) else ""
        click.echo(f"No resources found{where}.", err=True)
    if watch or watch_only:
        _watch(state, kinds, ns, selector, names, output, all_ns, show_labels, labels, seen)


def _select(
    state: StateDir, kind: str, ns: str | None, selector: str | None, names: list[str]
) -> list[dict]:
    items = fetch(state, kind, ns, selector)
    if kind == "Endpoints":
        items = _endpoints_as_objects(items)
    if names:
        by_name = {o["metadata"]["name"]: o for o in items}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise click.ClickException(f'{resource(kind)} "{missing[0]}" not found')
        items = [by_name[n] for n in names]
    return items


def _endpoints_as_objects(slices: list[dict]) -> list[dict]:
    """Legacy Endpoints, as the API serves them, from the service's slices."""
    by_svc: dict[tuple[str, str], dict] = {}
    for s in slices:
        meta = s["metadata"]
        svc = meta.get("labels", {}).get("kubernetes.io/service-name", "")
        if not svc:
            continue
        ep = by_svc.setdefault((meta["namespace"], svc), {
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": svc, "namespace": meta["namespace"],
                         "creationTimestamp": meta.get("creationTimestamp", ""),
                         "labels": {k: v for k, v in meta.get("labels", {}).items()
                                    if not k.startswith("endpointslice.")}},
            "subsets": [],
        })  # fmt: skip
        ready = [
            {"ip": a, **({"nodeName": e["nodeName"]} if e.get("nodeName") else {}),
             **({"targetRef": e["targetRef"]} if e.get("targetRef") else {})}
            for e in s.get("endpoints") or [] if e.get("conditions", {}).get("ready", True)
            for a in e["addresses"]
        ]  # fmt: skip
        if ready:
            ports = [{k: p[k] for k in ("name", "port", "protocol") if p.get(k) not in (None, "")}
                     for p in s.get("ports") or []]  # fmt: skip
            ep["subsets"].append({"addresses": ready, "ports": ports})
    return sorted(by_svc.values(), key=lambda o: (o["metadata"]["namespace"],
                                                  o["metadata"]["name"]))  # fmt: skip


def _watch(
    state: StateDir,
    kinds: list[str],
    ns: str | None,
    selector: str | None,
    names: list[str],
    output: str | None,
    all_ns: bool,
    show_labels: bool,
    labels: list[str],
    seen: dict[tuple, str],
) -> None:
    """Poll the store and print a row for every object whose resourceVersion changed, as
    `kubectl get -w` prints watch events (deleted objects print once more)."""
    try:
        while True:
            time.sleep(0.5)
            for kind in kinds:
                items = _select(state, kind, ns, selector, []) if not names else [
                    o for o in _select(state, kind, ns, selector, [])
                    if o["metadata"]["name"] in names
                ]  # fmt: skip
                now = {}
                for o in items:
                    key = (kind, o["metadata"].get("namespace", ""), o["metadata"]["name"])
                    now[key] = o["metadata"].get("resourceVersion", "")
                    if seen.get(key) != now[key]:
                        click.echo(render(kind, [o], output, all_ns and kind not in CLUSTER_SCOPED,
                                          show_labels, labels, False, len(kinds) > 1))  # fmt: skip
                for key in [k for k in seen if k[0] == kind and k not in now]:
                    del seen[key]
                seen.update(now)
    except KeyboardInterrupt:
        pass


@click.command()
@cluster_options
@click.argument("args", nargs=-1)
@namespace_option
@click.option("-l", "--selector", default=None)
@click.option("-A", "--all-namespaces", is_flag=True)
def describe(
    state: StateDir,
    cluster: str,
    args: tuple[str, ...],
    namespace: str,
    selector: str | None,
    all_namespaces: bool,
) -> None:
    """Show objects in detail, with their events: describe TYPE [NAME] | TYPE/NAME."""
    from netplane.cluster.client.describe import describe as render_one

    if not args:
        raise click.UsageError("You must specify the type of resource to describe.")
    if "/" in args[0]:
        what, name = args[0].split("/", 1)
    else:
        what, name = args[0], (args[1] if len(args) > 1 else "")
    kind = kind_of(what)
    ns = None if all_namespaces else namespace
    items = fetch(state, kind, ns, selector)
    if name:
        items = [o for o in items if o["metadata"]["name"] == name] or [
            o for o in items if o["metadata"]["name"].startswith(name)
        ]
    if not items:
        raise click.ClickException(
            f'{resource(kind)} "{name}" not found' if name else "No resources found"
        )
    slices = fetch(state, "EndpointSlice", ns) if kind == "Service" else []
    events = fetch(state, "Event", ns)
    pods = fetch(state, "Pod", ns) if kind in ("Deployment", "ReplicaSet") else []
    sets = fetch(state, "ReplicaSet", ns) if kind == "Deployment" else []
    click.echo("\n\n".join(render_one(kind, o, slices, events, pods, sets) for o in items))


__all__ = ["PLURAL", "describe", "get"]
