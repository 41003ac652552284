"""kube-proxy's metrics (same names, so existing dashboards work) and the /healthz answer.

`serve()` runs one small HTTP server per address: /metrics (Prometheus text) and /healthz
(kube-proxy's JSON: 200 while syncs succeed, 503 before the first one or when the last
success is older than twice the sync period).
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from netplane.state import ServiceKey, Snapshot

# kube-proxy's buckets for sync durations: 1 ms .. ~16 s, exponential
_SYNC_BUCKETS = tuple(0.001 * 2**i for i in range(15))
_PROGRAMMING_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        p = "kubeproxy_"
        self.sync = Histogram(
            p + "sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            registry=r,
            buckets=_SYNC_BUCKETS,
        )
        self.full = Histogram(
            p + "sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            registry=r,
            buckets=_SYNC_BUCKETS,
        )
        self.partial = Histogram(
            p + "sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            registry=r,
            buckets=_SYNC_BUCKETS,
        )
        self.programming = Histogram(
            p + "network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            registry=r,
            buckets=_PROGRAMMING_BUCKETS,
        )
        self.last = Gauge(
            p + "sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            registry=r,
        )
        self.failures = Counter(
            p + "sync_proxy_rules_iptables_restore_failures",
            "Cumulative proxy iptables restore failures (every failed restore, partial or not)",
            registry=r,
        )
        self.partial_failures = Counter(
            p + "sync_proxy_rules_iptables_partial_restore_failures",
            "Cumulative proxy iptables partial restore failures",
            registry=r,
        )
        self.nft_failures = Counter(
            p + "sync_proxy_rules_nftables_sync_failures",
            "Cumulative proxy nftables sync failures",
            registry=r,
        )
        self.rules = Gauge(
            p + "sync_proxy_rules_iptables_total",
            "Total number of iptables rules owned by kube-proxy",
            ["table"],
            registry=r,
        )
        self.endpoint_changes = Counter(
            p + "sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes",
            registry=r,
        )
        self.service_changes = Counter(
            p + "sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            registry=r,
        )
        self.no_local = Gauge(
            p + "sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            ["traffic_policy"],
            registry=r,
        )
        self.verify = Histogram(
            "netplane_proxy_verify_duration_seconds",
            "Reading the rules back and comparing them with what was written, in seconds",
            registry=r,
            buckets=_SYNC_BUCKETS,
        )
        self.drift = Counter(
            "netplane_proxy_drift",
            "Chains (and built-in jumps) found different from what was written, and repaired",
            ["table", "kind"],
            registry=r,
        )
        self.source_stale = Gauge(
            "netplane_source_stale",
            "1 while the object source is missing or unreadable and its last good objects "
            "are served",
            registry=r,
        )
        self._no_local: dict[ServiceKey, frozenset[str]] = {}
        self.last_success: float | None = None  # time.time() of the last successful sync

    def update_no_local(self, snapshot: Snapshot, keys: Iterable[ServiceKey], node: str) -> None:
        for key in keys:
            policies = no_local_endpoints(snapshot, key, node)
            if policies:
                self._no_local[key] = policies
            else:
                self._no_local.pop(key, None)
        for policy in ("internal", "external"):
            self.no_local.labels(policy).set(sum(policy in p for p in self._no_local.values()))

    def count_failure(self, backend: str, partial: bool) -> None:
        """A failed kernel transaction, in kube-proxy's counter for that backend."""
        if backend == "nftables":
            self.nft_failures.inc()
            return
        self.failures.inc()
        if partial:
            self.partial_failures.inc()

    def watch_source(self, source: object) -> None:
        """Report SOURCE's staleness (its `stale` attribute: a reason, or None) on scrape."""
        self.source_stale.set_function(lambda: 1.0 if getattr(source, "stale", None) else 0.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def no_local_endpoints(snapshot: Snapshot, key: ServiceKey, node: str) -> frozenset[str]:
    """Which Local traffic policies of a service have no ready endpoint on NODE."""
    service = snapshot.services.get(key)
    if service is None:
        return frozenset()
    wanted = set()
    if service.internal_traffic_policy == "Local":
        wanted.add("internal")
    external = service.type in ("NodePort", "LoadBalancer") or service.external_ips
    if service.external_traffic_policy == "Local" and external:
        wanted.add("external")
    if not wanted:
        return frozenset()
    local = any(
        e.ready and e.node_name == node for s in snapshot.slices_for(key) for e in s.endpoints
    )
    return frozenset() if local else frozenset(wanted)


def healthz(last_success: float | None, sync_period: float, now: float) -> tuple[int, dict]:
    def iso(t: float | None) -> str:
        return "" if t is None else datetime.fromtimestamp(t, UTC).isoformat()

    healthy = last_success is not None and now - last_success < 2 * max(sync_period, 1.0)
    body = {"lastUpdated": iso(last_success), "currentTime": iso(now), "nodeEligible": True}
    return (200 if healthy else 503), body


def parse_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"bad address {addr!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn): in a namespace without
        # DNS that blocks for many seconds before the daemon even starts
        socketserver.TCPServer.server_bind(self)
        host, self.server_port = self.server_address[:2]
        self.server_name = str(host)


def serve(
    addr: str, metrics: Metrics, health: Callable[[], tuple[int, dict]]
) -> ThreadingHTTPServer:
    """Serve /metrics and /healthz on ADDR in a daemon thread; `.shutdown()` stops it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/metrics":
                code, ctype, body = 200, CONTENT_TYPE_LATEST, metrics.render()
            elif path in ("/healthz", "/livez"):
                code, data = health()
                ctype, body = "application/json", json.dumps(data).encode()
            else:
                code, ctype, body = 404, "text/plain", b"not found\n"
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # scrapes are not worth a log line each
            pass

    host, port = parse_addr(addr)
    server = _Server((host, port), Handler)
    threading.Thread(  # a short poll: shutdown() waits for it, and stopping must be prompt
        target=server.serve_forever, args=(0.05,), name=f"http-{addr}", daemon=True
    ).start()
    return server
