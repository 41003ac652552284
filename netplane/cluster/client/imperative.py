"""Imperative commands: create, expose, scale, run, label, annotate, set image, patch,
edit, rollout. Each sends what kubectl would send (a create that refuses an existing
object, a strategic merge patch) so the daemon's admission has the last word."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import click
import yaml

from netplane.cluster.client import api
from netplane.cluster.client.cli import (
    GoDuration,
    KubectlCommand,
    KubectlGroup,
    cluster_options,
    namespace_option,
    targets,
    wait_gone,
)
from netplane.cluster.client.kinds import (
    CLUSTER_SCOPED,
    kind_of,
    name_of,
    not_found,
    report,
)
from netplane.cluster.client.output import to_json, to_yaml
from netplane.cluster.control.workloads import (
    deployment_manifest,
    pod_manifest,
    service_manifest,
)
from netplane.cluster.statedir import StateDir


def _one(state: StateDir, kind: str, namespace: str, name: str) -> dict:
    ns = "" if kind in CLUSTER_SCOPED else namespace
    found = api.call(state, {"op": "get", "kind": kind, "namespace": ns, "name": name})["items"]
    if not found:
        raise not_found(kind, name)
    return found[0]


def _create(state: StateDir, body: dict, verb: str = "created", dry_run: str = "none",
            output: str | None = None) -> None:  # fmt: skip
    if dry_run != "none" or output in ("yaml", "json"):
        if output == "yaml":
            click.echo(to_yaml(body))
        elif output == "json":
            click.echo(to_json(body))
        else:
            kind, name = body["kind"], body["metadata"]["name"]
            click.echo(f"{name_of(kind, name)} {verb} (dry run)")
        if dry_run != "none":
            return
    report(api.call(state, {"op": "create", "objects": [body]})["results"], verb)


def _patch(state: StateDir, key: tuple, patch: object, kind: str = "strategic") -> dict:
    return api.call(state, {"op": "patch", "key": list(key), "patch": patch, "type": kind})


@click.group(cls=KubectlGroup)
def create() -> None:
    """Create an object from the command line."""


@create.command("deployment")
@cluster_options
@click.argument("name")
@click.option("--image", required=True, multiple=True)
@click.option("--replicas", type=int, default=1, show_default=True)
@click.option("--port", type=int, default=0, help="The container port to expose.")
@namespace_option
@click.option("--dry-run", type=click.Choice(["none", "client", "server"]), default="none")
@click.option("-o", "--output", default=None)
@click.argument("command", nargs=-1)
def create_deployment(state: StateDir, cluster: str, name: str, image: tuple[str, ...],
                      replicas: int, port: int, namespace: str, dry_run: str,
                      output: str | None, command: tuple[str, ...]) -> None:  # fmt: skip
    """`kubectl create deployment NAME --image=IMAGE [-- COMMAND ARGS...]`."""
    body = deployment_manifest(name, image[0], replicas, namespace, port)
    containers = body["spec"]["template"]["spec"]["containers"]
    for extra in image[1:]:
        containers.append({"name": extra.split("/")[-1].split(":")[0], "image": extra})
    if command:
        containers[0]["command"] = list(command)
    _create(state, body, "created", dry_run, output)


@create.command("namespace")
@cluster_options
@click.argument("name")
@click.option("--dry-run", type=click.Choice(["none", "client", "server"]), default="none")
@click.option("-o", "--output", default=None)
def create_namespace(state: StateDir, cluster: str, name: str, dry_run: str,
                     output: str | None) -> None:  # fmt: skip
    """`kubectl create namespace NAME`."""
    _create(state, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
            "created", dry_run, output)  # fmt: skip


create.add_command(create_namespace, "ns")


@create.command("service")
@click.argument("svc_type", type=click.Choice(["clusterip", "nodeport", "loadbalancer"]))
@cluster_options
@click.argument("name")
@click.option("--tcp", "ports", multiple=True, required=True, help="PORT[:TARGETPORT]")
@namespace_option
def create_service(state: StateDir, cluster: str, svc_type: str, name: str,
                   ports: tuple[str, ...], namespace: str) -> None:  # fmt: skip
    """`kubectl create service clusterip|nodeport|loadbalancer NAME --tcp=80:8080`."""
    kind = {"clusterip": "ClusterIP", "nodeport": "NodePort", "loadbalancer": "LoadBalancer"}
    port, _, target = ports[0].partition(":")
    body = service_manifest(name, namespace, {"app": name}, int(port),
                            int(target) if target else int(port), kind[svc_type])  # fmt: skip
    body["metadata"]["labels"] = {"app": name}
    body["spec"]["ports"][0]["name"] = f"{port}-{target or port}"
    _create(state, body)


@click.command(cls=KubectlCommand)
@cluster_options
@click.argument("what")
@click.argument("name", required=False)
@click.option("--port", type=int, default=None)
@click.option("--target-port", default=None)
@click.option("--type", "svc_type", type=click.Choice(["ClusterIP", "NodePort", "LoadBalancer"]),
              default="ClusterIP", show_default=True)  # fmt: skip
@click.option("--name", "svc_name", default=None, help="Service name [default: the object's].")
@click.option("--protocol", type=click.Choice(["TCP", "UDP"]), default="TCP", show_default=True)
@namespace_option
@click.option("--dry-run", type=click.Choice(["none", "client", "server"]), default="none")
@click.option("-o", "--output", default=None)
def expose(state: StateDir, cluster: str, what: str, name: str | None, port: int | None,
           target_port: str | None, svc_type: str, svc_name: str | None, protocol: str,
           namespace: str, dry_run: str, output: str | None) -> None:  # fmt: skip
    """`kubectl expose deployment NAME --port=P [--target-port=T] [--type=...]`."""
    if "/" in what:
        what, name = what.split("/", 1)
    kind = kind_of(what)
    if kind not in ("Deployment", "ReplicaSet", "Pod", "Service") or not name:
        raise click.UsageError("expose deployment|rs|pod|service NAME --port=PORT")
    obj = _one(state, kind, namespace, name)
    if kind in ("Deployment", "ReplicaSet"):
        selector = obj["spec"]["selector"]["matchLabels"]
        containers = obj["spec"]["template"]["spec"]["containers"]
    elif kind == "Pod":
        selector = obj["metadata"].get("labels") or {}
        containers = obj["spec"]["containers"]
    else:
        selector = obj["spec"].get("selector") or {}
        containers = []
    if port is None:  # kubectl takes the first container port
        ports = [p["containerPort"] for c in containers for p in c.get("ports") or []]
        if not ports:
            raise click.ClickException(
                "couldn't find port via --port flag or introspection\nSee 'netplane expose -h' "
                "for help and examples"
            )
        port = ports[0]
    target = int(target_port) if target_port and target_port.isdigit() else target_port
    body = service_manifest(svc_name or name, namespace, selector, port, target, svc_type,
                            protocol)  # fmt: skip
    _create(state, body, "exposed", dry_run, output)


@click.command(cls=KubectlCommand)
@cluster_options
@click.argument("args", nargs=-1)
@click.option("--replicas", type=int, required=True)
@namespace_option
def scale(state: StateDir, cluster: str, args: tuple[str, ...], replicas: int,
          namespace: str) -> None:  # fmt: skip
    """`kubectl scale deployment NAME --replicas=N` (also rs, TYPE/NAME)."""
    results = []
    for key in targets(args, namespace):
        if key[0] not in ("Deployment", "ReplicaSet"):
            raise click.UsageError("scale deployment|rs NAME --replicas=N")
        results += _patch(state, key, {"spec": {"replicas": replicas}})["results"]
    report(results, "scaled")


@click.command(cls=KubectlCommand, context_settings={"ignore_unknown_options": True})
@cluster_options
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--image", required=True)
@click.option("--port", type=int, default=0)
@namespace_option
@click.option("--restart", type=click.Choice(["Always", "OnFailure", "Never"]), default="Always")
@click.option("--command", "is_command", is_flag=True, help="The words after -- are the "
              "command (not the args).")  # fmt: skip
@click.option("--env", multiple=True, help="NAME=VALUE")
@click.option("-l", "--labels", default=None, help="key=value,... [default run=NAME]")
@click.option("-i", "--stdin", "interactive", is_flag=True)
@click.option("-t", "--tty", is_flag=True)
@click.option("--rm", is_flag=True, help="Delete the pod when the attached command exits.")
@click.option("--attach", "attach_flag", is_flag=True, help="Run the command attached.")
@click.option("--dry-run", type=click.Choice(["none", "client", "server"]), default="none")
@click.option("-o", "--output", default=None)
def run(state: StateDir, cluster: str, name: str, command: tuple[str, ...], image: str,
        port: int, namespace: str, restart: str, is_command: bool, env: tuple[str, ...],
        labels: str | None, interactive: bool, tty: bool, rm: bool, attach_flag: bool,
        dry_run: str, output: str | None) -> None:  # fmt: skip
    """`kubectl run NAME --image=IMAGE [--restart=Never] [--rm -it] [--command] -- CMD ...`:
    one pod whose command runs in its network namespace (-it attaches to it)."""
    body = pod_manifest(name, image, namespace, port)
    c = body["spec"]["containers"][0]
    attach = interactive or attach_flag  # as kubectl: -i attaches, -t adds the prompt hint
    if rm and not attach:
        raise click.UsageError("--rm should only be used for attached containers")
    if command and not attach:
        c["command" if is_command else "args"] = list(command)
    if interactive:  # as kubectl: the container keeps stdin open for the attached session
        c.update({"stdin": True, "stdinOnce": True, **({"tty": True} if tty else {})})
    if env:
        c["env"] = [{"name": k, "value": v} for k, _, v in (e.partition("=") for e in env)]
    if labels:
        body["metadata"]["labels"] = dict(kv.split("=", 1) for kv in labels.split(","))
    body["spec"]["restartPolicy"] = restart
    body["spec"]["dnsPolicy"] = "ClusterFirst"
    if not attach:
        _create(state, body, "created", dry_run, output)
        return
    # -it: the container's process is the user's terminal session, started once the pod's
    # sandbox exists (as kubectl attaches to the container it started)
    results = api.call(state, {"op": "create", "objects": [body]})["results"]
    if "error" in results[0]:
        report(results)
    code = 1
    try:
        info = _wait_sandbox(state, namespace, name)
        if tty:
            click.echo("If you don't see a command prompt, try pressing enter.", err=True)
        argv = list(command) or ["sh"]
        proc_env = {"PATH": os.environ.get("PATH", ""), "TERM": os.environ.get("TERM", "xterm"),
                    "HOSTNAME": name, **info["env"]}  # fmt: skip
        code = subprocess.run(
            ["ip", "netns", "exec", info["netns"], *argv], env=proc_env
        ).returncode
    finally:
        if rm:
            deleted = api.call(state, {"op": "delete", "keys": [["Pod", namespace, name]]})
            wait_gone(state, deleted["results"])
            click.echo(f'pod "{name}" deleted')
    sys.exit(code)


def _wait_sandbox(state: StateDir, namespace: str, name: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = api.call(state, {"op": "exec-info", "namespace": namespace, "name": name})
        if "error" not in info:
            return info
        if time.monotonic() > deadline:
            raise click.ClickException(info["error"])
        time.sleep(0.1)


def _set_meta(field: str, verb: str) -> click.Command:
    @click.command(
        verb,
        cls=KubectlCommand,
        help=f"`kubectl {verb} TYPE NAME key=value key-`: set or remove {field}.",
    )
    @cluster_options
    @click.argument("args", nargs=-1, required=True)
    @namespace_option
    @click.option("--overwrite", is_flag=True)
    @click.option("-l", "--selector", default=None)
    @click.option("--all", "all_", is_flag=True)
    def command(state: StateDir, cluster: str, args: tuple[str, ...], namespace: str,
                overwrite: bool, selector: str | None, all_: bool) -> None:  # fmt: skip
        changes = [a for a in args if "=" in a or a.endswith("-")]
        objs = [a for a in args if a not in changes]
        if not changes:
            raise click.UsageError(f"at least one {field[:-1]} update is required")
        if (selector or all_) and len(objs) == 1 and "/" not in objs[0]:
            kind = kind_of(objs[0])
            found = api.call(state, {"op": "get", "kind": kind, "namespace": namespace,
                                     "selector": selector})["items"]  # fmt: skip
            keys = sorted((kind, o["metadata"].get("namespace", ""), o["metadata"]["name"])
                          for o in found)  # fmt: skip
        else:
            keys = targets(tuple(objs), namespace)
        results = []
        for key in keys:
            obj = _one(state, key[0], key[1], key[2])
            current = obj["metadata"].get(field) or {}
            patch: dict = {}
            for change in changes:
                if change.endswith("-") and "=" not in change:
                    patch[change[:-1]] = None
                    continue
                k, _, v = change.partition("=")
                if k in current and current[k] != v and not overwrite:
                    click.echo(f"error: '{k}' already has a value ({current[k]}), and "
                               "--overwrite is false", err=True)  # fmt: skip
                    sys.exit(1)
                patch[k] = v
            for r in _patch(state, key, {"metadata": {field: patch}}, "merge")["results"]:
                removing = all(v is None for v in patch.values())
                if r.get("action") == "patched (no change)":
                    r["action"] = "not labeled" if verb == "label" else "not annotated"
                elif r.get("action") == "patched":
                    done = "labeled" if verb == "label" else "annotated"
                    r["action"] = "unlabeled" if removing and verb == "label" else done
                results.append(r)
        report(results)

    return command


label = _set_meta("labels", "label")
annotate = _set_meta("annotations", "annotate")


@click.group("set", cls=KubectlGroup)
def set_() -> None:
    """Change an object's fields: `set image deployment/blue color=jpetazzo/color:v2`."""


@set_.command("image")
@cluster_options
@click.argument("args", nargs=-1, required=True)
@namespace_option
def set_image(state: StateDir, cluster: str, args: tuple[str, ...], namespace: str) -> None:
    """`kubectl set image deployment/NAME CONTAINER=IMAGE ...` (`*=IMAGE` sets all)."""
    changes = dict(a.split("=", 1) for a in args if "=" in a)
    keys = targets(tuple(a for a in args if "=" not in a), namespace)
    results = []
    for key in keys:
        obj = _one(state, *key)
        spec = obj["spec"]["template"]["spec"] if key[0] != "Pod" else obj["spec"]
        names = [c["name"] for c in spec["containers"]]
        unknown = [n for n in changes if n != "*" and n not in names]
        if unknown:
            raise click.ClickException(f'unable to find container named "{unknown[0]}"')
        containers = [{"name": n, "image": changes.get(n, changes.get("*"))}
                      for n in names if n in changes or "*" in changes]  # fmt: skip
        patch = ({"spec": {"template": {"spec": {"containers": containers}}}}
                 if key[0] != "Pod" else {"spec": {"containers": containers}})  # fmt: skip
        for r in _patch(state, key, patch)["results"]:
            if "action" in r:
                r["action"] = "image updated"
            results.append(r)
    report(results)


@click.command(cls=KubectlCommand)
@cluster_options
@click.argument("args", nargs=-1, required=True)
@namespace_option
@click.option("-p", "--patch", "patch", required=True, help="The patch (JSON or YAML).")
@click.option("--type", "patch_type", type=click.Choice(["strategic", "merge", "json"]),
              default="strategic", show_default=True)  # fmt: skip
def patch(state: StateDir, cluster: str, args: tuple[str, ...], namespace: str, patch: str,
          patch_type: str) -> None:  # fmt: skip
    """`kubectl patch TYPE NAME -p '{"spec":{"replicas":3}}'`."""
    try:
        body = yaml.safe_load(patch)
    except yaml.YAMLError as e:
        raise click.ClickException(f"unable to parse {patch!r}: {e}") from None
    results = []
    for key in targets(args, namespace):
        results += _patch(state, key, body, patch_type)["results"]
    report(results)


@click.command(cls=KubectlCommand)
@cluster_options
@click.argument("args", nargs=-1, required=True)
@namespace_option
@click.option("-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml")
def edit(state: StateDir, cluster: str, args: tuple[str, ...], namespace: str,
         output: str) -> None:  # fmt: skip
    """`kubectl edit TYPE NAME`: the object in $EDITOR (KUBE_EDITOR, EDITOR, vi); saved
    changes are sent as a replace."""
    results = []
    for key in targets(args, namespace):
        obj = _one(state, *key)
        text = to_yaml(obj) + "\n" if output == "yaml" else to_json(obj) + "\n"
        editor = os.environ.get("KUBE_EDITOR") or os.environ.get("EDITOR") or "vi"
        with tempfile.NamedTemporaryFile("w+", suffix=f".{output}", delete=False) as f:
            f.write(text)
        try:
            subprocess.run([*editor.split(), f.name], check=False)
            new = open(f.name, encoding="utf-8").read()  # noqa: SIM115
        finally:
            os.unlink(f.name)
        if new.strip() == text.strip():
            click.echo("Edit cancelled, no changes made.")
            continue
        body = yaml.safe_load(new)
        for r in api.call(state, {"op": "replace", "objects": [body]})["results"]:
            if r.get("action") == "configured":
                r["action"] = "edited"
            results.append(r)
    if results:
        report(results)


# -- rollout -----------------------------------------------------------------------------------
@click.group(cls=KubectlGroup)
def rollout() -> None:
    """Manage a Deployment's rollout: status, history, undo, restart."""


def _rollout_target(args: tuple[str, ...], namespace: str) -> tuple[str, str, str]:
    (key,) = targets(args, namespace)[:1]
    if key[0] != "Deployment":
        raise click.UsageError("rollout works on deployments")
    return key


@rollout.command("status")
@cluster_options
@click.argument("args", nargs=-1, required=True)
@namespace_option
@click.option("--timeout", type=GoDuration(), default="0", help="0: wait forever.")
@click.option("-w", "--watch/--no-watch", default=True)
def rollout_status(state: StateDir, cluster: str, args: tuple[str, ...], namespace: str,
                   timeout: float, watch: bool) -> None:  # fmt: skip
    """Wait until the deployment's rollout is complete, printing progress like kubectl."""
    key = _rollout_target(args, namespace)
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        dep = _one(state, *key)
        message, done = rollout_message(dep)
        if message != last:
            click.echo(message)
            last = message
        if done or not watch:
            return
        if timeout and time.monotonic() > deadline:
            raise click.ClickException("timed out waiting for the condition")
        time.sleep(0.2)


def rollout_message(dep: dict) -> tuple[str, bool]:
    """kubectl's DeploymentStatusViewer messages."""
    name, spec, st = dep["metadata"]["name"], dep["spec"], dep.get("status") or {}
    if dep["metadata"].get("generation", 1) > st.get("observedGeneration", 0):
        return "Waiting for deployment spec update to be observed...", False
    want = spec.get("replicas", 1)
    updated, total = st.get("updatedReplicas", 0), st.get("replicas", 0)
    available = st.get("availableReplicas", 0)
    if updated < want:
        return (f'Waiting for deployment "{name}" rollout to finish: {updated} out of {want} new '
                "replicas have been updated..."), False  # fmt: skip
    if total > updated:
        return (f'Waiting for deployment "{name}" rollout to finish: {total - updated} old '
                "replicas are pending termination..."), False  # fmt: skip
    if available < updated:
        return (f'Waiting for deployment "{name}" rollout to finish: {available} of {updated} '
                "updated replicas are available..."), False  # fmt: skip
    return f'deployment "{name}" successfully rolled out', True


def _revisions(state: StateDir, dep: dict) -> list[tuple[int, dict]]:
    sets = api.call(state, {"op": "get", "kind": "ReplicaSet",
                            "namespace": dep["metadata"]["namespace"]})["items"]  # fmt: skip
    mine = [
        rs
        for rs in sets
        if any(
            r.get("uid") == dep["metadata"]["uid"]
            for r in rs["metadata"].get("ownerReferences") or []
        )
    ]
    rev = "deployment.kubernetes.io/revision"
    return sorted((int(rs["metadata"].get("annotations", {}).get(rev, "0")), rs) for rs in mine)


@rollout.command("history")
@cluster_options
@click.argument("args", nargs=-1, required=True)
@namespace_option
@click.option("--revision", type=int, default=0)
def rollout_history(state: StateDir, cluster: str, args: tuple[str, ...], namespace: str,
                    revision: int) -> None:  # fmt: skip
    """The deployment's revisions (one per pod template it has run)."""
    key = _rollout_target(args, namespace)
    revisions = _revisions(state, _one(state, *key))
    if revision:
        rs = dict(revisions).get(revision)
        if rs is None:
            raise click.ClickException(f"unable to find the specified revision {revision}")
        from netplane.cluster.client.describe import pod_template_text

        click.echo(f"deployment.apps/{key[2]} with revision #{revision}")
        click.echo(pod_template_text(rs["spec"]["template"]))  # kubectl's tabs, unaligned
        return
    click.echo(f"deployment.apps/{key[2]} ")
    rows = [["REVISION", "CHANGE-CAUSE"]]
    for n, rs in revisions:
        cause = rs["metadata"].get("annotations", {}).get("kubernetes.io/change-cause", "<none>")
        rows.append([str(n), cause])
    from netplane.cluster.client.tabwriter import tabwrite

    click.echo(tabwrite("\n".join("\t".join(r) for r in rows), 0, 2) + "\n")


@rollout.command("undo")
@cluster_options
@click.argument("args", nargs=-1, required=True)
@namespace_option
@click.option("--to-revision", type=int, default=0)
def rollout_undo(state: StateDir, cluster: str, args: tuple[str, ...], namespace: str,
                 to_revision: int) -> None:  # fmt: skip
    """Go back to the previous (or a given) revision's pod template."""
    key = _rollout_target(args, namespace)
    dep = _one(state, *key)
    revisions = _revisions(state, dep)
    if len(revisions) < 2 and not to_revision:
        raise click.ClickException(f'no rollout history found for deployment "{key[2]}"')
    target = dict(revisions).get(to_revision) if to_revision else revisions[-2][1]
    if target is None:
        raise click.ClickException(f"unable to find specified revision {to_revision} in history")
    tmpl = json.loads(json.dumps(target["spec"]["template"]))
    tmpl.get("metadata", {}).get("labels", {}).pop("pod-template-hash", None)
    results = _patch(state, key, [{"op": "replace", "path": "/spec/template", "value": tmpl}],
                     "json")["results"]  # fmt: skip
    for r in results:
        if "action" in r:
            r["action"] = "rolled back"
    report(results)


@rollout.command("restart")
@cluster_options
@click.argument("args", nargs=-1, required=True)
@namespace_option
def rollout_restart(state: StateDir, cluster: str, args: tuple[str, ...], namespace: str) -> None:
    """Replace every pod through a rolling update (a new template annotation)."""
    key = _rollout_target(args, namespace)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    patch = {"spec": {"template": {"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": stamp}}}}}  # fmt: skip
    results = _patch(state, key, patch)["results"]
    for r in results:
        if "action" in r:
            r["action"] = "restarted"
    report(results)
