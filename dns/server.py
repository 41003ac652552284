"""One worker process: the UDP loop, the TCP loop, the upstream pool, catalog updates.

A worker is forked by the supervisor with the current catalog already in memory (shared
pages, not a copy); the supervisor then sends it `Delta`s over its pipe. The loops only
move bytes: the engine decides, and the `Upstream` actions it returns are performed from
a thread pool so that no loop ever waits on the network.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any, cast

from dnslib import DNSHeader, DNSRecord

from netplane.dns.answer import REFUSED
from netplane.dns.autopath import Autopath
from netplane.dns.catalog import Catalog
from netplane.dns.engine import Engine
from netplane.dns.forward import Forwarder
from netplane.dns.options import ServeOptions
from netplane.dns.tcp import Deliver, Observe, TcpServer
from netplane.dns.upstream import Upstream, perform, respond

log = logging.getLogger(__name__)
MAX_INFLIGHT = 1000  # upstream actions per worker; beyond: REFUSED (CoreDNS max_concurrent)


class Upstreams:
    """Performs `Upstream` actions from a thread pool; `deliver` gets the response."""

    def __init__(self, forwarder: Forwarder | None) -> None:
        self.forwarder = forwarder
        self._pool = ThreadPoolExecutor(16, "upstream") if forwarder else None
        self._lock = threading.Lock()
        self.inflight = 0

    def submit(self, action: Upstream, deliver: Deliver) -> None:
        with self._lock:
            busy = self._pool is None or self.inflight >= MAX_INFLIGHT
            if not busy:
                self.inflight += 1
        if busy:
            deliver(respond(action.query, DNSRecord(DNSHeader(rcode=REFUSED)), action.limit))
            return
        assert self._pool is not None  # busy otherwise
        self._pool.submit(self._run, action, deliver)

    def _run(self, action: Upstream, deliver: Deliver) -> None:
        try:
            assert self.forwarder is not None  # a pool only comes with one
            out = perform(action, self.forwarder.lookup)
        except Exception:  # the pool would swallow it silently otherwise
            log.exception("asking the upstreams for %s failed", action.query.qname)
            out = respond(action.query, None, action.limit)
        finally:
            with self._lock:
                self.inflight -= 1
        try:
            deliver(out)
        except Exception:
            log.exception("sending the answer for %s failed", action.query.qname)


def udp_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((host, port))
    return s  # blocking: a timeout would cost a poll() per datagram; SIGTERM ends the loop


def tcp_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, port))
    s.listen(256)
    return s


def serve_udp(
    sock: socket.socket, engine: Engine, upstreams: Upstreams, stop: threading.Event
) -> None:
    """The hot loop: one datagram at a time, as tight as Python allows."""
    recv, send, now = sock.recvfrom, sock.sendto, time.perf_counter
    observe = engine.stats.observe
    family = 2 if sock.family == socket.AF_INET6 else 1
    respond_to = engine.respond
    while not stop.is_set():
        try:
            data, addr = recv(65535)
            t0 = now()
            out, qtype, rcode = respond_to(data, addr)
            if out is None:
                continue
            if out.__class__ is bytes:
                send(out, addr)
            else:
                upstreams.submit(
                    cast(Upstream, out), _sender(sock, addr, family, qtype, t0, observe)
                )
                continue
        except OSError as e:  # e.g. the client's port went away: nothing to do
            log.debug("UDP: %s", e)
            continue
        except Exception:  # one bad packet must never take the worker down
            log.exception("query from %s failed", addr)
            continue
        observe(family, qtype, rcode, now() - t0)


def _sender(
    sock: socket.socket, addr: Any, family: int, qtype: int, t0: float, observe: Observe
) -> Deliver:
    def send(response: bytes) -> None:
        try:
            sock.sendto(response, addr)
        except OSError as e:
            log.debug("UDP: %s", e)
            return
        observe(family, qtype, response[3] & 0x0F, time.perf_counter() - t0)

    return send


def _follow(conn: Connection, engine: Engine, stop: threading.Event) -> None:
    """Apply the supervisor's deltas; its pipe closing means it is gone: stop too."""
    catalog = engine.catalog
    while not stop.is_set():
        try:
            kind, payload = conn.recv()
        except (EOFError, OSError):
            log.warning("the supervisor went away; stopping")
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if kind == "delta":
            assert catalog is not None  # installed before this thread starts
            catalog = catalog.apply(payload)
            engine.install(catalog, payload.changed)


def _ship(engine: Engine, upstreams: Upstreams, conn: Connection, stop: threading.Event) -> None:
    while not stop.wait(0.25):
        stats = engine.stats.copy()
        if upstreams.forwarder is not None:
            stats.cache_hits.update(upstreams.forwarder.hits)
            stats.cache_misses = upstreams.forwarder.misses
        try:
            conn.send(("stats", stats))
        except OSError:
            return


def run_worker(opts: ServeOptions, catalog: Catalog, conn: Connection, number: int) -> int:
    """A worker's life, in the forked child; returns its exit status."""
    logging.basicConfig(
        level=opts.log_level, format=f"%(asctime)s worker{number} %(message)s", force=True
    )
    stop = threading.Event()

    def terminate(*_: object) -> None:
        # No lock may be taken here (netplane/signals.py says why) and this runs once: a
        # second SIGTERM (the supervisor's, then its death signal) must not interrupt the exit.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise SystemExit(0)  # interrupts the blocking recvfrom() of the serving loop

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides
    host, port = opts.listen
    try:
        udp, tcp = udp_socket(host, port), tcp_socket(host, port)
    except OSError as e:
        conn.send(("error", f"cannot listen on {host}:{port}: {e}"))
        return 1
    forwarder = Forwarder(list(opts.upstreams)) if opts.upstreams else None
    autopath = Autopath(opts.host_search) if opts.autopath else None
    engine = Engine(opts.zone, forwarder is not None, autopath, opts.cache_bytes)
    engine.install(catalog)
    upstreams = Upstreams(forwarder)
    tcp_server = TcpServer(
        tcp, lambda m, a: engine.respond(m, a, True), upstreams.submit, engine.stats.observe
    )
    for target, args in ((tcp_server.run, (stop,)), (_follow, (conn, engine, stop))):
        threading.Thread(target=target, args=args, daemon=True).start()
    conn.send(("up", catalog.synced))  # before the shipper: one sender at a time
    threading.Thread(target=_ship, args=(engine, upstreams, conn, stop), daemon=True).start()
    with contextlib.suppress(SystemExit):
        serve_udp(udp, engine, upstreams, stop)
    stop.set()
    return 0
