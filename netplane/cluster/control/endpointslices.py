"""EndpointSlices as the endpoint-slice controller makes them (pure).

One slice per distinct resolved port list (a named targetPort can resolve to different
numbers in different pods), at most 100 endpoints each; conditions follow the pod:
ready = Ready and not terminating, serving = Ready, terminating = deletionTimestamp set.
"""

from __future__ import annotations

import hashlib

from netplane.model import Pod, Service

MANAGED_BY = "endpointslice-controller.k8s.io"
MAX_ENDPOINTS = 100


def selects(selector: tuple[tuple[str, str], ...], labels: tuple[tuple[str, str], ...]) -> bool:
    have = dict(labels)
    return all(have.get(k) == v for k, v in selector)


def _resolve(service: Service, pod: Pod) -> tuple[tuple[str, str, int], ...] | None:
    """(name, protocol, port) per service port for POD; None when a named port is missing."""
    out = []
    for sp in service.ports:
        target = sp.resolved_target_port
        if isinstance(target, str):
            numbers = [
                cp.container_port
                for c in pod.containers
                for cp in c.ports
                if cp.name == target and cp.protocol == sp.protocol
            ]
            if not numbers:
                continue  # the endpoint-slice controller skips the port for this pod
            target = numbers[0]
        out.append((sp.name, sp.protocol, target))
    return tuple(out) if out else None


def slice_name(service: str, ports: tuple, index: int) -> str:
    digest = hashlib.sha256(f"{service}/{ports}/{index}".encode()).hexdigest()
    letters = "".join(c for c in digest if c in "bcdfghjklmnpqrstvwxz2456789")[:5]
    return f"{service[:57]}-{letters}"


def endpoint_slices(service: Service, pods: list[Pod], pod_uids: dict[str, str]) -> list[dict]:
    """The managed slices for SERVICE (with a selector) given every pod of its namespace."""
    groups: dict[tuple, list[dict]] = {}
    for pod in sorted(pods, key=lambda p: p.name):
        if pod.namespace != service.namespace or not pod.pod_ips or pod.host_network:
            continue
        if pod.phase in ("Succeeded", "Failed") or not selects(service.selector or (), pod.labels):
            continue
        ports = _resolve(service, pod)
        if ports is None:
            continue
        ready = pod.ready and not pod.terminating
        if service.publish_not_ready_addresses:
            ready = True
        endpoint = {
            "addresses": [pod.pod_ips[0]],
            "conditions": {
                "ready": ready,
                "serving": pod.ready or service.publish_not_ready_addresses,
                "terminating": pod.terminating,
            },
            "nodeName": pod.node_name,
            "targetRef": {
                "kind": "Pod",
                "namespace": pod.namespace,
                "name": pod.name,
                "uid": pod_uids.get(pod.name, pod.uid),
            },
        }
        if pod.hostname and service.name == pod.subdomain:
            endpoint["hostname"] = pod.hostname
        groups.setdefault(ports, []).append(endpoint)
    if not groups:  # the controller keeps one empty slice carrying the service's ports
        groups[tuple((p.name, p.protocol, None) for p in service.ports)] = []
    slices = []
    for ports, endpoints in sorted(groups.items(), key=lambda kv: str(kv[0])):
        for start in range(0, max(len(endpoints), 1), MAX_ENDPOINTS):
            slices.append(
                {
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "name": slice_name(service.name, ports, start),
                        "namespace": service.namespace,
                        "labels": {
                            "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
                            "kubernetes.io/service-name": service.name,
                        },
                    },
                    "addressType": "IPv4",
                    "endpoints": endpoints[start : start + MAX_ENDPOINTS],
                    "ports": [
                        {"name": n, "protocol": proto, "port": port}
                        for n, proto, port in ports
                        if port is not None
                    ],
                }
            )
    return slices
