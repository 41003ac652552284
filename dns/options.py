"""What `netplane dns serve` was asked to do (shared by the supervisor and its workers).

Light on purpose: the command reads it before the rest of the server is imported."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from netplane.dns.records import ZoneConfig

DEFAULT_CACHE_BYTES = 16 << 20  # answer cache per worker


@dataclass(frozen=True, slots=True)
class ServeOptions:
    manifests: str | None
    listen: tuple[str, int]
    zone: ZoneConfig
    upstreams: tuple[tuple[str, int], ...] = ()
    autopath: bool = False
    host_search: tuple[str, ...] = ()
    metrics: tuple[str, int] | None = ("0.0.0.0", 9153)
    health: tuple[str, int] | None = ("0.0.0.0", 8080)
    ready: tuple[str, int] | None = ("0.0.0.0", 8181)
    workers: int = 1
    cache_bytes: int = DEFAULT_CACHE_BYTES  # per worker
    poll_interval: float = 0.05
    log_level: int = logging.WARNING
    kubeconfig: str | None = None
    in_cluster: bool = False


def kinds_needed(pods: str) -> set[str]:
    """What the API source must watch: namespaces (NODATA for an existing namespace, as
    CoreDNS), pods only when pod names or autopath need them."""
    kinds = {"Service", "EndpointSlice", "Namespace"}
    return kinds | ({"Pod"} if pods == "verified" else set())
