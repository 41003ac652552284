"""`netplane up` and `netplane down`: start the supervisor daemon, show progress the way
kind does, and remove everything afterwards."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click

from netplane import netns
from netplane.cluster.client import api
from netplane.cluster.control.topology import build_topology, node_names
from netplane.cluster.node import plumbing
from netplane.cluster.node.children import kill_recorded
from netplane.cluster.node.sandbox import SandboxError, choose_cni
from netplane.cluster.statedir import DEFAULT_ROOT, StateDir, read_json

_last = [0.0]


def _step(text: str, started: float, took: float | None = None) -> None:
    """One progress line with the step's own duration (not the time since start)."""
    now = time.monotonic()
    if took is None:
        took = now - max(started, _last[0])
    _last[0] = now
    click.echo(f" \u2713 {text} ({took:.2f}s)")


def _wait_phase(state: StateDir, proc: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = (state.logs / "supervisor.log").read_text()[-2000:]
            raise click.ClickException(f"the supervisor exited ({proc.returncode}):\n{log}")
        try:
            status = api.call(state, {"op": "status"}, timeout=5)
        except (api.NotRunning, OSError):
            time.sleep(0.02)
            continue
        if status["phase"] == "running":
            return status
        if status["phase"].startswith("failed"):
            log = (state.logs / "supervisor.log").read_text()[-2000:]
            raise click.ClickException(f"cluster start {status['phase']}:\n{log}")
        time.sleep(0.02)
    log = (state.logs / "supervisor.log").read_text()[-2000:]
    raise click.ClickException(f"the cluster did not start within {timeout:.0f}s:\n{log}")


def wait_ready(state: StateDir, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = api.call(state, {"op": "status"})
        if status["pods"] and status["ready"] == status["pods"]:
            return status
        if time.monotonic() > deadline:
            hint = f" ({'; '.join(status['failures'])})" if status["failures"] else ""
            raise click.ClickException(
                f"{status['ready']}/{status['pods']} pods ready after {timeout:.0f}s{hint}; "
                "see `netplane get pods -A` and `netplane describe pod NAME`"
            )
        time.sleep(0.02)


def ensure_up(
    state: StateDir, cluster: str, nodes: str | None, cni_pref: str, wait: float, docs: list[dict]
) -> None:
    try:
        names = node_names(nodes)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    started = time.monotonic()
    if api.alive(state):
        status = api.call(state, {"op": "status"})
        running = tuple(n[0] for n in status["topology"]["nodes"])
        if nodes and running != names:
            raise click.ClickException(
                f'cluster "{cluster}" already runs with nodes {", ".join(running)}; '
                "run `netplane down` first to change them"
            )
        click.echo(f'Cluster "{cluster}" is already running (nodes: {", ".join(running)}).')
        if not docs:  # the learner's own pods may never be ready (a crash loop): no wait
            return
    else:
        old = read_json(state.path / "topology.json", None)
        if old is not None:  # the supervisor died: clear what it left, keep the objects
            kill_recorded(state.pids, str(state.path))
            plumbing.teardown(old["id"])
            for store in state.path.glob("cni/*/ipam"):  # those pods are gone: free their IPs
                shutil.rmtree(store)
        click.echo(f'Creating cluster "{cluster}" ...')
        topo = build_topology(cluster, str(state.path), names)
        try:
            cni = choose_cni(cni_pref)
        except SandboxError as e:
            raise click.ClickException(str(e)) from None
        state.create()
        (state.path / "topology.json").write_text(json.dumps(topo.to_json()))
        (state.path / "config.json").write_text(
            json.dumps({"cni": {"bridge": cni.bridge, "ipam": cni.ipam, "path": cni.path}})
        )
        _step(f"Preparing nodes {', '.join(names)} (CNI: {cni.bridge} + {cni.ipam})", started)
        with open(state.logs / "supervisor.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "netplane.cluster.daemon", str(state.path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        try:
            status = _wait_phase(state, proc, 60)
        except click.ClickException:
            teardown(state)  # nothing is left half-built
            raise
        proxies = status["proxies"]
        timings = status.get("timings", {})
        _step("Starting the cluster daemon", started, timings.get("daemon"))
        _step("Building the underlay and node routes", started, timings.get("network"))
        _step("Starting node runtimes and CNI agents", started, timings.get("runtimes"))
        _step(
            f"Starting kube-proxy replacement on {proxies} node(s)"
            if proxies
            else "Skipping proxies (netplane proxy run is not installed yet)",
            started,
            timings.get("proxies"),
        )
    if docs:
        results = api.call(state, {"op": "apply", "objects": docs})["results"]
        errors = [r for r in results if "error" in r]
        for r in errors:
            click.echo(f"error: {r['key'][0]} {r['key'][2]}: {r['error']}", err=True)
        _step(f"Applying {len(results) - len(errors)} object(s)", started)
    status = wait_ready(state, wait)
    _step(f"Waiting for pods: {status['ready']}/{status['pods']} ready", started)
    click.echo(
        f'Cluster "{cluster}" is up (state: {state.path}). '
        "Try: netplane get nodes -o wide; netplane get pods -A"
    )


def teardown(state: StateDir) -> int:
    topo = read_json(state.path / "topology.json", None)
    before = netns.names(f"{topo['id']}-") if topo else []
    if api.alive(state):
        daemon = read_json(state.pids / "supervisor.pid", {}).get("pid")
        api.call(state, {"op": "shutdown"})
        deadline = time.monotonic() + 60
        while state.socket.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        while daemon and Path(f"/proc/{daemon}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # the daemon exits right after its socket goes
    kill_recorded(state.pids, str(state.path))
    if topo:
        plumbing.teardown(topo["id"])
    if state.path.exists():
        shutil.rmtree(state.path)
    if state.path.parent == DEFAULT_ROOT:
        with contextlib.suppress(OSError):  # only when no other cluster uses it
            DEFAULT_ROOT.rmdir()
    return len(before)
