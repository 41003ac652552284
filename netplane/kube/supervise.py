"""`netplane supervise`: run a node component, and clean the node when its DaemonSet goes.

A DaemonSet pod is stopped (SIGTERM) both on a rolling update or restart, where the node's
state (rules, the pod bridge) must stay for the next pod, and on `kubectl delete`, where it
must go. Kubernetes does not tell the pod which; the API does: after the component exits,
the supervisor asks whether the DaemonSet is gone or being deleted, and only then runs the
cleanup command. A failure to ask (API unreachable) counts as a restart: keeping state is the
safe mistake.
"""

from __future__ import annotations

import logging
import shlex
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import click

from netplane import signals

log = logging.getLogger(__name__)


def daemonset_removed(api: Any, namespace: str, name: str) -> bool:
    """True when the DaemonSet is gone or being deleted, or our identity was (its service
    account or role binding deleted with it by the same `kubectl delete -k`)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        ds = client.AppsV1Api(api).read_namespaced_daemon_set(name, namespace, _request_timeout=5)
    except ApiException as exc:
        return exc.status in (401, 403, 404)
    except Exception as exc:  # connection refused, timeouts: not evidence of removal
        log.warning("cannot tell whether %s/%s is being removed: %s", namespace, name, exc)
        return False
    return ds.metadata is not None and ds.metadata.deletion_timestamp is not None


@click.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--daemonset",
    required=True,
    metavar="NAMESPACE/NAME",
    help="The DaemonSet whose removal means uninstall.",
)
@click.option(
    "--cleanup", required=True, help="Command (one string) that removes the node's state."
)
@click.option(
    "--drain",
    default=None,
    help="On removal, keep COMMAND running until this command (one string) exits 0: the "
    "CNI agent serves the DELs of the pods deleted with it before the plugin goes.",
)
@click.option("--drain-timeout", default=45.0, show_default=True, type=float)
@click.option("--kubeconfig", type=click.Path(dir_okay=False), default=None)
@click.option("--in-cluster", is_flag=True, help="Ask the API with the pod's service account.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def supervise(
    daemonset: str,
    cleanup: str,
    drain: str | None,
    drain_timeout: float,
    kubeconfig: str | None,
    in_cluster: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND; on SIGTERM, if DAEMONSET is being removed: wait for DRAIN, stop COMMAND,
    run CLEANUP. Otherwise (a restart, an upgrade) just stop COMMAND."""
    namespace, sep, name = daemonset.partition("/")
    if not sep or not namespace or not name:
        raise click.BadParameter("NAMESPACE/NAME", param_hint="--daemonset")
    child = subprocess.Popen(list(command))
    stopping = threading.Event()
    signals.on_signals(lambda _: stopping.set(), signal.SIGTERM, signal.SIGINT)
    while child.poll() is None and not stopping.wait(0.5):
        pass
    removed = False
    if stopping.is_set():
        removed = _removed(kubeconfig, in_cluster, namespace, name)
        if removed and drain:
            _wait_for(drain, drain_timeout)
        child.send_signal(signal.SIGTERM)
    code = child.wait()
    if removed:
        log.warning("%s is being removed: %s", daemonset, cleanup)
        done = subprocess.run(shlex.split(cleanup), check=False)
        code = code or done.returncode
    else:
        log.info("%s stays: node state kept for the next pod", daemonset)
    sys.exit(code)


def _removed(kubeconfig: str | None, in_cluster: bool, namespace: str, name: str) -> bool:
    from netplane.kube.options import api_client

    try:
        return daemonset_removed(api_client(kubeconfig, in_cluster), namespace, name)
    except Exception as exc:
        log.warning("cannot reach the API to check for removal: %s", exc)
        return False


def _wait_for(check: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while subprocess.run(shlex.split(check), check=False).returncode != 0:
        if time.monotonic() > deadline:
            log.warning("still not drained after %.0f s: cleaning up anyway", timeout)
            return
        time.sleep(1)
