"""Cluster state shared by the components, and per-consumer change tracking.

Sources write objects into a `ClusterState`; each consumer (proxy, DNS) owns a
`ChangeTracker` that accumulates which services changed since it last looked, the way
kube-proxy's service and endpoints change trackers do, so a sync touches only those.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from operator import attrgetter, itemgetter
from types import MappingProxyType
from typing import Any, Protocol

from netplane.model import (
    EndpointSlice,
    NamespacedName,
    Node,
    ObjectKey,
    Pod,
    RawObject,
    Service,
)

ServiceKey = NamespacedName  # a Service's (namespace, name): what proxy and DNS work by
Change = tuple[ObjectKey, ServiceKey | None]  # an object that changed, and its service


class Stored(Protocol):
    """What the state holds: a model object, or a consumer's own lean form of a kind
    (DNS keeps only the fields it answers from) with the same key, the same namespace and
    name attributes, and for Services and EndpointSlices the same `service_key`."""

    @property
    def key(self) -> ObjectKey: ...


@dataclass(frozen=True, slots=True)
class Changes:
    """What changed between two `ChangeTracker.pop()` calls."""

    services: frozenset[ServiceKey] = frozenset()  # the Service object itself
    endpoints: frozenset[ServiceKey] = frozenset()  # the EndpointSlices of that service
    pods: frozenset[NamespacedName] = frozenset()
    nodes: frozenset[str] = frozenset()
    others: frozenset[ObjectKey] = frozenset()
    # monotonic time of the first change per service key not yet popped, for
    # network_programming_duration (object change -> programmed)
    first_change: Mapping[ServiceKey, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.services or self.endpoints or self.pods or self.nodes or self.others)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A consistent, read-only view of the state at one instant."""

    services: Mapping[ServiceKey, Service]
    slices: Mapping[ServiceKey, tuple[EndpointSlice, ...]]  # by owning service
    pods: Mapping[NamespacedName, Pod]
    nodes: Mapping[str, Node]
    others: Mapping[ObjectKey, RawObject]
    synced: bool
    generation: int

    def slices_for(self, key: ServiceKey) -> tuple[EndpointSlice, ...]:
        return self.slices.get(key, ())


@dataclass(frozen=True, slots=True)
class _Kind:
    """How the state stores a kind and how the change feed reports it. The key getters are
    operator's C getters: applying 50k objects calls them 100k times."""

    change: str  # the `Changes` field, also the name of the state's store
    of_key: Callable[[ObjectKey], Hashable]  # an ObjectKey -> its key in the store, `Changes`
    of_object: Callable[[Any], Hashable]  # an object -> the same
    by_service: bool = False  # `Changes` names its service instead (Services, EndpointSlices)


_NAMESPACED = _Kind("", itemgetter(1, 2), attrgetter("namespace", "name"))
_KINDS = {
    "Service": replace(_NAMESPACED, change="services", by_service=True),
    "EndpointSlice": replace(_NAMESPACED, change="endpoints", by_service=True),
    "Pod": replace(_NAMESPACED, change="pods"),
    "Node": _Kind("nodes", itemgetter(2), attrgetter("name")),
}
_SLICES = _KINDS["EndpointSlice"]
_BY_TYPE = {Service: _KINDS["Service"], EndpointSlice: _SLICES,
            Pod: _KINDS["Pod"], Node: _KINDS["Node"]}  # fmt: skip
_OTHER = _Kind("others", lambda key: key, attrgetter("key"))  # every other kind: RawObject
_BY_TYPE[RawObject] = _OTHER


class ChangeTracker:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._changed: dict[str, set[Any]] = {k.change: set() for k in (*_KINDS.values(), _OTHER)}
        self._first: dict[ServiceKey, float] = {}

    def record(self, changed: Iterable[Change], now: float) -> None:
        """Note CHANGED (at monotonic time NOW) and wake whoever waits for changes."""
        with self._cond:
            for obj_key, service_key in changed:
                kind = _KINDS.get(obj_key[0], _OTHER)
                if not kind.by_service:
                    self._changed[kind.change].add(kind.of_key(obj_key))
                elif service_key is not None and service_key[1]:  # else: feeds nothing
                    self._changed[kind.change].add(service_key)
                    self._first.setdefault(service_key, now)
            self._cond.notify_all()

    def pop(self) -> Changes:
        with self._cond:
            changes = Changes(
                **{name: frozenset(keys) for name, keys in self._changed.items()},
                first_change=dict(self._first),
            )
            for keys in self._changed.values():
                keys.clear()
            self._first.clear()
            return changes

    def _has_changes(self) -> bool:
        return any(self._changed.values())

    def pending(self) -> bool:
        with self._cond:
            return self._has_changes()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until something changed (True) or the timeout passed (False)."""
        with self._cond:
            return self._cond.wait_for(self._has_changes, timeout)


class ClusterState:
    """The objects the sources delivered, with a change feed for each consumer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._services: dict[ServiceKey, Service] = {}
        self._slice_objects: dict[NamespacedName, EndpointSlice] = {}
        self._slices: dict[ServiceKey, tuple[EndpointSlice, ...]] = {}  # by owning service
        self._pods: dict[NamespacedName, Pod] = {}
        self._nodes: dict[str, Node] = {}
        self._others: dict[ObjectKey, RawObject] = {}
        # each kind's store, by its `_Kind.change`
        self._stores: dict[str, dict[Any, Any]] = {
            "services": self._services,
            "endpoints": self._slice_objects,
            "pods": self._pods,
            "nodes": self._nodes,
            "others": self._others,
        }
        self._trackers: list[ChangeTracker] = []
        self._synced = threading.Event()
        self._generation = 0

    def tracker(self) -> ChangeTracker:
        """A new change feed; it starts empty (take a snapshot for the current state)."""
        t = ChangeTracker()
        with self._lock:
            self._trackers.append(t)
        return t

    def apply(self, upserts: Iterable[Stored] = (), deletes: Iterable[ObjectKey] = ()) -> int:
        """Add/replace and remove objects in one step; returns how many really changed."""
        now = time.monotonic()
        changed: list[Change] = []
        with self._lock:
            for obj in upserts:
                changed.extend(self._upsert(obj))
            for key in deletes:
                changed.extend(self._delete(key))
            if not changed:
                return 0
            self._generation += 1
            trackers = list(self._trackers)
        for t in trackers:
            t.record(changed, now)
        return len(changed)

    def _upsert(self, obj: Any) -> list[Change]:
        kind = _BY_TYPE.get(type(obj))
        if kind is None:  # a consumer's lean form of a modelled kind, or another kind
            kind = _KINDS.get(obj.key[0], _OTHER)
            if kind is not _OTHER:
                _BY_TYPE[type(obj)] = kind
        store, key = self._stores[kind.change], kind.of_object(obj)
        old = store.get(key)
        if old == obj:
            return []
        store[key] = obj
        if kind is _SLICES:
            result = []
            if old is not None and old.service_key != obj.service_key:  # moved to another
                self._unlink_slice(old)
                result.append((obj.key, old.service_key))
            held = self._slices.get(obj.service_key)
            if not held:  # a service's first slice (every one in a first load): nothing to sort
                self._slices[obj.service_key] = (obj,)
                return [*result, (obj.key, obj.service_key)]
            others = tuple(s for s in held if s.name != obj.name)
            self._slices[obj.service_key] = tuple(sorted((*others, obj), key=lambda s: s.name))
            return [*result, (obj.key, obj.service_key)]
        return [(obj.key, obj.service_key if kind.by_service else None)]

    def _delete(self, key: ObjectKey) -> list[Change]:
        kind = _KINDS.get(key[0], _OTHER)
        old = self._stores[kind.change].pop(kind.of_key(key), None)
        if old is None:
            return []
        if kind is _SLICES:
            self._unlink_slice(old)
        return [(key, old.service_key if kind.by_service else None)]

    def _unlink_slice(self, old: Any) -> None:
        """Remove OLD from its service's slices."""
        rest = tuple(s for s in self._slices.get(old.service_key, ()) if s.name != old.name)
        if rest:
            self._slices[old.service_key] = rest
        else:
            self._slices.pop(old.service_key, None)

    def mark_synced(self) -> None:
        """The source delivered a complete view at least once (readiness gates on this)."""
        self._synced.set()

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                services=MappingProxyType(dict(self._services)),
                slices=MappingProxyType(dict(self._slices)),
                pods=MappingProxyType(dict(self._pods)),
                nodes=MappingProxyType(dict(self._nodes)),
                others=MappingProxyType(dict(self._others)),
                synced=self._synced.is_set(),
                generation=self._generation,
            )
