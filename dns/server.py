"""Serving: the per-worker engine (index + wire cache), the UDP loop, TCP, the index updater.

The hot path for an ordinary query (one question, class IN, no EDNS options) parses the
header and question by hand, looks the lower-cased question up in a dict of compiled
answers and glues bytes together: no dnslib on a hit. Misses resolve through `answer`,
compile with dnslib and are cached until one of the names they depend on changes.
Index rebuilds happen in another thread and are published by swapping one reference.
"""

from __future__ import annotations

import gc
import logging
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from netplane.dns.answer import REFUSED, SERVFAIL, Answer, resolve
from netplane.dns.autopath import Autopath, Pending, forward_search
from netplane.dns.forward import Forwarder
from netplane.dns.metrics import Stats
from netplane.dns.records import Index, ZoneConfig, build_index, update_index
from netplane.dns.wire import (
    RD,
    Compiled,
    Query,
    assemble,
    bare,
    compile_answer,
    error_response,
    parse_question,
    parse_slow,
)
from netplane.state import ClusterState

log = logging.getLogger(__name__)
MAX_CACHED = 200_000
TCP_IDLE = 10.0
TCP_MAX_CONNECTIONS = 128


@dataclass(frozen=True, slots=True)
class _View:
    index: Index | None
    cache: dict[bytes, Compiled] = field(default_factory=dict)


class Engine:
    """Turns request bytes into response bytes for one worker."""

    def __init__(
        self, config: ZoneConfig, forwarder: Forwarder | None, autopath: Autopath | None = None
    ) -> None:
        self.config = config
        self.forwarder = forwarder
        self.autopath = autopath
        self.stats = Stats()
        self._view = _View(None)
        self._servfail = bare(SERVFAIL, ra=forwarder is not None)
        self._refused = bare(REFUSED)
        self._pool = ThreadPoolExecutor(16, "forward") if forwarder else None

    @property
    def index(self) -> Index | None:
        return self._view.index

    def install(self, index: Index) -> None:
        """Publish a new index; cached answers that do not depend on changed names stay."""
        old = self._view
        if old.index is None:
            cache: dict[bytes, Compiled] = {}
        else:
            changed = index.changed
            cache = {k: c for k, c in list(old.cache.items()) if not c.depends & changed}
        self._view = _View(index, cache)
        self.stats.synced = index.synced

    def respond(
        self, data: bytes, addr, sock: socket.socket | None
    ) -> tuple[bytes | None, int, int]:
        """(response or None, qtype, rcode) for `data`; `sock` is None for TCP.

        A forwarded UDP query is answered later from a thread through `sock` (rcode -1).
        """
        view = self._view
        n = len(data)
        try:
            qend = data.index(0, 12) + 1
        except ValueError:
            return self._slow(view, data, addr, sock)
        if n == qend + 4 and data[11] == 0:
            edns = 0
        elif (
            n == qend + 15
            and data[11] == 1
            and data[qend + 4 : qend + 7] == b"\x00\x00\x29"
            and data[qend + 10] == 0
            and data[qend + 13 : qend + 15] == b"\x00\x00"
        ):
            edns = max(512, (data[qend + 7] << 8) | data[qend + 8])
        else:
            return self._slow(view, data, addr, sock)
        if data[2] & 0xF8 or data[4:11] != b"\x00\x01\x00\x00\x00\x00\x00":
            return self._slow(view, data, addr, sock)
        if data[qend + 2 : qend + 4] != b"\x00\x01":
            return self._slow(view, data, addr, sock)
        qtype = (data[qend] << 8) | data[qend + 1]
        key = data[12:qend].lower() + data[qend : qend + 2]
        c = view.cache.get(key)
        if c is None:
            qname = parse_question(data, qend)
            if qname is None:
                return self._slow(view, data, addr, sock)
            c = self._miss(view, key, qname, qtype, addr)
            if type(c) is not Compiled:
                query = Query(data[:2], data[2] << 8 | data[3], data[12 : qend + 4], qname,
                              qtype, 1, edns)  # fmt: skip
                return self._forward(query, addr, sock, c)
        limit = 65535 if sock is None else (edns or 512)
        return assemble(data[:2], data[2] << 8, data[12 : qend + 4], c, edns, limit), qtype, c.rcode

    def _miss(self, view: _View, key: bytes, qname: str, qtype: int, addr):
        """A compiled answer; None when the name is not ours (forward it); `Pending` when
        autopath still has upstream candidates to try."""
        index = view.index
        if index is None or not index.synced:
            return self._servfail  # never a wrong NXDOMAIN before the first full load
        if self.autopath is not None:
            hit = self.autopath.answer(index, qname, qtype, addr[0])
            if isinstance(hit, Answer):  # depends on the client: not cached
                return compile_answer(key[:-2], qtype, hit, self.config.ttl, self._ra)
            if hit is not None and self.forwarder is not None:
                return hit
        answer = resolve(index, qname, qtype)
        if answer is None:
            return None
        c = compile_answer(key[:-2], qtype, answer, self.config.ttl, self._ra)
        if self.autopath is not None and answer.rcode == 3 and self.autopath.eligible(index, qname):
            return c  # another client's search may find this name: not shared
        if len(view.cache) >= MAX_CACHED:
            view.cache.clear()  # bounded against floods of distinct names
        view.cache[key] = c
        return c

    @property
    def _ra(self) -> bool:
        return self.forwarder is not None

    def _slow(self, view: _View, data: bytes, addr, sock) -> tuple[bytes | None, int, int]:
        parsed = parse_slow(data)
        if parsed is None:
            return None, 0, -1
        if isinstance(parsed, int):
            return error_response(data, parsed), 0, parsed
        q = parsed
        if q.qclass != 1:
            c = self._refused
        else:
            qname_wire = q.question[:-4]
            key = qname_wire.lower() + q.question[-4:-2]
            c = view.cache.get(key) or self._miss(view, key, q.qname, q.qtype, addr)
            if type(c) is not Compiled:
                return self._forward(q, addr, sock, c)
        limit = 65535 if sock is None else (q.edns_size or 512)
        return assemble(q.id, q.flags & RD, q.question, c, q.edns_size, limit), q.qtype, c.rcode

    def _forward(self, query: Query, addr, sock, pending=None) -> tuple[bytes | None, int, int]:
        limit = 65535 if sock is None else (query.edns_size or 512)
        if pending is not None:
            if sock is None:
                return self._search(query, pending, limit), query.qtype, 0
            self._pool.submit(self._send_later, self._search, query, pending, limit, sock, addr)
            return None, query.qtype, -1
        if self.forwarder is None:
            out = assemble(query.id, query.flags & RD, query.question, self._refused,
                           query.edns_size, limit)  # fmt: skip
            return out, query.qtype, REFUSED
        if sock is None:
            return self.forwarder.resolve(query, limit), query.qtype, 0
        self._pool.submit(self._send_later, self.forwarder.resolve, query, limit, sock, addr)
        return None, query.qtype, -1

    def _search(self, query: Query, pending: Pending, limit: int) -> bytes:
        """Autopath's upstream candidates, else the query answered as asked."""
        found = forward_search(self.forwarder, pending, query, self.config.ttl, limit)
        if found is not None:
            return found
        answer = resolve(self._view.index, query.qname, query.qtype)
        c = compile_answer(query.question[:-4].lower(), query.qtype, answer, self.config.ttl, True)
        return assemble(query.id, query.flags & RD, query.question, c, query.edns_size, limit)

    @staticmethod
    def _send_later(work, *args) -> None:
        *args, sock, addr = args
        try:
            sock.sendto(work(*args), addr)
        except Exception:  # the pool would swallow it silently otherwise
            log.exception("answering %s later failed", args[0].qname)


def follow(state: ClusterState, engine: Engine, stop: threading.Event) -> None:
    """Keep the engine's index in step with the state (run in a thread)."""
    tracker = state.tracker()
    while not state.wait_synced(0.2):
        if stop.is_set():
            return
    tracker.pop()
    serial = int(time.time())
    snap = state.snapshot()
    index = build_index(snap, engine.config, serial)
    if engine.autopath is not None:
        engine.autopath.refresh(snap)
    engine.install(index)
    # The first index is the bulk of the heap and lives long: keep full collections from
    # walking it mid-query. Once only: later garbage frozen by accident would never be freed.
    gc.freeze()
    log.info("index built: %d names", len(index.names))
    while not stop.is_set():
        if not tracker.wait(0.5):
            continue
        changes = tracker.pop()
        serial = max(serial + 1, int(time.time()))
        index = update_index(index, state.snapshot(), changes, serial)
        if engine.autopath is not None and changes.pods:
            engine.autopath.refresh(state.snapshot())
        engine.install(index)


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
    s.listen(128)
    s.settimeout(0.5)
    return s


def serve_udp(sock: socket.socket, engine: Engine, stop: threading.Event) -> None:
    """The hot loop: one datagram at a time, as tight as Python allows."""
    recv, send, now = sock.recvfrom, sock.sendto, time.perf_counter
    observe = engine.stats.observe
    family = 2 if sock.family == socket.AF_INET6 else 1
    respond = engine.respond
    while not stop.is_set():
        try:
            data, addr = recv(65535)
            t0 = now()
            out, qtype, rcode = respond(data, addr, sock)
            if out is not None:
                send(out, addr)
        except OSError as e:  # e.g. the client's port went away: nothing to do
            log.debug("UDP: %s", e)
            continue
        except Exception:  # one bad packet must never take the worker down
            log.exception("query from %s failed", addr)
            continue
        if rcode >= 0:
            observe(family, qtype, rcode, now() - t0)


def serve_tcp(sock: socket.socket, engine: Engine, stop: threading.Event) -> None:
    slots = threading.BoundedSemaphore(TCP_MAX_CONNECTIONS)
    while not stop.is_set():
        try:
            conn, addr = sock.accept()
        except (TimeoutError, OSError):
            continue
        if not slots.acquire(blocking=False):
            conn.close()
            continue
        threading.Thread(
            target=_tcp_connection, args=(conn, addr, engine, slots), daemon=True
        ).start()


def _tcp_connection(conn: socket.socket, addr, engine: Engine, slots) -> None:
    family = 2 if conn.family == socket.AF_INET6 else 1
    try:
        conn.settimeout(TCP_IDLE)
        while True:
            head = _read(conn, 2)
            if head is None:
                return
            data = _read(conn, struct.unpack("!H", head)[0])
            if data is None:
                return
            t0 = time.perf_counter()
            out, qtype, rcode = engine.respond(data, addr, None)
            if out is not None:
                conn.sendall(struct.pack("!H", len(out)) + out)
            if rcode >= 0:
                engine.stats.observe(family + 2, qtype, rcode, time.perf_counter() - t0)
    except OSError:
        return
    except Exception:
        log.exception("TCP connection from %s failed", addr)
    finally:
        conn.close()
        slots.release()


def _read(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf
