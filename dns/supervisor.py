"""`netplane dns serve`: one source, one catalog, forked workers that are restarted.

The supervisor is the only process that talks to the API server (one list and one watch
per kind for the whole pod) and the only one that builds the catalog. Workers are forked
from it, so they start with the catalog already in memory and share its pages; later
changes go to them as small deltas over their pipes. SO_REUSEPORT spreads the clients
over the workers.

Before the first complete load the workers answer SERVFAIL (never a wrong NXDOMAIN);
once the catalog is built a new generation is forked with it and the first one retired.
A worker that dies is replaced at once (counted in
`netplane_dns_worker_restarts_total`); only CRASH_LIMIT deaths within CRASH_WINDOW
seconds stop the server, with /health saying why. /ready is 200 once every worker
answers from a complete catalog.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, cast

from netplane import signals
from netplane.dns.catalog import Catalog, Delta, build_catalog, delta
from netplane.dns.load import Loading
from netplane.dns.metrics import StatsCollector
from netplane.dns.options import ServeOptions
from netplane.dns.probes import ProbeServer, Respond
from netplane.dns.server import run_worker
from netplane.sources import wait_first_load
from netplane.state import ClusterState

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)
CRASH_LIMIT = 5  # worker deaths ...
CRASH_WINDOW = 60.0  # ... within this many seconds stop the server
GIVE_UP_LINGER = 3.0  # /health answers 503 this long before the process exits
RETIRE_DEADLINE = 5.0  # a retired worker gets SIGKILL after this
PR_SET_PDEATHSIG = 1


@dataclass(eq=False)
class Worker:
    slot: int
    pid: int
    conn: Connection
    generation: int
    up: bool = False
    synced: bool = False
    retired_at: float | None = None


@dataclass
class _Health:
    healthy: bool = True
    reason: str = ""
    ready: bool = False
    collector: StatsCollector = field(default_factory=lambda: StatsCollector(""))


class Supervisor:
    def __init__(self, opts: ServeOptions, health: _Health) -> None:
        self.opts = opts
        self.health = health
        self.lock = threading.Lock()  # catalog + generation + worker list, against deltas
        self.catalog: Catalog | None = None
        self.generation = 0
        self.workers: dict[int, Worker] = {}  # pid -> worker (current and retiring)
        self.crashes: list[float] = []
        self.failed: str = ""  # a fatal error reported by a worker
        self.stopping = threading.Event()  # set by `run`'s stop: no worker is replaced then
        # a new catalog wakes the main loop at once (it would sleep up to 0.1 s otherwise)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # ---- forking ---------------------------------------------------------------------

    def fork(self, slot: int) -> Worker:
        """A new worker for `slot` with the current catalog (call with the lock held)."""
        parent, child = Pipe()
        gc.freeze()  # the child must never collect (and so write to) the shared heap
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            gc.enable()  # a worker collects its own garbage (the first load's pause is not its)
            status = 1
            try:
                _into_child(child.fileno())
                assert self.catalog is not None  # published before workers are forked
                status = run_worker(self.opts, self.catalog, child, slot)
            except BaseException:
                log.exception("worker %d failed", slot)
            finally:
                os._exit(status)
        gc.unfreeze()
        child.close()
        worker = Worker(slot, pid, parent, self.generation)
        self.workers[pid] = worker
        return worker

    def current(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.retired_at is None]

    def publish(self, catalog: Catalog, d: Delta | None = None) -> None:
        """Install a new catalog: a first (or rebuilt) one starts a new generation of
        workers; a delta goes to every worker of the current generation."""
        with self.lock:
            self.catalog = catalog
            if d is None:
                self.generation += 1
                with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
                    os.write(self._wake_w, b"!")
                return
            for w in self.current():
                if w.generation == self.generation:
                    with contextlib.suppress(OSError):
                        w.conn.send(("delta", d))

    # ---- the main loop ---------------------------------------------------------------

    def run(self, stop: threading.Event) -> int:
        self.stopping = stop
        with self.lock:
            for slot in range(self.opts.workers):
                self.fork(slot)
        while not stop.is_set():
            self._messages()
            self._reap()
            if self.failed or not self.health.healthy:
                break
            self._roll()
            current = self.current()
            self.health.ready = len(current) == self.opts.workers and all(
                w.up and w.synced and w.generation == self.generation for w in current
            )
        if not self.health.healthy:
            log.error("%s", self.health.reason)
            self.health.ready = False
        self.stop_all()
        if not self.health.healthy:
            stop.wait(GIVE_UP_LINGER)
        return 1 if self.failed or not self.health.healthy else 0

    def _messages(self) -> None:
        conns = {w.conn: w for w in self.workers.values()}
        for ready in wait([*conns, self._wake_r], timeout=0.1):
            if ready == self._wake_r:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 64)
                continue
            conn = cast(Connection, ready)
            w = conns[conn]
            try:
                kind, payload = conn.recv()
            except (EOFError, OSError):
                continue  # it died: _reap replaces it
            if kind == "up":
                w.up, w.synced = True, payload
            elif kind == "stats":
                w.synced = payload.synced
                self.health.collector.workers[w.pid] = payload
            elif kind == "error":
                log.error("%s", payload)
                self.failed = payload

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            w = self.workers.pop(pid, None)
            if w is None:
                continue
            w.conn.close()
            self.health.collector.retire(pid)
            # a worker signalled with the supervisor (systemd's stop, pkill) is not replaced
            if w.retired_at is not None or self.failed or self.stopping.is_set():
                continue
            self._crashed(w, status)

    def _crashed(self, w: Worker, status: int) -> None:
        now = time.monotonic()
        self.crashes = [t for t in self.crashes if now - t < CRASH_WINDOW] + [now]
        how = (
            f"killed by signal {os.WTERMSIG(status)}"
            if os.WIFSIGNALED(status)
            else f"exited with status {os.waitstatus_to_exitcode(status)}"
        )
        if len(self.crashes) >= CRASH_LIMIT:
            self.health.healthy = False
            self.health.reason = (
                f"{len(self.crashes)} DNS worker crashes within {CRASH_WINDOW:.0f} s "
                f"(the last {how}): giving up"
            )
            return
        self.health.collector.restarts += 1
        with self.lock:
            new = self.fork(w.slot)
        log.warning("DNS worker %d (pid %d) %s; restarted as pid %d",
                    w.slot, w.pid, how, new.pid)  # fmt: skip

    def _roll(self) -> None:
        """A new generation replaces the old one slot by slot once it is up."""
        with self.lock:
            current = self.current()
            stale = [w for w in current if w.generation != self.generation]
            if not stale:
                return
            fresh = {w.slot for w in current if w.generation == self.generation}
            for w in stale:
                if w.slot not in fresh:
                    self.fork(w.slot)
        now = time.monotonic()
        by_slot = {w.slot: w for w in self.current() if w.generation == self.generation}
        for w in stale:
            new = by_slot.get(w.slot)
            if new is not None and new.up:
                w.retired_at = now
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGTERM)
        for w in list(self.workers.values()):
            if w.retired_at is not None and now - w.retired_at > RETIRE_DEADLINE:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        now = time.monotonic()
        for w in list(self.workers.values()):
            w.retired_at = w.retired_at or now
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGTERM)
        deadline = now + RETIRE_DEADLINE
        while self.workers and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.02)
        for w in list(self.workers.values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(w.pid, 0)
        self.workers.clear()


def _into_child(keep_fd: int) -> None:
    """Right after fork: keep only our pipe and stdio, die with the supervisor."""
    for fd in (keep_fd,):
        os.set_inheritable(fd, False)
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, os.sysconf("SC_OPEN_MAX"))
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    signals.forget()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)


def follow(state: ClusterState, sup: Supervisor, stop: threading.Event) -> None:
    """Build the catalog once the objects are loaded, then send each change as a delta."""
    config = sup.opts.zone
    tracker = state.tracker()
    if not wait_first_load(state, stop, 0.2):  # the collector back if that takes long
        return
    tracker.pop()
    serial = int(time.time())
    snap = state.snapshot()

    catalog = build_catalog(snap, config, serial)
    gc.freeze()  # the load's objects are long-lived: the first collection skips them
    gc.enable()  # off since load.start()
    sup.publish(catalog)
    log.info("catalog built: %d services, %d reverse names", len(snap.services),
             len(catalog.reverse))  # fmt: skip
    while not stop.is_set():
        if not tracker.wait(0.5):
            continue
        changes = tracker.pop()
        serial = max(serial + 1, int(time.time()))
        new_snap = state.snapshot()
        d = delta(catalog, snap, new_snap, changes, serial)
        catalog, snap = catalog.apply(d), new_snap
        sup.publish(catalog, d)


def _metrics(collector: StatsCollector) -> Callable[[], tuple[bytes, str]]:
    """The /metrics page; prometheus_client is imported at the first scrape, not at start."""
    lock = threading.Lock()
    registry: list[CollectorRegistry] = []  # made at the first scrape

    def page() -> tuple[bytes, str]:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        with lock:
            if not registry:
                registry.append(CollectorRegistry(auto_describe=False))
                registry[0].register(collector)
        return generate_latest(registry[0]), CONTENT_TYPE_LATEST

    return page


def _probe(health: _Health, path: str, metrics: Callable[[], tuple[bytes, str]]) -> Respond:
    """The answer of the endpoint at PATH (404 for any other path)."""

    def respond(asked: str) -> tuple[int, bytes, str]:
        if asked != path:
            return 404, b"not found", "text/plain"
        if path == "/health" and not health.healthy:
            return 503, health.reason.encode(), "text/plain"
        if path == "/ready" and not health.ready:
            return 503, b"not ready: objects not loaded yet", "text/plain"
        if path == "/metrics":
            return 200, *metrics()
        return 200, b"OK", "text/plain"

    return respond


def serve(opts: ServeOptions, loading: Loading) -> int:
    """Run until SIGTERM/SIGINT or a crash loop; returns the exit status. LOADING: the
    source, started already (`load.start`)."""
    health = _Health(collector=StatsCollector(f"dns://{opts.listen[0]}:{opts.listen[1]}"))
    metrics = _metrics(health.collector)
    servers = []
    endpoints = ((opts.health, "/health"), (opts.ready, "/ready"), (opts.metrics, "/metrics"))
    for addr, path in endpoints:
        if addr is None:
            continue
        try:
            servers.append(ProbeServer(addr, _probe(health, path, metrics)))
        except OSError as e:
            log.error("cannot serve %s on %s:%d: %s", path, addr[0], addr[1], e)
            for server in servers:
                server.shutdown()
            loading.stop.set()
            return 1
    stop = threading.Event()
    signals.on_signals(lambda _: stop.set(), signal.SIGTERM, signal.SIGINT)
    sup = Supervisor(opts, health)
    sup.catalog = build_catalog(ClusterState().snapshot(), opts.zone, 0)  # unsynced: SERVFAIL
    threading.Thread(target=follow, args=(loading.state, sup, stop), daemon=True).start()
    try:
        return sup.run(stop)
    finally:
        loading.stop.set()
        stop.set()
        for s in servers:
            s.shutdown()
