"""Synthetic clusters for the benchmarks: N ClusterIP services with E endpoints each.

Addresses are derived from the indexes so that every benchmark (and the probe that checks
the kernel) knows where service i lives without a lookup: ClusterIPs in 10.96.0.0/16, pod
IPs in 10.128.0.0/9 (8M addresses: 128 per service for 60k services). Manifests are JSON:
the manifest source parses JSON several times faster than YAML, and what is measured is
the data plane, not the YAML parser.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

from netplane.model import KubeObject, parse_object

NAMESPACE = "bench"
SERVICE_NET = ipaddress.IPv4Network("10.96.0.0/16")
POD_NET = ipaddress.IPv4Network("10.128.0.0/9")
SERVICE_PORT = 80
TARGET_PORT = 8080  # the probe's listener port; nothing listens on SERVICE_PORT
MAX_SERVICES = 60_000
MAX_ENDPOINTS_PER_SERVICE = 127  # + 1 address of stride: 60k x 128 fits POD_NET


def cluster_ip(i: int) -> str:
    if not 0 <= i < MAX_SERVICES:
        raise ValueError(f"service index {i} outside 0..{MAX_SERVICES - 1}")
    return str(SERVICE_NET.network_address + 256 + i)  # skip 10.96.0.x (the API server's)


def pod_ip(i: int, j: int) -> str:
    if not 0 <= j < MAX_ENDPOINTS_PER_SERVICE:
        raise ValueError(f"endpoint index {j} outside 0..{MAX_ENDPOINTS_PER_SERVICE - 1}")
    if not 0 <= i < MAX_SERVICES:
        raise ValueError(f"service index {i} outside 0..{MAX_SERVICES - 1}")
    return str(POD_NET.network_address + 1 + i * (MAX_ENDPOINTS_PER_SERVICE + 1) + j)


def service_name(i: int) -> str:
    return f"svc-{i:05d}"


def service_docs(
    i: int,
    endpoints: int | Sequence[int],
    ready: bool = True,
    node: str = "bench-node",
    ip_of: Callable[[int, int], str] = pod_ip,
    not_ready: Collection[int] = (),
) -> list:
    """The Service and EndpointSlice manifests of service I with ENDPOINTS endpoints (a
    count, or the endpoint indexes); the NOT_READY indexes are not ready."""
    indexes = range(endpoints) if isinstance(endpoints, int) else endpoints
    name = service_name(i)
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "clusterIP": cluster_ip(i),
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": TARGET_PORT}],
            "selector": {"app": name},
        },
    }
    eps = [
        {
            "addresses": [ip_of(i, j)],
            "conditions": {
                "ready": ready and j not in not_ready,
                "serving": ready and j not in not_ready,
                "terminating": False,
            },
            "nodeName": node,
        }
        for j in indexes
    ]
    return [svc, slice_doc(i, eps)]


def slice_doc(i: int, endpoints: list[dict[str, Any]]) -> dict[str, Any]:
    """The EndpointSlice manifest of service I (its one slice) with ENDPOINTS."""
    name = service_name(i)
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-1",
            "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}],
        "endpoints": endpoints,
    }


def cluster_docs(services: int, endpoints: int) -> list:
    return [d for i in range(services) for d in service_docs(i, endpoints)]


def objects(docs: Iterable[dict[str, Any]]) -> list[KubeObject]:
    return [o for d in docs for o in parse_object(d)]


def write_manifest(path: Path, docs: list) -> None:
    """Replace the manifest atomically: a follower must never read half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
    os.replace(tmp, path)
