"""What the CNI DaemonSet asks the API server: the node's pod CIDRs."""

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
            cidrs = tuple(spec.pod_cidrs or ([spec.pod_cidr] if spec.pod_cidr else []))
        if cidrs:
            return cidrs
        if time.monotonic() > deadline:
            raise NodeError(
                f"node {node!r} has no spec.podCIDR after {wait:.0f} s: run "
                "kube-controller-manager with --allocate-node-cidrs (kubeadm does with "
                "--pod-network-cidr), or pass --subnet"
            )
        time.sleep(1)
