"""`netplane dns serve`: worker processes plus the health, readiness and metrics endpoints.

One worker per core, each a full server (own source, state, index and sockets bound with
SO_REUSEPORT, so the kernel spreads clients over them): Python runs one core per process,
and independent workers share nothing on the hot path. Workers send their counters to
this supervisor, which serves /health, /ready (only once every worker has loaded the
objects) and /metrics, and stops everything when one worker dies or on SIGTERM/SIGINT.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import wait

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from netplane.dns.autopath import Autopath
from netplane.dns.forward import Forwarder
from netplane.dns.metrics import StatsCollector
from netplane.dns.records import ZoneConfig
from netplane.dns.server import Engine, follow, serve_tcp, serve_udp, tcp_socket, udp_socket
from netplane.kube.options import source_from_options
from netplane.sources import ManifestSource, Source, start_source
from netplane.state import ClusterState

log = logging.getLogger(__name__)


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
    poll_interval: float = 0.05
    log_level: int = logging.WARNING
    kubeconfig: str | None = None
    in_cluster: bool = False


def kinds_needed(pods: str) -> set[str]:
    """What the API source must watch: pods only when pod names or autopath need them."""
    return {"Service", "EndpointSlice"} | ({"Pod"} if pods == "verified" else set())


def _source(opts: ServeOptions) -> Source:
    if opts.manifests:  # polled faster than the default: answers follow within ~100 ms
        return ManifestSource(opts.manifests, poll_interval=opts.poll_interval)
    return source_from_options(None, opts.kubeconfig, opts.in_cluster, kinds_needed(opts.zone.pods))


def run_worker(opts: ServeOptions, conn, number: int) -> None:
    """One serving process (the target of a spawned worker)."""
    logging.basicConfig(level=opts.log_level, format=f"%(asctime)s worker{number} %(message)s")
    stop = threading.Event()

    def terminate(*_) -> None:
        stop.set()
        raise SystemExit(0)  # interrupts the blocking recvfrom() of the serving loop

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides
    host, port = opts.listen
    try:
        udp, tcp = udp_socket(host, port), tcp_socket(host, port)
    except OSError as e:
        conn.send(("error", f"cannot listen on {host}:{port}: {e}"))
        return
    state = ClusterState()
    start_source(_source(opts), state)
    forwarder = Forwarder(list(opts.upstreams)) if opts.upstreams else None
    autopath = Autopath(opts.host_search) if opts.autopath else None
    engine = Engine(opts.zone, forwarder, autopath)
    for target, args in ((follow, (state, engine, stop)), (serve_tcp, (tcp, engine, stop))):
        threading.Thread(target=target, args=args, daemon=True).start()
    threading.Thread(target=_ship, args=(engine, conn, stop), daemon=True).start()
    serve_udp(udp, engine, stop)


def _ship(engine: Engine, conn, stop: threading.Event) -> None:
    while not stop.wait(0.25):
        stats = engine.stats.copy()
        if engine.forwarder is not None:
            stats.cache_hits.update(engine.forwarder.hits)
            stats.cache_misses = engine.forwarder.misses
        try:
            conn.send(("stats", stats))
        except OSError:
            return


class _Endpoints:
    """What the HTTP handlers report; updated by the supervisor loop."""

    def __init__(self, server: str) -> None:
        self.collector = StatsCollector(server)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self.ready = False


def _http(addr: tuple[str, int], endpoints: _Endpoints, path: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != path:
                self.send_error(404)
                return
            status, body, ctype = 200, b"OK", "text/plain"
            if path == "/ready" and not endpoints.ready:
                status, body = 503, b"not ready: objects not loaded yet"
            elif path == "/metrics":
                body, ctype = generate_latest(endpoints.registry), CONTENT_TYPE_LATEST
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(addr, Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def serve(opts: ServeOptions) -> int:
    """Run until SIGTERM/SIGINT or a worker's death; returns the exit status."""
    endpoints = _Endpoints(f"dns://{opts.listen[0]}:{opts.listen[1]}")
    servers = []
    for addr, path in (
        (opts.health, "/health"),
        (opts.ready, "/ready"),
        (opts.metrics, "/metrics"),
    ):
        if addr is None:
            continue
        try:
            servers.append(_http(addr, endpoints, path))
        except OSError as e:
            log.error("cannot serve %s on %s:%d: %s", path, addr[0], addr[1], e)
            for server in servers:
                server.shutdown()
            return 1
    ctx = multiprocessing.get_context("spawn")
    workers, conns = [], []
    for i in range(opts.workers):
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(
            target=run_worker, args=(opts, child, i), name=f"dns-worker{i}", daemon=True
        )
        p.start()
        workers.append(p)
        conns.append(parent)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    status = 0
    synced: dict[int, bool] = {}
    try:
        while not stop.is_set():
            for conn in wait(conns, timeout=0.5):
                i = conns.index(conn)
                try:
                    kind, payload = conn.recv()
                except EOFError:
                    continue
                if kind == "error":
                    log.error("%s", payload)
                    status = 1
                    stop.set()
                    break
                endpoints.collector.workers[i] = payload
                synced[i] = payload.synced
            endpoints.ready = len(synced) == len(workers) and all(synced.values())
            if any(not p.is_alive() for p in workers):
                log.error("a DNS worker exited; stopping")
                status = status or 1
                stop.set()
    finally:
        for p in workers:
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + 5
        for p in workers:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
        for s in servers:
            s.shutdown()
    return status
