"""`netplane proxy run`: manifests -> ClusterState -> ChangeTracker -> sync loop.

The loop syncs when something changed (no more often than --min-sync-period, so bursts of
changes are batched into one restore), does a full sync every --sync-period and after a
failure, and watches the canary chains to notice an external flush. SIGTERM/SIGINT stop it
and leave the rules in place: the next daemon's first sync writes the same rules, so a
restart never interrupts traffic.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass

from netplane.kube import source_from_options
from netplane.proxy._conntrack import Conntrack
from netplane.proxy._iptables import Iptables, detect_variant
from netplane.proxy.metrics import Metrics, healthz, serve
from netplane.proxy.render import ProxyConfig
from netplane.proxy.sync import Syncer, SyncError
from netplane.sources import start_source
from netplane.state import ChangeTracker, ClusterState

log = logging.getLogger(__name__)

CANARY_INTERVAL = 5.0  # seconds between checks for an external flush
TICK = 0.25  # longest sleep, so a stop request is noticed quickly


@dataclass
class SyncLoop:
    """The scheduling half of the daemon, separate from process setup so tests can drive it."""

    state: ClusterState
    tracker: ChangeTracker
    syncer: Syncer
    metrics: Metrics
    node: str
    min_sync_period: float = 1.0
    sync_period: float = 30.0

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set() and not self.state.wait_synced(TICK):
            pass
        last_start = last_full = next_canary = float("-inf")
        while not stop.is_set():
            now = time.monotonic()
            full = self.syncer.needs_full or now - last_full >= self.sync_period
            if full or self.tracker.pending():
                delay = last_start + self.min_sync_period - now
                if delay > 0:
                    stop.wait(min(delay, TICK))
                    continue
                last_start = now
                if self.sync_once(full) and full:
                    last_full = now
                continue
            if now >= next_canary:
                next_canary = now + CANARY_INTERVAL
                if self.syncer.in_sync and not self.syncer.canary_present():
                    log.warning("canary chain is gone (tables flushed externally): full resync")
                    self.syncer.needs_full = True
                    continue
            self.tracker.wait(min(TICK, max(0.0, last_full + self.sync_period - now)))

    def sync_once(self, full: bool) -> bool:
        changes = self.tracker.pop()
        snapshot = self.state.snapshot()
        start = time.monotonic()
        try:
            result = self.syncer.sync(snapshot, changes, full=full)
        except SyncError as e:
            (self.metrics.partial_failures if e.partial else self.metrics.failures).inc()
            log.error("sync failed, the next one will be full: %s", e)
            return False
        done = time.monotonic()
        m = self.metrics
        m.sync.observe(done - start)
        (m.full if result.full else m.partial).observe(done - start)
        m.endpoint_changes.inc(len(changes.endpoints))
        m.service_changes.inc(len(changes.services))
        for first in changes.first_change.values():
            m.programming.observe(max(0.0, done - first))
        for table, count in result.rules.items():
            m.rules.labels(table).set(count)
        m.update_no_local(snapshot, result.keys, self.node)
        m.last_success = time.time()
        m.last.set(m.last_success)
        log.info(
            "%s sync: %d services rendered, %d chains written, %d deleted, %d restores, "
            "%.3f s (%.3f s compute)",
            "full" if result.full else "partial",
            len(result.keys),
            result.chains_written,
            result.chains_deleted,
            result.restores,
            result.total_seconds,
            result.compute_seconds,
        )
        return True


def run_daemon(
    manifests: str | None,
    node: str,
    cluster_cidr: str | None = None,
    masquerade_all: bool = False,
    family: str = "ipv4",
    backend: str = "iptables",
    iptables_variant: str = "auto",
    metrics_addr: str = "127.0.0.1:10249",
    healthz_addr: str = "0.0.0.0:10256",
    min_sync_period: float = 1.0,
    sync_period: float = 30.0,
    kubeconfig: str | None = None,
    in_cluster: bool = False,
) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code."""
    # First, so that a usage error comes before any iptables work. Nodes: for their IPs.
    source = source_from_options(
        manifests, kubeconfig, in_cluster, {"Service", "EndpointSlice", "Node"}
    )
    if backend != "iptables":
        raise ValueError(f"unsupported backend {backend!r}")
    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        log.info("%s: stopping, rules stay in place", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    config = ProxyConfig(
        node_name=node, family=family, cluster_cidr=cluster_cidr, masquerade_all=masquerade_all
    )
    variant = detect_variant(iptables_variant, family)
    syncer = Syncer(config, Iptables(variant, family), Conntrack(family))
    state = ClusterState()
    tracker = state.tracker()
    metrics = Metrics()
    servers = []
    for addr in dict.fromkeys((metrics_addr, healthz_addr)):
        try:
            servers.append(
                serve(
                    addr, metrics, lambda: healthz(metrics.last_success, sync_period, time.time())
                )
            )
        except (OSError, ValueError) as e:
            log.error("cannot serve metrics/healthz on %s: %s", addr, e)
            for server in servers:
                server.server_close()
            return 1
    _, stop_source = start_source(source, state)
    log.info(
        "proxy for node %s: %s (%s variant), source %s, metrics %s, healthz %s",
        node,
        family,
        variant,
        manifests or ("in-cluster API" if in_cluster else kubeconfig),
        metrics_addr,
        healthz_addr,
    )
    try:
        SyncLoop(state, tracker, syncer, metrics, node, min_sync_period, sync_period).run(stop)
    finally:
        stop_source.set()
        for server in servers:
            server.shutdown()
            server.server_close()
    return 0
