"""What the CNI DaemonSet asks the API server: the node's pod CIDRs, and whether it is being
uninstalled (so the agent's exit removes everything) or only restarted (so it keeps the
bridge and the pods' network for the next agent)."""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)


class NodeError(RuntimeError):
    """The node's pod CIDR cannot be had; the message says why and what to do."""


def pod_cidrs(api: Any, node: str, wait: float = 120.0) -> tuple[str, ...]:
    """`spec.podCIDRs` (or the older `spec.podCIDR`) of NODE, waiting up to WAIT seconds
    for kube-controller-manager (--allocate-node-cidrs) to assign one."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api)
    deadline = time.monotonic() + wait
    while True:
        try:
            spec = core.read_node(node, _request_timeout=10).spec
        except ApiException as exc:
            if exc.status in (401, 403, 404):
                raise NodeError(f"cannot read node {node!r}: {exc.status} {exc.reason}") from None
            spec = None
            log.warning("reading node %s: %s", node, exc.reason)
        cidrs: tuple[str, ...] = ()
        if spec is not None:
            cidrs = tuple(spec.pod_cid_rs or ([spec.pod_cidr] if spec.pod_cidr else []))
        if cidrs:
            return cidrs
        if time.monotonic() > deadline:
            raise NodeError(
                f"node {node!r} has no spec.podCIDR after {wait:.0f} s: run "
                "kube-controller-manager with --allocate-node-cidrs (kubeadm does with "
                "--pod-network-cidr), or pass --subnet"
            )
        time.sleep(1)


def daemonset_removed(api: Any, namespace: str, name: str) -> bool:
    """True when the DaemonSet is gone or being deleted, or our identity was (its service
    account or role binding deleted with it): `kubectl delete -k deploy/`. Any other
    failure (API unreachable) counts as a restart, which keeps the node's state."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        ds = client.AppsV1Api(api).read_namespaced_daemon_set(name, namespace, _request_timeout=5)
    except ApiException as exc:
        return exc.status in (401, 403, 404)
    except Exception as exc:  # connection refused, timeouts: not evidence of removal
        log.warning("cannot tell whether %s/%s is being removed: %s", namespace, name, exc)
        return False
    return ds.metadata.deletion_timestamp is not None
