"""Getting at pods: `exec` (also on a node or the laptop), `logs`, `port-forward`."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import click

from netplane.cluster.client import api
from netplane.cluster.client.cli import KubectlCommand, cluster_options, namespace_option
from netplane.cluster.client.kinds import KubectlError, kind_of, not_found
from netplane.cluster.statedir import StateDir, read_json


def pick_pod(state: StateDir, namespace: str, target: str) -> dict:
    """A pod by name, `pod/NAME`, or the first ready pod of `deploy/NAME`, `rs/NAME`,
    `svc/NAME` (as kubectl picks one)."""
    word, _, name = target.rpartition("/")
    kind = kind_of(word) if word else "Pod"
    if kind == "Pod":
        found = api.call(state, {"op": "get", "kind": "Pod", "namespace": namespace,
                                 "name": name})["items"]  # fmt: skip
        if not found:
            raise not_found("Pod", name)
        return found[0]
    owner = api.call(state, {"op": "get", "kind": kind, "namespace": namespace, "name": name})
    if not owner["items"]:
        raise not_found(kind, name)
    obj = owner["items"][0]
    selector = obj["spec"].get("selector") or {}
    selector = selector.get("matchLabels", selector) if kind != "Service" else selector
    text = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    pods = api.call(state, {"op": "get", "kind": "Pod", "namespace": namespace,
                            "selector": text})["items"]  # fmt: skip
    pods = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    pods.sort(key=lambda p: (not _ready(p), p["metadata"].get("creationTimestamp", "")))
    if not pods:
        raise click.ClickException(f"no pods found for {target}")
    return pods[0]


def _ready(pod: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in pod.get("status", {}).get("conditions") or [])  # fmt: skip


@click.command("exec", cls=KubectlCommand, context_settings={"ignore_unknown_options": True})
@cluster_options
@click.argument("pod", required=False)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@namespace_option
@click.option("-c", "--container", default=None, help="Accepted (pods share one namespace).")
@click.option("--node", default=None, help="Run on this node instead of in a pod.")
@click.option("--outside", is_flag=True, help="Run on the laptop outside the cluster.")
@click.option("-i", "--stdin", "interactive", is_flag=True, help="Accepted for kubectl's -it.")
@click.option("-t", "--tty", is_flag=True, help="Accepted for kubectl's -it.")
def exec_(state: StateDir, cluster: str, pod: str | None, command: tuple[str, ...],
          namespace: str, container: str | None, node: str | None, outside: bool,
          interactive: bool, tty: bool) -> None:  # fmt: skip
    """Run COMMAND in a pod's network namespace (with its resolv.conf and service
    environment), on a node (--node) or on the laptop (--outside):
    `netplane exec POD|deploy/NAME -- curl -s blue`."""
    from netplane.cluster.control.topology import Topology

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
        body = pick_pod(state, namespace, pod)
        name = body["metadata"]["name"]
        refusal = exec_refusal(body, container)
        if refusal:
            raise click.ClickException(refusal)
        info = api.call(state, {"op": "exec-info", "namespace": namespace, "name": name})
        if "error" in info:
            raise click.ClickException(info["error"])
        netns = info["netns"]
        env.update(info["env"])
        env["HOSTNAME"] = name
    else:
        raise click.UsageError("exec POD -- CMD, exec --node NODE -- CMD or exec --outside -- CMD")
    proc = subprocess.run(["ip", "netns", "exec", netns, *command], env=env)
    sys.exit(proc.returncode)


def exec_refusal(pod: dict, container: str | None) -> str | None:
    """kubectl's and kubelet's refusals: there is no process to join in a pod whose
    containers ended, or in a container that is not running (e.g. in CrashLoopBackOff)."""
    status = pod.get("status") or {}
    phase = status.get("phase")
    if phase in ("Succeeded", "Failed"):
        return f"cannot exec into a container in a completed pod; current phase is {phase}"
    name = container or pod["spec"]["containers"][0]["name"]
    for cs in status.get("containerStatuses") or []:
        if cs["name"] == name and "running" not in (cs.get("state") or {}):
            return f'unable to upgrade connection: container not found ("{name}")'
    return None


# -- logs ------------------------------------------------------------------------------------
def _parse_cri(line: str) -> tuple[str, str]:
    """(timestamp, text) of one CRI log line (`<time> <stream> <P|F> <text>`)."""
    parts = line.rstrip("\n").split(" ", 3)
    if len(parts) < 4:
        return "", line.rstrip("\n")
    return parts[0], parts[3]


def _log_files(
    state: StateDir, pod: dict, container: str | None, all_containers: bool, previous: bool
) -> list[tuple[str, Path]]:
    """Each container's current run's log, or with PREVIOUS the run before (one file per
    run, numbered by restart count, as kubelet keeps them)."""
    meta = pod["metadata"]
    d = state.pod_logs(meta["namespace"], meta["name"], meta["uid"])
    names = [c["name"] for c in pod["spec"].get("containers", [])]
    if container:
        if container not in names:
            raise click.ClickException(f"container {container} is not valid for pod {meta['name']}")
        names = [container]
    elif not all_containers and len(names) > 1:
        click.echo(f'Defaulted container "{names[0]}" out of: {", ".join(names)}', err=True)
        names = names[:1]
    out = []
    for n in names:
        runs = sorted((d / n).glob("*.log"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1)
        if previous and len(runs) < 2:
            raise KubectlError(f'Error from server (BadRequest): previous terminated container '
                               f'"{n}" in pod "{meta["name"]}" not found')  # fmt: skip
        out.append((n, runs[-2] if previous else runs[-1] if runs else d / n / "0.log"))
    return out


@click.command(cls=KubectlCommand)
@cluster_options
@click.argument("target", required=False)
@namespace_option
@click.option("-c", "--container", default=None)
@click.option("-f", "--follow", is_flag=True)
@click.option("--tail", type=int, default=-1, help="Lines from the end (-1: all).")
@click.option("-l", "--selector", default=None, help="Logs of every pod with these labels.")
@click.option("--timestamps", is_flag=True)
@click.option("--prefix", is_flag=True, help="Prefix each line with [pod/NAME/CONTAINER].")
@click.option("--all-containers", is_flag=True)
@click.option("--max-log-requests", type=int, default=5)
@click.option("-p", "--previous", is_flag=True, help="The previous run's log (a restarted "
              "container's, e.g. in CrashLoopBackOff).")  # fmt: skip
def logs(state: StateDir, cluster: str, target: str | None, namespace: str,
         container: str | None, follow: bool, tail: int, selector: str | None,
         timestamps: bool, prefix: bool, all_containers: bool,
         max_log_requests: int, previous: bool) -> None:  # fmt: skip
    """What a pod's processes wrote (its command's output; the built-in apps log one line per
    request): `logs POD`, `logs deploy/NAME`, `logs -l app=blue`, `-f`, `--tail N`."""
    if selector:
        pods = api.call(state, {"op": "get", "kind": "Pod", "namespace": namespace,
                                "selector": selector})["items"]  # fmt: skip
        if tail < 0:
            tail = 10  # kubectl's default with a selector
        prefix = prefix or len(pods) > 1
        if follow and len(pods) > max_log_requests:
            raise click.ClickException(
                f"you are attempting to follow {len(pods)} log streams, but maximum allowed "
                f"concurrency is {max_log_requests}, use --max-log-requests to increase the limit"
            )
    elif target:
        pods = [pick_pod(state, namespace, target)]
    else:
        raise click.UsageError("logs POD | TYPE/NAME | -l SELECTOR")
    files = []
    for pod in pods:
        if not pod.get("status", {}).get("containerStatuses") and not selector:
            raise click.ClickException(
                f'container "{pod["spec"]["containers"][0]["name"]}" in pod '
                f'"{pod["metadata"]["name"]}" is waiting to start: ContainerCreating'
            )
        for name, path in _log_files(state, pod, container, all_containers, previous):
            pre = f"[pod/{pod['metadata']['name']}/{name}] " if prefix else ""
            files.append((pre, path, (pod, name, _restarts(pod, name))))
    positions = {}
    for pre, path, _ in files:
        lines = path.read_text(errors="replace").splitlines(True) if path.exists() else []
        shown = lines if tail < 0 else lines[len(lines) - tail :] if tail else []
        for line in shown:
            _print(pre, line, timestamps)
        positions[path] = path.stat().st_size if path.exists() else 0
    if not follow or previous:
        return
    checked = time.monotonic()
    try:
        while files:  # as kubectl's: a stream ends with its container's run (or its pod)
            time.sleep(0.2)
            ended = set()
            if time.monotonic() - checked >= 1.0:
                checked = time.monotonic()
                ended = {path for _, path, run in files if _run_ended(state, *run)}
            for pre, path, _ in files:  # read after the check: an ended run's last lines
                positions[path] = _follow(pre, path, positions.get(path, 0), timestamps)
            files = [f for f in files if f[1] not in ended]
    except KeyboardInterrupt:
        pass


def _restarts(pod: dict, container: str) -> int | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs["name"] == container:
            return int(cs.get("restartCount", 0))
    return None


def _run_ended(state: StateDir, pod: dict, container: str, restarts: int | None) -> bool:
    """Whether the run `logs -f` follows is over: the pod went, or the container exited or
    was restarted since (not yet started: not over)."""
    meta = pod["metadata"]
    found = api.call(state, {"op": "get", "kind": "Pod", "namespace": meta["namespace"],
                             "name": meta["name"]})["items"]  # fmt: skip
    if not found or found[0]["metadata"]["uid"] != meta["uid"]:
        return True
    for cs in (found[0].get("status") or {}).get("containerStatuses") or []:
        if cs["name"] == container:
            started = restarts is not None
            return started and (
                cs.get("restartCount", 0) != restarts or "running" not in (cs.get("state") or {})
            )
    return False


def _print(pre: str, line: str, timestamps: bool) -> None:
    stamp, text = _parse_cri(line)
    click.echo(f"{pre}{stamp + ' ' if timestamps else ''}{text}")


def _follow(pre: str, path: Path, pos: int, timestamps: bool) -> int:
    if not path.exists():
        return pos
    with open(path, encoding="utf-8", errors="replace") as f:
        f.seek(pos)
        for line in f:
            if line.endswith("\n"):
                _print(pre, line, timestamps)
                pos += len(line.encode())
    return pos


# -- port-forward ------------------------------------------------------------------------------
@click.command("port-forward", cls=KubectlCommand)
@cluster_options
@click.argument("target")
@click.argument("ports", nargs=-1, required=True)
@namespace_option
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Local address (loopback only: the lab never listens elsewhere).",
)
def port_forward(state: StateDir, cluster: str, target: str, ports: tuple[str, ...],
                 namespace: str, address: str) -> None:  # fmt: skip
    """`kubectl port-forward pod/X|deploy/X|svc/X [LOCAL:]REMOTE`: listen on the host's
    loopback and connect each connection to the pod inside its network namespace."""
    if address not in ("127.0.0.1", "localhost"):
        raise click.ClickException("port-forward listens on 127.0.0.1 only")
    pod = pick_pod(state, namespace, target)
    info = api.call(state, {"op": "exec-info", "namespace": namespace,
                            "name": pod["metadata"]["name"]})  # fmt: skip
    if "error" in info:
        raise click.ClickException(info["error"])
    servers = []
    for spec in ports:
        local, _, remote = spec.partition(":")
        remote = remote or local
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", int(local or 0)))
        server.listen(64)
        click.echo(f"Forwarding from 127.0.0.1:{server.getsockname()[1]} -> {remote}")
        servers.append(server)
        threading.Thread(target=_accept, args=(server, info, int(remote)), daemon=True).start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def _accept(server: socket.socket, info: dict, port: int) -> None:
    from netplane.netns import entered

    while True:
        conn, _ = server.accept()
        click.echo(f"Handling connection for {server.getsockname()[1]}")
        try:
            with entered(info["netns"]):
                upstream = socket.create_connection((info["ip"], port), timeout=5)
        except OSError as e:
            click.echo(f"error forwarding port {port}: {e}", err=True)
            conn.close()
            continue
        for a, b in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
