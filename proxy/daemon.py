"""`netplane proxy run`: manifests -> ClusterState -> ChangeTracker -> sync loop -> backend.

The loop owns the schedule, the backend (proxy/backend.py) the kernel:
- a sync when something changed: two may run back to back, then one per --min-sync-period
  (kube-proxy's bounded-frequency runner; bursts of changes are batched into one
  transaction); every --sync-period a sync with nothing to write (it refreshes
  /healthz). These syncs are partial: they write only what changed.
- a full sync at start, after a failed transaction (continuing from the failed chunk, with
  back-off), and every --full-sync-period (an hour: kube-proxy's own rhythm).
- every second an O(1) look at the kernel (`kernel_changed`); when somebody else wrote to
  our tables, or every --verify-period anyway, the rules are read back and what drifted is
  repaired. The period, unless given, is 100 times the CPU time the last read-back took
  (1% of a core; 30 s to 10 min: 3.5 s of CPU at 10k services on the nft variant). A
  periodic read-back yields to changes; when foreign writes turn out harmless (a CNI
  plugin adding its own rules), the next read-back they trigger waits ten times its CPU
  time; meanwhile each foreign write gets only the backend's cheap `intact()` check (are
  the jumps into our chains, or our tables, still there?), so a flush is repaired at once.
SIGTERM/SIGINT stop it between two transactions and leave the rules in place: the next
daemon's first sync writes the same rules, so a restart never interrupts traffic.
"""

from __future__ import annotations

import gc
import logging
import resource
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from netplane import signals
from netplane.kube import source_from_options
from netplane.kube.source import Tuning
from netplane.proxy._codec import codec
from netplane.proxy._conntrack import Conntrack
from netplane.proxy.backend import Backend, SyncError, SyncInterrupted, VerifyResult
from netplane.proxy.render import ProxyConfig
from netplane.sources import start_source, wait_first_load
from netplane.state import ChangeTracker, ClusterState

if TYPE_CHECKING:  # imported once the API source is started (run_daemon)
    from netplane.proxy.metrics import Metrics

log = logging.getLogger(__name__)

TICK = 0.1  # longest sleep, so a stop request is noticed quickly
PROBE_PERIOD = 1.0  # seconds between O(1) looks for foreign writes
VERIFY_BUDGET = 100  # automatic read-back period: this many times its CPU time
VERIFY_PERIOD_RANGE = (30.0, 600.0)  # seconds: bounds of the automatic period
_WATCH = 0.05  # seconds between looks for a stop (or a change) during a read-back
_YIELDED = VerifyResult((), 0, 0, 0.0)  # verify_once: cut short by a change
MAX_BACKOFF = 30.0  # seconds, between failed syncs that got nowhere
SYNC_BURST = 2  # syncs that may run back to back before --min-sync-period applies
# The API source's first lists: unpaged from the API server's watch cache (resourceVersion=0),
# as kube-proxy's informers list. At 10k services this is 1.3 s of wall time instead of
# 1.5-1.7 s in pages of 500 (one TLS connection per page; load ~1.5) for ~15 MB more peak RSS.
_LIST = Tuning(page_size=0)


@dataclass
class SyncLoop:
    """The scheduling half of the daemon, separate from process setup so tests can drive it."""

    state: ClusterState
    tracker: ChangeTracker
    backend: Backend
    metrics: Metrics
    node: str
    min_sync_period: float = 1.0
    sync_period: float = 30.0
    full_sync_period: float = 3600.0  # 0: only when needed
    verify_period: float = 0.0  # 0: from the read-back's cost (VERIFY_BUDGET)
    probe_period: float = PROBE_PERIOD
    # once, after the first successful sync (the other backend's cleanup)
    after_first_sync: Callable[[], None] | None = None
    _failures: int = 0  # consecutive failed syncs that got nowhere
    _retry_at: float = float("-inf")
    _unprogrammed: dict = field(default_factory=dict)  # first change times of failed syncs
    _rules: int = 0  # rules in place after the last sync
    _verify_cpu: float | None = None  # CPU seconds of the last complete read-back
    _verify_wall: float = 0.0

    def _verify_period(self) -> float:
        """--verify-period, or 100x the last read-back's CPU time (before the first one,
        guessed from the rule count: ~20 us of CPU per rule, measured on the nft variant)."""
        if self.verify_period:
            return self.verify_period
        cpu = self._verify_cpu if self._verify_cpu is not None else self._rules * 20e-6
        low, high = VERIFY_PERIOD_RANGE
        return min(high, max(low, VERIFY_BUDGET * cpu))

    def run(self, stop: threading.Event) -> None:
        wait_first_load(self.state, stop, TICK)  # the collector back if that takes long
        now = time.monotonic()
        budget = _Bucket(self.min_sync_period, SYNC_BURST)
        last_sync = last_full = now
        next_probe = now + self.probe_period
        next_verify = float("inf")  # the first periodic read-back: a period after a sync
        retry_verify = float("-inf")  # a periodic read-back that yielded: not before this
        quiet_until = float("-inf")  # no probe-triggered read-back before this
        try:
            while not stop.is_set():
                now = time.monotonic()
                hourly = 0 < self.full_sync_period <= now - last_full
                if (
                    self.backend.needs_full
                    or hourly
                    or self.tracker.pending()
                    or now - last_sync >= self.sync_period
                ):
                    start_at = max(now + budget.wait(now), self._retry_at)
                    if now < start_at:
                        stop.wait(min(start_at - now, TICK))
                        continue
                    budget.take(now)
                    full = hourly or self.backend.needs_full
                    if self.sync_once(hourly, stop):
                        last_sync = now
                        if full:
                            last_full = now
                        if next_verify == float("inf"):
                            next_verify = time.monotonic() + self._verify_period()
                    continue
                if now >= next_probe:
                    next_probe = now + self.probe_period
                    changed = self.backend.kernel_changed()
                    if changed and now < quiet_until and self.backend.intact():
                        # Quiet: the last foreign writes were harmless and a read-back costs
                        # seconds at 10k services. But a flush of our rules must not wait
                        # out the window (it was 30-130 s): the sentinel (ms, once per
                        # foreign write) sees a flushed table or deleted ruleset at once.
                        changed = False
                    if changed or now >= max(next_verify, retry_verify):
                        # a periodic read-back (seconds at 10k services) yields to changes
                        # until it is a period late; one a foreign write asked for does not
                        yielding = not changed and now < next_verify + self._verify_period()
                        cpu, start = _cpu(), time.monotonic()
                        found = self.verify_once(stop, yielding)
                        cpu, wall = _cpu() - cpu, time.monotonic() - start
                        if found is _YIELDED:  # again once changes have stopped a while
                            retry_verify = time.monotonic() + max(5.0, 2 * self._verify_wall)
                            continue
                        if found is not None and found.read_bytes:
                            self._verify_cpu, self._verify_wall = cpu, wall
                        next_verify = time.monotonic() + self._verify_period()
                        if changed and found is not None and not found.drift:
                            quiet_until = time.monotonic() + VERIFY_BUDGET / 10 * cpu
                        continue
                wait = min(TICK, next_probe - now, last_sync + self.sync_period - now)
                self.tracker.wait(max(0.0, wait))
        except SyncInterrupted as e:
            log.info("stopped during a sync (%s); the rules in place are consistent", e)

    def sync_once(self, full: bool = False, stop: threading.Event | None = None) -> bool:
        changes = self.tracker.pop()
        for key, first in changes.first_change.items():
            self._unprogrammed.setdefault(key, first)
        snapshot = self.state.snapshot()
        start = time.monotonic()
        m = self.metrics
        if (full or self.backend.needs_full) and gc.get_freeze_count():
            # a full sync takes seconds and changes wait for it anyway: the time to give
            # the heap frozen at the last one back to the collector and collect it once
            gc.unfreeze()
            gc.collect()
        try:
            result = self.backend.sync(snapshot, changes, full=full, stop=stop)
        except SyncError as e:
            gc.enable()  # off until the first sync (run_daemon)
            m.count_failure(self.backend.name, e.partial)
            self._failures = 1 if e.progress else self._failures + 1
            delay = min(MAX_BACKOFF, self.min_sync_period * 2 ** (self._failures - 1))
            self._retry_at = time.monotonic() + delay
            log.error("sync failed (the next one, in %.1f s, is full): %s", delay, e)
            return False
        self._failures = 0
        self._retry_at = float("-inf")
        if result.full:
            # The objects a full sync leaves (the cluster's objects, every service's rules:
            # ~230k at 10k services with the iptables backend, ~1M with nftables) live
            # until the next one; a full collection walking them (0.17 / 0.75 s of CPU,
            # 0.5-1.9 s of wall time at load 5-7, holding the GIL so even the watch waits)
            # is a pause that lands on whichever change is in flight. Frozen, later
            # collections see only what changed since. Not collected first: that was the
            # same pause, right when the first change after a full sync comes, and it
            # found no garbage (0 unreachable at 10k, both backends). What turns cyclic
            # garbage while frozen is reclaimed at the next full sync (above).
            gc.freeze()
        gc.enable()  # off until the first sync (run_daemon); frozen first, so that the
        # render's ~1M new objects are never walked by a collection
        if self.after_first_sync is not None:
            once, self.after_first_sync = self.after_first_sync, None
            once()
        done = time.monotonic()
        m.sync.observe(done - start)
        (m.full if result.full else m.partial).observe(done - start)
        m.endpoint_changes.inc(len(changes.endpoints))
        m.service_changes.inc(len(changes.services))
        for first in self._unprogrammed.values():
            m.programming.observe(max(0.0, done - first))
        self._unprogrammed.clear()
        for table, count in result.rules.items():
            m.rules.labels(table).set(count)
        self._rules = sum(result.rules.values())
        m.update_no_local(snapshot, result.keys, self.node)
        m.last_success = time.time()
        m.last.set(m.last_success)
        if result.restores or result.full:
            log.info(
                "%s sync: %d services rendered, %d chains written, %d deleted, %d restores, "
                "%.3f s (%.3f s compute)",
                "resumed full" if result.resumed else "full" if result.full else "partial",
                len(result.keys),
                result.chains_written,
                result.chains_deleted,
                result.restores,
                result.total_seconds,
                result.compute_seconds,
            )
        return True

    def verify_once(
        self, stop: threading.Event | None = None, yielding: bool = False
    ) -> VerifyResult | None:
        """Read back and repair; None when the repair failed (the next sync is full),
        `_YIELDED` when YIELDING and a change arrived meanwhile (it was cut short)."""
        m = self.metrics
        interrupt = threading.Event()
        done = threading.Event()

        def watch() -> None:  # turns a stop, or a change when yielding, into INTERRUPT
            while not done.is_set():
                if (stop is not None and stop.is_set()) or (yielding and self.tracker.wait(_WATCH)):
                    interrupt.set()
                    return
                if not yielding:
                    done.wait(_WATCH)

        watcher = threading.Thread(target=watch, name="verify-watch", daemon=True)
        watcher.start()
        try:
            result = self.backend.verify(interrupt)
        except SyncInterrupted:
            if stop is not None and stop.is_set():
                raise
            log.debug("read-back cut short by a change; again when the changes are in")
            return _YIELDED
        except SyncError as e:
            m.count_failure(self.backend.name, True)
            log.error("repairing drifted rules failed (the next sync is full): %s", e)
            return None
        finally:
            done.set()
            watcher.join()
        m.verify.observe(result.seconds)
        for d in result.drift:
            m.drift.labels(d.table, d.kind).inc()
        if result.drift:
            log.info("repaired %d chains in %.3f s", result.repaired, result.seconds)
        else:
            log.debug("verified %d bytes of rules in %.3f s", result.read_bytes, result.seconds)
        return result


class _Bucket:
    """kube-proxy's bounded-frequency runner: up to BURST syncs at once, then one per
    PERIOD (a token bucket), so a change that follows another within the period is not
    held back while a burst lasts, and a storm of changes is batched."""

    def __init__(self, period: float, burst: int) -> None:
        self.period = period
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def _refill(self, now: float) -> None:
        if self.period > 0:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) / self.period)
        else:
            self.tokens = float(self.burst)
        self.stamp = now

    def wait(self, now: float) -> float:
        """Seconds until a sync may start."""
        self._refill(now)
        return max(0.0, (1 - self.tokens) * self.period)

    def take(self, now: float) -> None:
        self._refill(now)
        self.tokens -= 1


def _cpu() -> float:
    """CPU seconds of this thread and of the tools it waited for (a read-back's cost)."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.thread_time() + kids.ru_utime + kids.ru_stime


def make_backend(
    name: str, config: ProxyConfig, iptables_variant: str = "auto"
) -> tuple[Backend, str]:
    """The backend NAME for CONFIG's family, and a word for the log about it."""
    if name == "nftables":
        from netplane.proxy.nft.sync import NftSyncer

        return NftSyncer(config, conntrack=Conntrack(config.family)), "netlink"
    if name != "iptables":
        raise ValueError(f"unsupported backend {name!r}")
    from netplane.proxy._iptables import Iptables, detect_variant
    from netplane.proxy.sync import Syncer

    variant = detect_variant(iptables_variant, config.family)
    runner = Iptables(variant, config.family)
    return Syncer(config, runner, Conntrack(config.family)), f"{variant} variant"


def clean_other_backends(name: str, family: str) -> None:
    """Remove what the other backend left in this family (a node switching backends), as
    kube-proxy does at start. Called after our first sync: until then the old rules keep
    serving, and both sets DNAT alike, so the switch has no gap."""
    if name == "nftables":
        from netplane.proxy.sync import cleanup_family

        cleanup_family(family)
    else:
        from netplane.proxy.nft.sync import cleanup as nft_cleanup

        try:
            if nft_cleanup(families=("ip6" if family == "ipv6" else "ip",)):
                log.info("removed the nftables backend's table (%s)", family)
        except OSError as e:
            log.warning("cannot look for the nftables backend's table: %s", e)


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
    full_sync_period: float = 3600.0,
    verify_period: float = 0.0,
    kubeconfig: str | None = None,
    in_cluster: bool = False,
) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code."""
    # First, so that a usage error comes before any kernel work. Nodes: for their IPs.
    source = source_from_options(
        manifests, kubeconfig, in_cluster, {"Service", "EndpointSlice", "Node"}, codec, _LIST
    )
    stop = threading.Event()

    def on_signal(signum: int) -> None:
        log.info("%s: stopping, rules stay in place", signal.Signals(signum).name)
        stop.set()

    signals.on_signals(on_signal, signal.SIGTERM, signal.SIGINT)
    config = ProxyConfig(
        node_name=node, family=family, cluster_cidr=cluster_cidr, masquerade_all=masquerade_all
    )
    state = ClusterState()
    tracker = state.tracker()
    # The collector stays off until the first sync has frozen what it leaves (sync_once):
    # the lists and the full render allocate ~1M long-lived objects at 10k services, and
    # the collections they trigger walk them again and again (~0.5 s of CPU) for no garbage.
    gc.disable()
    # The source first: the API server's time to answer the lists overlaps our setup.
    _, stop_source = start_source(source, state)
    servers: list = []
    try:
        # what only the sync loop needs is imported while the API server answers
        from netplane.proxy.metrics import Metrics, healthz, serve

        kernel, detail = make_backend(backend, config, iptables_variant)
        metrics = Metrics()
        metrics.watch_source(source)
        for addr in dict.fromkeys((metrics_addr, healthz_addr)):
            try:
                servers.append(
                    serve(
                        addr,
                        metrics,
                        lambda: healthz(metrics.last_success, sync_period, time.time()),
                    )
                )
            except (OSError, ValueError) as e:
                log.error("cannot serve metrics/healthz on %s: %s", addr, e)
                return 1
        log.info(
            "proxy for node %s: %s, %s backend (%s), source %s, metrics %s, healthz %s",
            node,
            family,
            backend,
            detail,
            manifests or ("in-cluster API" if in_cluster else kubeconfig),
            metrics_addr,
            healthz_addr,
        )
        loop = SyncLoop(
            state,
            tracker,
            kernel,
            metrics,
            node,
            min_sync_period=min_sync_period,
            sync_period=sync_period,
            full_sync_period=full_sync_period,
            verify_period=verify_period,
            after_first_sync=lambda: clean_other_backends(backend, family),
        )
        loop.run(stop)
    finally:
        stop_source.set()
        for server in servers:
            server.shutdown()
            server.server_close()
        gc.enable()
    return 0
