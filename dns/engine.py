"""Request bytes in, response bytes (or an upstream action) out: no sockets, no threads.

The hot path for an ordinary query (one question, class IN, no EDNS options) checks the
header and question by hand, looks the lower-cased question up in a dict of compiled
answers and glues bytes together: no dnslib on a hit. A miss resolves from the catalog,
compiles once with dnslib and is cached (bounded in bytes, oldest first out) until a name
it depends on changes. An answer that needs the upstreams comes back as an `Upstream`
action (upstream.py) that the server loop performs: the engine itself does no I/O.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from netplane.dns.answer import AXFR, IXFR, REFUSED, SERVFAIL, Answer, resolve
from netplane.dns.autopath import Autopath
from netplane.dns.catalog import Catalog
from netplane.dns.metrics import Stats
from netplane.dns.options import DEFAULT_CACHE_BYTES
from netplane.dns.records import ZoneConfig
from netplane.dns.upstream import CHASE, FORWARD, SEARCH, Upstream
from netplane.dns.wire import (
    Compiled,
    Query,
    assemble,
    bare,
    compile_answer,
    error_response,
    parse_question,
    parse_slow,
)

_ENTRY_OVERHEAD = 260  # dict slot, key and Compiled objects, tuple headers (measured ~250)
Result = tuple["bytes | Upstream | None", int, int]  # (response, qtype, rcode)


@dataclass(frozen=True, slots=True)
class _View:
    catalog: Catalog | None
    cache: dict[bytes, Compiled] = field(default_factory=dict)


def entry_size(key: bytes, c: Compiled) -> int:
    return len(key) + len(c.tail) + _ENTRY_OVERHEAD + 8 * len(c.depends)


class Engine:
    """One worker's answering state: the catalog it answers from and its answer cache.

    `respond` returns (response, qtype, rcode); the response is bytes to send, None to
    drop the request, or an `Upstream` action (rcode -1 until it is performed).
    """

    def __init__(
        self,
        config: ZoneConfig,
        upstream: bool = False,
        autopath: Autopath | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.config = config
        self.upstream = upstream
        self.autopath = autopath
        self.cache_bytes = cache_bytes
        self.stats = Stats()
        self._view = _View(None)
        self._used = 0
        self._lock = threading.Lock()  # cache writers: the UDP and TCP loops, install()
        self._servfail = bare(SERVFAIL)
        self._refused = bare(REFUSED)

    @property
    def catalog(self) -> Catalog | None:
        return self._view.catalog

    @property
    def cache_used(self) -> int:
        return self._used

    def install(self, catalog: Catalog, changed: frozenset[str] | None = None) -> None:
        """Answer from `catalog` from now on; cached answers that depend on none of the
        `changed` names stay (None: drop them all)."""
        with self._lock:
            old = self._view
            cache: dict[bytes, Compiled] = {}
            used = 0
            if old.catalog is not None and changed is not None:
                for k, c in old.cache.items():
                    if changed.isdisjoint(c.depends):
                        cache[k] = c
                        used += entry_size(k, c)
            self._view = _View(catalog, cache)
            self._used = used
        self.stats.synced = catalog.synced

    def respond(self, data: bytes, addr: tuple, tcp: bool = False) -> Result:
        view = self._view
        n = len(data)
        try:
            qend = data.index(0, 12) + 1
        except ValueError:
            return self._slow(view, data, addr, tcp)
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
            return self._slow(view, data, addr, tcp)
        if data[2] & 0xF8 or data[4:11] != b"\x00\x01\x00\x00\x00\x00\x00":
            return self._slow(view, data, addr, tcp)
        if data[qend + 2 : qend + 4] != b"\x00\x01":
            return self._slow(view, data, addr, tcp)
        qtype = (data[qend] << 8) | data[qend + 1]
        key = data[12:qend].lower() + data[qend : qend + 2]
        c = view.cache.get(key)
        if c is None or c.chase:
            qname = parse_question(data, qend)
            if qname is None:
                return self._slow(view, data, addr, tcp)
            query = Query(data[:2], data[2] << 8 | data[3], data[12 : qend + 4], qname,
                          qtype, 1, edns)  # fmt: skip
            return self._answer(view, key, query, addr, tcp)
        limit = 65535 if tcp else (edns or 512)
        return assemble(data[:2], data[2] << 8, data[12 : qend + 4], c, edns, limit), qtype, c.rcode

    def _slow(self, view: _View, data: bytes, addr: tuple, tcp: bool) -> Result:
        """Anything the hand parser declined: dnslib parses it (or it gets an error)."""
        parsed = parse_slow(data)
        if parsed is None:
            return None, 0, -1
        if isinstance(parsed, int):
            return error_response(data, parsed), 0, parsed
        q = parsed
        if q.qclass != 1:
            return self._reply(q, self._refused, tcp)
        key = q.question[:-4].lower() + q.question[-4:-2]
        return self._answer(view, key, q, addr, tcp)

    def _reply(self, query: Query, c: Compiled, tcp: bool) -> tuple[bytes, int, int]:
        limit = 65535 if tcp else (query.edns_size or 512)
        out = assemble(query.id, query.flags, query.question, c, query.edns_size, limit)
        return out, query.qtype, c.rcode

    def _answer(self, view: _View, key: bytes, query: Query, addr: tuple, tcp: bool) -> Result:
        catalog = view.catalog
        qname, qtype = query.qname, query.qtype
        if qtype in (AXFR, IXFR):
            return self._reply(query, self._refused, tcp)  # no zone transfers (RFC 5936)
        if catalog is None or not catalog.synced:
            return self._reply(query, self._servfail, tcp)  # never a wrong NXDOMAIN
        limit = 65535 if tcp else (query.edns_size or 512)
        c = view.cache.get(key)
        if c is None:
            if self.autopath is not None:
                hit = self.autopath.answer(catalog, qname, qtype, addr[0])
                if isinstance(hit, Answer):  # depends on the client: not cached
                    return self._reply(query, self._compile(key, qtype, hit), tcp)
                if hit is not None and self.upstream:
                    asked = resolve(catalog, qname, qtype)
                    assert asked is not None  # autopath searches names in the zone
                    fallback = self._reply(query, self._compile(key, qtype, asked), tcp)[0]
                    action = Upstream(SEARCH, query, limit, hit.candidates, self.config.ttl,
                                      fallback)  # fmt: skip
                    return action, qtype, -1
            answer = resolve(catalog, qname, qtype)
            if answer is None:
                if not self.upstream:
                    return self._reply(query, self._refused, tcp)  # never an open resolver
                return Upstream(FORWARD, query, limit, (qname,)), qtype, -1
            c = self._compile(key, qtype, answer)
            if not (self.autopath is not None and answer.rcode == 3
                    and self.autopath.eligible(catalog, qname)):  # fmt: skip
                self._store(view, key, c)  # else another client's search may find it
        if c.chase and self.upstream:
            fallback = self._reply(query, c, tcp)[0]
            return Upstream(CHASE, query, limit, (c.chase,), self.config.ttl, fallback), qtype, -1
        return self._reply(query, c, tcp)

    def _compile(self, key: bytes, qtype: int, answer: Answer) -> Compiled:
        return compile_answer(key[:-2], qtype, answer, self.config.ttl)

    def _store(self, view: _View, key: bytes, c: Compiled) -> None:
        size = entry_size(key, c)
        with self._lock:
            if view is not self._view or size > self.cache_bytes:
                return  # a new catalog was installed meanwhile: this answer may be stale
            cache = view.cache
            old = cache.get(key)
            if old is not None:
                self._used -= entry_size(key, old)
            cache[key] = c
            self._used += size
            while self._used > self.cache_bytes:  # oldest first out
                k = next(iter(cache))
                self._used -= entry_size(k, cache.pop(k))
