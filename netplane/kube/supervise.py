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
from typing import Any

import click

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
@click.option("--kubeconfig", type=click.Path(dir_okay=False), default=None)
@click.option("--in-cluster", is_flag=True, help="Ask the API with the pod's service account.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def supervise(
    daemonset: str, cleanup: str, kubeconfig: str | None, in_cluster: bool, command: tuple[str, ...]
) -> None:
    """Run COMMAND; when it exits, run CLEANUP if DAEMONSET is being removed."""
    namespace, sep, name = daemonset.partition("/")
    if not sep or not namespace or not name:
        raise click.BadParameter("NAMESPACE/NAME", param_hint="--daemonset")
    child = subprocess.Popen(list(command))

    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    code = child.wait()
    from netplane.kube.options import api_client

    try:
        removed = daemonset_removed(api_client(kubeconfig, in_cluster), namespace, name)
    except Exception as exc:
        log.warning("cannot reach the API to check for removal: %s", exc)
        removed = False
    if removed:
        log.warning("%s is being removed: %s", daemonset, cleanup)
        done = subprocess.run(shlex.split(cleanup), check=False)
        code = code or done.returncode
    else:
        log.info("%s stays: node state kept for the next pod", daemonset)
    sys.exit(code)
