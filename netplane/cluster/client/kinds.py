"""Resource names as kubectl takes them (`po`, `svc`, `deploy`, `rs`, `ns`, ...) and how
results and errors are printed (`deployment.apps/blue created`, `Error from server ...`)."""

from __future__ import annotations

import sys

import click

_NAMES = {
    "Pod": ("pods", "pod", "po"),
    "Service": ("services", "service", "svc"),
    "Deployment": ("deployments", "deployment", "deploy"),
    "ReplicaSet": ("replicasets", "replicaset", "rs"),
    "EndpointSlice": ("endpointslices", "endpointslice"),
    "Endpoints": ("endpoints", "ep"),
    "Node": ("nodes", "node", "no"),
    "Namespace": ("namespaces", "namespace", "ns"),
    "Event": ("events", "event", "ev"),
}
ALIASES = {alias: kind for kind, names in _NAMES.items() for alias in names}
ALIASES.update(  # `deployments.apps/blue`
    {f"{alias}.apps": kind for kind in ("Deployment", "ReplicaSet") for alias in _NAMES[kind]}
)
ALIASES["endpointslices.discovery.k8s.io"] = "EndpointSlice"
PLURAL = {kind: names[0] for kind, names in _NAMES.items()}
GROUP = {"Deployment": "apps", "ReplicaSet": "apps", "EndpointSlice": "discovery.k8s.io",
         "Event": ""}  # fmt: skip
CLUSTER_SCOPED = ("Node", "Namespace")
ALL = ("Pod", "Service", "Deployment", "ReplicaSet")  # `get all`
REASONS = {400: "BadRequest", 403: "Forbidden", 404: "NotFound", 409: "AlreadyExists",
           422: "Invalid"}  # fmt: skip


class KubectlError(click.ClickException):
    """Printed as kubectl prints it (`error: ...` for the client's refusals, `Error from
    server (NotFound): ...` for the server's), not as click's `Error: ...`."""

    def show(self, file: object = None) -> None:
        click.echo(self.message, err=True)


def not_found(kind: str, name: str) -> KubectlError:
    return KubectlError(f'Error from server (NotFound): {resource(kind)} "{name}" not found')


def kind_of(word: str) -> str:
    kind = ALIASES.get(word.lower())
    if kind is None:
        raise click.ClickException(f'the server doesn\'t have a resource type "{word}"')
    return kind


def resource(kind: str) -> str:
    """`deployments.apps`, `services`: how kubectl names a resource in messages."""
    group = GROUP.get(kind)
    return f"{PLURAL[kind]}.{group}" if group else PLURAL.get(kind, kind.lower())


def name_of(kind: str, name: str) -> str:
    """`deployment.apps/blue`, `service/blue`, `pod/x`."""
    group = GROUP.get(kind)
    return f"{kind.lower()}.{group}/{name}" if group else f"{kind.lower()}/{name}"


def error_text(result: dict) -> str:
    """kubectl's `Error from server (Reason): message` for one failed result."""
    kind, _, name = result["key"]
    error, code = result["error"], result.get("code", 400)
    reason = result.get("reason") or REASONS.get(code, "BadRequest")
    if error == "NotFound":
        error = f'{resource(kind)} "{name}" not found'
        reason = "NotFound"
    elif error == "AlreadyExists":
        error = f'{resource(kind)} "{name}" already exists'
    if result.get("source"):
        verb = "creating" if result.get("creating", True) else "applying"
        error = f'error when {verb} "{result["source"]}": {error}'
    return f"Error from server ({reason}): {error}"


def report(results: list[dict], verb: str | None = None, dry_run: bool = False) -> None:
    """Print each result the way kubectl does; exit 1 when any failed."""
    failed = False
    for r in results:
        kind, _, name = r["key"]
        if "error" in r:
            failed = True
            click.echo(error_text(r), err=True)
        elif (verb or r["action"]) == "deleted":  # kubectl: `deployment.apps "blue" deleted`
            click.echo(f'{name_of(kind, "").rstrip("/")} "{name}" deleted')
        else:
            suffix = " (dry run)" if dry_run else ""
            click.echo(f"{name_of(kind, name)} {verb or r['action']}{suffix}")
    if failed:
        sys.exit(1)
