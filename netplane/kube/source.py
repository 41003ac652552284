"""The Kubernetes API as a `Source`: list, then watch, per kind, into a `ClusterState`.

Two things are pluggable. The transport: the official `kubernetes` client's (configuration
with every auth method, urllib3; its typed methods and models are bypassed) or
`transport.HttpTransport` (the standard library, no client import). The codec: how a
kind's JSON becomes state objects; `JsonCodec` decodes it once and hands it to the same
parsers the manifest source uses (bench/kube_client.py measured the model layer at 4x the
list CPU and 2.5x the watch CPU; see deploy/README.md); a consumer that reads a few fields
brings its own (the DNS server's decodes only what DNS answers from).

Per kind, a reflector keeps what it put into the state and the resourceVersion it has seen:
- list (paged) -> apply only what differs from what it holds, delete what disappeared;
- watch from that resourceVersion with bookmarks, one `apply` per event;
- 410 Gone (HTTP or an ERROR event) -> list again; that relist also removes objects
  deleted while it was disconnected;
- any other failure -> the state stays as it is and the reflector retries with exponential
  back-off and full jitter, resuming the watch from the last resourceVersion it saw.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from netplane.kube.transport import ApiError
from netplane.model import InvalidField, ObjectKey, parse_object
from netplane.state import ClusterState, Stored

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Resource:
    kind: str
    api_version: str
    path: str  # the cluster-wide collection


RESOURCES = {
    r.kind: r
    for r in (
        Resource("Service", "v1", "/api/v1/services"),
        Resource(
            "EndpointSlice", "discovery.k8s.io/v1", "/apis/discovery.k8s.io/v1/endpointslices"
        ),
        Resource("Pod", "v1", "/api/v1/pods"),
        Resource("Node", "v1", "/api/v1/nodes"),
        Resource("Namespace", "v1", "/api/v1/namespaces"),
    )
}


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential back-off with full jitter: a restarted API server is not stampeded by
    every node's proxy and DNS at the same instant."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0

    def delay(self, failures: int) -> float:
        return random.uniform(
            0, min(self.maximum, self.initial * self.factor ** max(failures - 1, 0))
        )


@dataclass(frozen=True, slots=True)
class Tuning:
    page_size: int = 500  # list in pages: a 10k-service list never sits in memory twice
    # 0: the first list unpaged from the API server's watch cache (resourceVersion=0), as
    # client-go's informers start (relists after 410 Gone read the current state)
    watch_timeout: int = 300  # server-side timeoutSeconds, randomised up to 2x (as client-go)
    connect_timeout: float = 5.0
    list_timeout: float = 60.0  # read timeout of one list page
    backoff: Backoff = Backoff()


class Gone(Exception):
    """The resourceVersion is too old (410): only a new list can continue."""


class WatchFailed(Exception):
    """The server ended a watch with an ERROR event other than 410."""


Item = tuple[ObjectKey, str, Any]  # (key, resourceVersion, the codec's decoded object)


@dataclass(frozen=True, slots=True)
class Event:
    type: str  # ADDED | MODIFIED | DELETED | BOOKMARK | ERROR | anything else: ignored
    item: Item
    error: tuple[Any, Any, Any] = (None, None, None)  # (code, reason, message) of an ERROR


class Codec(Protocol):
    """How one kind's JSON becomes state objects."""

    def page(self, body: bytes) -> tuple[Sequence[Item], str, str]:
        """A list response -> (items, resourceVersion, continue token)."""

    def event(self, line: bytes) -> Event:
        """One watch event (a line of the stream)."""

    def objects(self, raw: Any) -> Sequence[Stored]:
        """The state objects of one decoded item; raises InvalidField to reject it."""

    # Optional: `stream(response)` -> runs of (items, resourceVersion, continue) decoded
    # while the list arrives (see dns/objects.py); used instead of `page` when present.


class JsonCodec:
    """The full object model (`netplane.model`) from the JSON, as manifests are parsed."""

    def __init__(self, resource: Resource) -> None:
        self.resource = resource

    def page(self, body: bytes) -> tuple[Sequence[Item], str, str]:
        doc = json.loads(body)
        meta = doc.get("metadata") or {}
        items = [self._item(item) for item in doc.get("items") or ()]
        return items, meta.get("resourceVersion", ""), meta.get("continue") or ""

    def event(self, line: bytes) -> Event:
        event = json.loads(line)
        obj = event.get("object") or {}
        error = (obj.get("code"), obj.get("reason"), obj.get("message"))
        return Event(event.get("type"), self._item(obj), error)

    def _item(self, item: dict) -> Item:
        meta = item.get("metadata") or {}
        key = (self.resource.kind, meta.get("namespace", ""), meta.get("name", ""))
        return key, meta.get("resourceVersion", ""), item

    def objects(self, raw: Any) -> Sequence[Stored]:
        raw.setdefault("kind", self.resource.kind)  # list items carry neither
        raw.setdefault("apiVersion", self.resource.api_version)
        return parse_object(raw, strict=False)


class Transport(Protocol):
    def get(self, path: str, query: dict[str, Any], timeout: tuple[float, float]) -> Any:
        """GET path?query: a response with status, data, stream(), release_conn() and
        shutdown() (urllib3's names); raises ApiError for a non-2xx status."""


class ClientTransport:
    """GETs through the official client: its credentials (refreshing rotated tokens)."""

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client

    def get(self, path: str, query: dict[str, Any], timeout: tuple[float, float]) -> Any:
        """`param_serialize` + `call_api` is the client's generic request path: it applies
        the configured credentials without the typed methods' pydantic validation, whose
        schemas cost ~22 MB and ~0.4 s of CPU on first use."""
        request = self.api_client.param_serialize(
            "GET",
            path,
            query_params=list(query.items()),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = self.api_client.call_api(*request, _request_timeout=timeout).response
        if 200 <= response.status < 300:
            return response
        try:
            body = response.data
        finally:
            response.release_conn()
        raise ApiError(response.status, response.reason, body)


class _Reflector:
    """List + watch one kind; owns the objects of that kind in the state."""

    def __init__(
        self,
        resource: Resource,
        transport: Transport,
        codec: Codec,
        tuning: Tuning,
        on_listed: Callable,
    ) -> None:
        self.resource = resource
        self.transport = transport
        self.codec = codec
        self.tuning = tuning
        self.on_listed = on_listed
        self.rv = ""  # last resourceVersion seen; "" = list first
        self.listed = False  # a complete list was applied once
        self._versions: dict[ObjectKey, str] = {}  # API object -> resourceVersion held
        self._produced: dict[ObjectKey, tuple[ObjectKey, ...]] = {}  # API object -> model keys
        self._response: Any = None
        self._lock = threading.Lock()
        self.failures = 0

    def run(self, state: ClusterState, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                if not self.rv:
                    self._list(state, stop)
                    self.on_listed(self.resource.kind)
                if self._watch(state, stop):
                    self.failures = 0
                    continue
                self.failures += 1  # an empty, short watch: back off, never spin
            except Gone:
                log.info(
                    "%s: resourceVersion %s expired, listing again", self.resource.kind, self.rv
                )
                self.rv = ""
                self.failures += 1
            except Exception as e:  # the API server is away: keep serving what we have
                if stop.is_set():
                    return
                self.failures += 1
                log.warning("%s: list/watch failed (%s), retry #%d", self.resource.kind,
                            _describe(e), self.failures)  # fmt: skip
            if self.failures:
                stop.wait(self.tuning.backoff.delay(self.failures))

    def interrupt(self) -> None:
        """Unblock a watch that is waiting for data (from another thread)."""
        with self._lock:
            response = self._response
        if response is not None:
            response.shutdown()

    def _request(self, query: dict[str, Any], timeout: tuple[float, float]) -> Any:
        """GET the collection; the response, not yet read."""
        try:
            return self.transport.get(self.resource.path, query, timeout)
        except ApiError as e:
            if e.status == 410:
                raise Gone() from e
            raise

    # ---- list -------------------------------------------------------------------------

    def _list(self, state: ClusterState, stop: threading.Event) -> None:
        seen: dict[ObjectKey, str] = {}
        upserts: list[Stored] = []
        produced: dict[ObjectKey, tuple[ObjectKey, ...]] = {}
        token, rv = "", ""
        t = self.tuning
        while True:
            query: dict[str, Any] = {"limit": t.page_size} if t.page_size else {}
            if not t.page_size and not self.listed:
                query["resourceVersion"] = "0"  # the watch cache, as informers start
            if token:
                query["continue"] = token
            response = self._request(query, (t.connect_timeout, t.list_timeout))
            try:
                for items, page_rv, page_token in self._runs(response):
                    self._items(items, seen, upserts, produced)
                    rv, token = page_rv, page_token
            finally:
                response.release_conn()
            if not token or stop.is_set():
                break
        if stop.is_set():
            return  # half a list must not delete anything
        deletes = [k for key in self._versions.keys() - seen.keys() for k in self._produced[key]]
        for key in self._versions.keys() - seen.keys():
            del self._produced[key]
        for key, keys in produced.items():
            old = self._produced.get(key, ())
            deletes.extend(k for k in old if k not in keys)
            self._produced[key] = keys
        self._versions = seen
        changed = state.apply(upserts, deletes)
        log.info("%s: listed %d at resourceVersion %s, %d changed",
                 self.resource.kind, len(seen), rv, changed)  # fmt: skip
        self.rv = rv
        self.listed = True

    def _runs(self, response: Any) -> Iterable[tuple[Sequence[Item], str, str]]:
        """A list page's items, in runs as they arrive when the codec streams."""
        stream = getattr(self.codec, "stream", None)
        if stream is not None:
            return stream(response)
        return [self.codec.page(response.data)]

    def _items(self, items: Sequence[Item], seen: dict[ObjectKey, str], upserts: list[Stored],
               produced: dict[ObjectKey, tuple[ObjectKey, ...]]) -> None:  # fmt: skip
        """One run of listed items into what the list collects."""
        for key, version, raw in items:
            seen[key] = version
            if self._versions.get(key) == version:
                continue  # unchanged since we last held it: no parse, no apply
            objects = self._parse(raw, key)
            if objects is None:  # keep serving the last good version, if any
                if key in self._versions:
                    seen[key] = self._versions[key]
                else:
                    del seen[key]
                continue
            upserts.extend(objects)
            # one object per item is the rule: no generator for it (20,000 at 10k services)
            produced[key] = (
                (objects[0].key,) if len(objects) == 1 else tuple(o.key for o in objects)
            )

    # ---- watch ------------------------------------------------------------------------

    def _watch(self, state: ClusterState, stop: threading.Event) -> bool:
        """Follow changes until the stream ends; True when it made progress."""
        t = self.tuning
        timeout = random.randint(t.watch_timeout, 2 * t.watch_timeout)
        started, progressed = time.monotonic(), False
        query = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": self.rv,
            "timeoutSeconds": timeout,
        }
        response = self._request(query, (t.connect_timeout, timeout + 30))
        with self._lock:
            self._response = response
        try:
            if stop.is_set():
                return True
            for line in _lines(response):
                self._event(state, self.codec.event(line))
                progressed = True
        finally:
            with self._lock:
                self._response = None
            response.release_conn()
        return progressed or time.monotonic() - started > 1.0

    def _event(self, state: ClusterState, event: Event) -> None:
        kind, (key, version, raw) = event.type, event.item
        if kind == "ERROR":
            code, reason, message = event.error
            if code == 410:
                raise Gone()
            raise WatchFailed(f"{code} {reason}: {message}")
        if kind == "BOOKMARK":
            self.rv = version or self.rv
            return
        if kind == "DELETED":
            self._versions.pop(key, None)
            state.apply((), self._produced.pop(key, ()))
        elif kind in ("ADDED", "MODIFIED"):
            objects = self._parse(raw, key)
            if objects is not None:
                keys = tuple(o.key for o in objects)
                stale = [k for k in self._produced.get(key, ()) if k not in keys]
                self._versions[key], self._produced[key] = version, keys
                state.apply(objects, stale)
        else:
            log.warning("%s: unknown watch event type %r", self.resource.kind, kind)
        self.rv = version or self.rv

    # ---- helpers ----------------------------------------------------------------------

    def _parse(self, raw: Any, key: ObjectKey) -> Sequence[Stored] | None:
        """State objects, or None (keep the last good version) when the codec rejects it."""
        try:
            return self.codec.objects(raw)
        except InvalidField as e:
            log.warning("%s %s/%s rejected, keeping the last good version: %s", *key, e)
            return None


def _lines(response: Any) -> Iterator[bytes]:
    """Watch events, one JSON document per line, as soon as each chunk arrives."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=True):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (line for line in complete if line.strip())
    if pending.strip():
        yield pending


def _describe(e: Exception) -> str:
    if isinstance(e, ApiError):
        return f"HTTP {e.status} {e.reason}"
    return f"{type(e).__name__}: {e}"


class KubeApiSource:
    """Feeds a `ClusterState` from the API server (`Source` protocol).

    One thread per kind, so a slow or failing collection never holds the others back;
    `mark_synced` only once every kind has been listed completely.
    """

    def __init__(
        self,
        api: Any,
        kinds: set[str],
        tuning: Tuning = Tuning(),
        codec: Callable[[Resource], Codec] = JsonCodec,
    ):
        """API: a `Transport`, or the official client's ApiClient (wrapped in one)."""
        unknown = set(kinds) - RESOURCES.keys()
        if unknown or not kinds:
            raise ValueError(
                f"cannot watch kinds {sorted(unknown) or '(none)'}; known: {sorted(RESOURCES)}"
            )
        self.transport: Transport = ClientTransport(api) if hasattr(api, "call_api") else api
        self.codec = codec
        self.kinds = frozenset(kinds)
        self.tuning = tuning

    def run(self, state: ClusterState, stop: threading.Event) -> None:
        pending = set(self.kinds)
        lock = threading.Lock()

        def listed(kind: str) -> None:
            with lock:
                pending.discard(kind)
                if not pending:
                    state.mark_synced()

        reflectors = [
            _Reflector(RESOURCES[k], self.transport, self.codec(RESOURCES[k]), self.tuning, listed)
            for k in sorted(self.kinds)
        ]
        threads = [
            threading.Thread(
                target=r.run, args=(state, stop), name=f"kube-{r.resource.kind}", daemon=True
            )
            for r in reflectors
        ]
        for t in threads:
            t.start()
        stop.wait()
        for r in reflectors:
            r.interrupt()
        for t in threads:
            t.join(timeout=10)
