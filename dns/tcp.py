"""DNS over TCP (RFC 7766): one selector loop per worker, connection state kept pure.

`Connection` frames the byte stream into messages and keeps the timers; the loop in
`serve_tcp` only moves bytes. Against slow or idle clients (slowloris):
- a whole message must arrive within READ_DEADLINE of its first byte (the timer does not
  restart on every byte);
- a connection with nothing in flight is closed after IDLE_TIMEOUT;
- output a client does not read is dropped with the connection after WRITE_DEADLINE, and
  a connection with too much unread output is not read further (back-pressure);
- at the connection cap a new connection evicts an idle one first, then the one whose
  current message started longest ago: real queries always get in.
Pipelined queries on one connection are all answered; answers that wait on the
upstreams are sent when they are ready (out of order, as RFC 7766 allows).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, cast

log = logging.getLogger(__name__)
READ_DEADLINE = 3.0
IDLE_TIMEOUT = 10.0
WRITE_DEADLINE = 10.0
MAX_CONNECTIONS = 128  # per worker
MAX_UNSENT = 256 << 10


class Connection:
    """One client's framing and timers (no socket here)."""

    __slots__ = ("addr", "buf", "inflight", "last", "out", "started", "write_since")

    def __init__(self, addr: Any, now: float) -> None:
        self.addr = addr
        self.buf = bytearray()
        self.out = bytearray()
        self.started: float | None = None  # when the unfinished message's first byte came
        self.last = now  # accept, or the last complete message / answer
        self.inflight = 0  # queries waiting on the upstreams
        self.write_since: float | None = None  # unsent output pending since

    def feed(self, data: bytes, now: float) -> list[bytes]:
        """The complete messages `data` finishes; the rest waits in the buffer."""
        buf = self.buf
        buf += data
        messages = []
        while len(buf) >= 2:
            size = (buf[0] << 8) | buf[1]
            if len(buf) < 2 + size:
                break
            messages.append(bytes(buf[2 : 2 + size]))
            del buf[: 2 + size]
        if messages:
            self.last = now
            self.started = now if buf else None
        elif buf and self.started is None:
            self.started = now
        return messages

    def queue(self, response: bytes, now: float) -> None:
        if not self.out:
            self.write_since = now
        self.out += struct.pack("!H", len(response)) + response
        self.last = now

    def sent(self, n: int, now: float) -> None:
        del self.out[:n]
        self.write_since = now if self.out else None

    @property
    def idle(self) -> bool:
        return self.started is None and not self.out and not self.inflight and not self.buf

    def expired(self, now: float) -> bool:
        if self.started is not None and now - self.started > READ_DEADLINE:
            return True
        if self.write_since is not None and now - self.write_since > WRITE_DEADLINE:
            return True
        return self.idle and now - self.last > IDLE_TIMEOUT

    def eviction_rank(self) -> tuple[int, float]:
        """Lowest goes first: idle (least recently active), then unfinished messages
        (oldest first), then connections with answers in flight."""
        if self.idle:
            return (0, self.last)
        if self.started is not None and not self.inflight and not self.out:
            return (1, self.started)
        return (2, self.last)


Respond = Callable[[bytes, tuple], "tuple[bytes | object | None, int, int]"]
Deliver = Callable[[bytes], None]  # takes an upstream action's answer, from any thread
Submit = Callable[[Any, Deliver], None]  # hands an upstream action to the worker's pool
Observe = Callable[[int, int, int, float], None]  # metrics: (transport, qtype, rcode, seconds)


class TcpServer:
    """The loop: accept, read, answer, write, expire. `submit(action, deliver)` hands an
    upstream action to the worker's pool; `deliver(bytes)` may be called from any thread."""

    def __init__(
        self, listener: socket.socket, respond: Respond, submit: Submit, observe: Observe
    ) -> None:
        self.listener = listener
        self.respond = respond
        self.submit = submit
        self.observe = observe
        self.family = 4 if listener.family == socket.AF_INET6 else 3
        self.sel = selectors.DefaultSelector()
        self.conns: dict[socket.socket, Connection] = {}
        self._done: queue.SimpleQueue[tuple[socket.socket, Connection, bytes | None, float, int]]
        self._done = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        listener.setblocking(False)
        self.sel.register(listener, selectors.EVENT_READ)
        self.sel.register(self._wake_r, selectors.EVENT_READ)

    def run(self, stop: threading.Event) -> None:
        last_sweep = time.monotonic()
        while not stop.is_set():
            for key, mask in self.sel.select(0.25):
                sock = cast(socket.socket, key.fileobj)  # only sockets are registered
                if sock is self.listener:
                    self._accept()
                elif sock is self._wake_r:
                    self._deliveries()
                else:
                    if mask & selectors.EVENT_READ:
                        self._read(sock)
                    if mask & selectors.EVENT_WRITE and sock in self.conns:
                        self._write(sock)
            now = time.monotonic()
            if now - last_sweep >= 0.1:
                last_sweep = now
                for sock in [s for s, c in self.conns.items() if c.expired(now)]:
                    self._close(sock)
        for sock in list(self.conns):
            self._close(sock)

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. EMFILE: the others keep being served
                log.warning("TCP accept: %s", e)
                return
            if len(self.conns) >= MAX_CONNECTIONS:
                victim = min(self.conns, key=lambda s: self.conns[s].eviction_rank())
                self._close(victim)
            sock.setblocking(False)
            self.conns[sock] = Connection(addr, time.monotonic())
            self.sel.register(sock, selectors.EVENT_READ)

    def _read(self, sock: socket.socket) -> None:
        conn = self.conns.get(sock)
        if conn is None:
            return
        try:
            data = sock.recv(65537)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(sock)
            return
        now = time.monotonic()
        for message in conn.feed(data, now):
            t0 = time.perf_counter()
            try:
                out, qtype, rcode = self.respond(message, conn.addr)
            except Exception:  # one bad message must not take the loop down
                log.exception("TCP query from %s failed", conn.addr)
                continue
            if out is None:
                continue
            if isinstance(out, bytes):
                conn.queue(out, now)
                self.observe(self.family, qtype, rcode, time.perf_counter() - t0)
            else:
                conn.inflight += 1
                self.submit(out, self._deliverer(sock, conn, t0, qtype))
        self._flush(sock, conn)

    def _deliverer(self, sock: socket.socket, conn: Connection, t0: float, qtype: int) -> Deliver:
        def deliver(response: bytes | None) -> None:
            self._done.put((sock, conn, response, t0, qtype))
            with contextlib.suppress(OSError):  # full: the loop is being woken already
                self._wake_w.send(b"\0")

        return deliver

    def _deliveries(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        while not self._done.empty():
            sock, conn, response, t0, qtype = self._done.get()
            if self.conns.get(sock) is not conn:
                continue  # the connection went away meanwhile
            conn.inflight -= 1
            if response is not None:
                conn.queue(response, time.monotonic())
                self.observe(self.family, qtype, response[3] & 0x0F, time.perf_counter() - t0)
            self._flush(sock, conn)

    def _flush(self, sock: socket.socket, conn: Connection) -> None:
        if conn.out:
            self._write(sock)
        if sock not in self.conns:
            return
        events = selectors.EVENT_WRITE if conn.out else 0
        if len(conn.out) < MAX_UNSENT:
            events |= selectors.EVENT_READ  # else stop reading until the client catches up
        self.sel.modify(sock, events)

    def _write(self, sock: socket.socket) -> None:
        conn = self.conns[sock]
        try:
            n = sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(sock)
            return
        conn.sent(n, time.monotonic())
        if not conn.out:
            self.sel.modify(sock, selectors.EVENT_READ)

    def _close(self, sock: socket.socket) -> None:
        if self.conns.pop(sock, None) is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(sock)
        sock.close()
