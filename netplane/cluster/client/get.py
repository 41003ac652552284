"""`netplane get` and `describe`: tables, label selectors and columns, templates, watch."""

from __future__ import annotations

import time

import click

from netplane.cluster.client import api, tables
from netplane.cluster.client.cli import KubectlCommand, cluster_options, namespace_option
from netplane.cluster.client.kinds import (
    ALL,
    CLUSTER_SCOPED,
    PLURAL,
    kind_of,
    name_of,
    not_found,
    resource,
)
from netplane.cluster.client.output import (
    TemplateError,
    custom_columns,
    go_template,
    jsonpath,
    to_json,
    to_yaml,
)
from netplane.cluster.statedir import StateDir

ENDPOINTS_WARNING = (  # what kube-apiserver v1.33 says to every Endpoints request
    "Warning: v1 Endpoints is deprecated in v1.33+; use discovery.k8s.io/v1 EndpointSlice"
)


def fetch(
    state: StateDir, kind: str, ns: str | None, selector: str | None = None, name: str | None = None
) -> list[dict]:
    return fetch_list(state, kind, ns, selector, name)[0]


def fetch_list(
    state: StateDir, kind: str, ns: str | None, selector: str | None = None, name: str | None = None
) -> tuple[list[dict], int]:
    """The objects, sorted as kubectl lists them, and the revision the list was taken at
    (where a watch starts)."""
    source = "EndpointSlice" if kind == "Endpoints" else kind
    reply = api.call(state, {"op": "get", "kind": source,
                             "namespace": None if kind in CLUSTER_SCOPED else ns,
                             "selector": selector, "name": name})  # fmt: skip
    if "error" in reply:
        raise click.ClickException(reply["error"])
    items = sorted(
        reply["items"], key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])
    )
    return items, int(reply.get("resourceVersion", 0))


TEMPLATES = ("jsonpath=", "jsonpath-as-json=", "go-template=", "template=", "custom-columns=")


def generic(output: str | None) -> bool:
    """kubectl's non-table printers: they print one List of everything found (or the one
    object asked for by name), never "No resources found"."""
    return output in ("json", "yaml", "name") or bool(output and output.startswith(TEMPLATES))


def render_generic(found: list[tuple[str, dict]], output: str, single: bool,
                   headers: bool = True) -> str:  # fmt: skip
    """FOUND (kind, object) pairs as json, yaml, name, a template or custom columns; a
    template's text is printed as it comes out (no newline added, as kubectl's)."""
    items = [o for _, o in found]
    doc = items[0] if single and len(items) == 1 else _as_list(items)
    if output == "json":
        return to_json(doc) + "\n"
    if output == "yaml":
        return to_yaml(doc) + "\n"
    if output == "name":
        return "".join(name_of(kind, o["metadata"]["name"]) + "\n" for kind, o in found)
    fmt, _, arg = output.partition("=")
    try:
        if fmt == "custom-columns":
            return tables.render(custom_columns(arg, items, headers)) + "\n" if items else ""
        if fmt.startswith("jsonpath"):
            return jsonpath(arg, doc)
        return go_template(arg, doc)
    except TemplateError as e:
        raise click.ClickException(f"error executing template: {e}") from None


def render_table(
    kind: str, items: list[dict], wide: bool, all_ns: bool, show_labels: bool,
    label_columns: list[str], headers: bool = True, prefix_kind: bool = False,
) -> str:  # fmt: skip
    rows = tables.TABLES[kind](items, wide, all_ns)
    rows = tables.with_label_columns(rows, items, show_labels, label_columns)
    if prefix_kind:
        for row in rows[1:]:
            row[1 if all_ns else 0] = name_of(kind, row[1 if all_ns else 0])
    if not headers:
        rows = rows[1:]
    return tables.render(rows)


def _as_list(items: list[dict]) -> dict:
    return {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}


@click.command(cls=KubectlCommand)
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
    if output not in (None, "wide") and not generic(output):
        raise click.ClickException(
            f'unable to match a printer suitable for the output format "{output}", allowed '
            "formats are: custom-columns,go-template,json,jsonpath,name,template,wide,yaml"
        )
    if "Endpoints" in kinds:
        click.echo(ENDPOINTS_WARNING, err=True)
    ns = None if all_namespaces else namespace
    labels = [c for group in label_columns for c in group.split(",")]
    all_ns = ns is None
    seen: dict[tuple, str] = {}
    found = []
    headed: set[str] = set()  # kinds whose header is printed
    since = None
    for kind in kinds:
        items, revision = _select(state, kind, ns, selector, names)
        since = revision if since is None else min(since, revision)
        for o in items:
            seen[(kind, o["metadata"].get("namespace", ""), o["metadata"]["name"])] = o[
                "metadata"
            ].get("resourceVersion", "")
            found.append((kind, o))
    if generic(output):
        if not watch_only:
            single = len(names) == 1 and len(kinds) == 1
            click.echo(render_generic(found, str(output), single, not no_headers), nl=False)
    else:
        printed = False
        for kind in kinds:
            items = [o for k, o in found if k == kind]
            if not items:
                continue
            if printed:
                click.echo()
            if not watch_only:
                click.echo(render_table(kind, items, output == "wide",
                                        all_ns and kind not in CLUSTER_SCOPED, show_labels,
                                        labels, not no_headers, len(kinds) > 1))  # fmt: skip
                headed.add(kind)
            printed = True
        if not printed and not watch_only:
            where = f" in {ns} namespace" if ns and not set(kinds) <= set(CLUSTER_SCOPED) else ""
            click.echo(f"No resources found{where}.", err=True)
    if watch or watch_only:
        watcher = _Watcher(state, kinds, ns, selector, names, output, all_ns, show_labels,
                           labels, seen, headed)  # fmt: skip
        watcher.run(since or 0)


def _select(
    state: StateDir, kind: str, ns: str | None, selector: str | None, names: list[str]
) -> tuple[list[dict], int]:
    items, revision = fetch_list(state, kind, ns, selector)
    if kind == "Endpoints":
        items = _endpoints_as_objects(items)
    if names:
        by_name = {o["metadata"]["name"]: o for o in items}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise not_found(kind, missing[0])
        items = [by_name[n] for n in names]
    return items, revision


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


class _Watcher:
    """`kubectl get -w`: follow the daemon's watch from the list's revision and print a row
    per event (deletions too), each laid out on its own (kubectl flushes its tabwriter per
    event), with the header before a kind's first row if the list had none."""

    def __init__(self, state: StateDir, kinds: list[str], ns: str | None,
                 selector: str | None, names: list[str], output: str | None, all_ns: bool,
                 show_labels: bool, labels: list[str], seen: dict[tuple, str],
                 headed: set[str]) -> None:  # fmt: skip
        self.state, self.kinds, self.ns, self.selector = state, kinds, ns, selector
        self.names, self.output, self.all_ns = names, output, all_ns
        self.show_labels, self.labels, self.seen, self.headed = show_labels, labels, seen, headed

    def run(self, since: int) -> None:
        sources = sorted({"EndpointSlice" if k == "Endpoints" else k for k in self.kinds})
        request = {"op": "watch", "kinds": sources, "namespace": self.ns,
                   "selector": self.selector}  # fmt: skip
        try:
            while True:
                for event in api.stream(self.state, {**request, "resourceVersion": str(since)}):
                    if event["type"] == "BOOKMARK":
                        since = int(event["resourceVersion"])
                    elif event["type"] == "ERROR":
                        if event.get("code") != 410:
                            raise click.ClickException(event["error"])
                        break  # too far behind: list again, then watch from there
                    else:
                        since = int(event["object"]["metadata"]["resourceVersion"])
                        self._event(event["type"], event["object"])
                else:
                    return  # the daemon stopped
                since = max(self._relist(kind) for kind in self.kinds)
        except KeyboardInterrupt:
            pass

    def _event(self, kind_of_event: str, obj: dict) -> None:
        kind, meta = obj["kind"], obj["metadata"]
        if kind == "EndpointSlice" and "Endpoints" in self.kinds:
            self._relist("Endpoints")  # Endpoints are made from the slices
        if kind not in self.kinds or (self.names and meta["name"] not in self.names):
            return
        key = (kind, meta.get("namespace", ""), meta["name"])
        if kind_of_event == "DELETED":
            self.seen.pop(key, None)
        elif self.seen.get(key) == meta.get("resourceVersion", ""):
            return  # already listed
        else:
            self.seen[key] = meta.get("resourceVersion", "")
        self._show(kind, obj)

    def _relist(self, kind: str) -> int:
        """Print the objects of KIND that changed since they were last shown."""
        items, revision = _select(self.state, kind, self.ns, self.selector, [])
        now = {}
        for o in items:
            if self.names and o["metadata"]["name"] not in self.names:
                continue
            key = (kind, o["metadata"].get("namespace", ""), o["metadata"]["name"])
            now[key] = o["metadata"].get("resourceVersion", "")
            if self.seen.get(key) != now[key]:
                self._show(kind, o)
        for key in [k for k in self.seen if k[0] == kind and k not in now]:
            del self.seen[key]
        self.seen.update(now)
        return revision

    def _show(self, kind: str, obj: dict) -> None:
        if generic(self.output):
            text = render_generic([(kind, obj)], str(self.output), True, False)
            click.echo(text, nl=not text.endswith("\n"))
            return
        click.echo(render_table(kind, [obj], self.output == "wide",
                                self.all_ns and kind not in CLUSTER_SCOPED, self.show_labels,
                                self.labels, kind not in self.headed,
                                len(self.kinds) > 1))  # fmt: skip
        self.headed.add(kind)


@click.command(cls=KubectlCommand)
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
    if kind == "Endpoints":
        items = _endpoints_as_objects(items)
    if name:
        items = [o for o in items if o["metadata"]["name"] == name] or [
            o for o in items if o["metadata"]["name"].startswith(name)
        ]
    if not items:
        raise click.ClickException(
            f'{resource(kind)} "{name}" not found' if name else "No resources found"
        )
    ctx = {
        "events": fetch(state, "Event", ns),
        "slices": fetch(state, "EndpointSlice", ns) if kind == "Service" else [],
        "pods": fetch(state, "Pod", None if kind == "Node" else ns)
        if kind in ("ReplicaSet", "Node")
        else [],
        "sets": fetch(state, "ReplicaSet", ns) if kind == "Deployment" else [],
        "now": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if kind == "Endpoints":
        click.echo(ENDPOINTS_WARNING, err=True)
    # kubectl separates described objects with two blank lines
    click.echo("\n\n\n".join(render_one(kind, o, ctx) for o in items))


__all__ = ["PLURAL", "describe", "get"]
