"""Cluster state shared by the components, and per-consumer change tracking.

Sources write objects into a `ClusterState`; each consumer (proxy, DNS) owns a
`ChangeTracker` that accumulates which services changed since it last looked, the way
kube-proxy's service and endpoints change trackers do, so a sync touches only those.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from netplane.model import EndpointSlice, KubeObject, Node, ObjectKey, Pod, RawObject, Service

ServiceKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True, slots=True)
class Changes:
    """What changed between two `ChangeTracker.pop()` calls."""

    services: frozenset[ServiceKey] = frozenset()  # the Service object itself
    endpoints: frozenset[ServiceKey] = frozenset()  # the EndpointSlices of that service
    pods: frozenset[ServiceKey] = frozenset()  # (namespace, pod name)
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
    pods: Mapping[ServiceKey, Pod]
    nodes: Mapping[str, Node]
    others: Mapping[ObjectKey, RawObject]
    synced: bool
    generation: int

    def slices_for(self, key: ServiceKey) -> tuple[EndpointSlice, ...]:
        return self.slices.get(key, ())


class ChangeTracker:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._services: set[ServiceKey] = set()
        self._endpoints: set[ServiceKey] = set()
        self._pods: set[ServiceKey] = set()
        self._nodes: set[str] = set()
        self._others: set[ObjectKey] = set()
        self._first: dict[ServiceKey, float] = {}

    def _record(self, obj_key: ObjectKey, service_key: ServiceKey | None, now: float) -> None:
        kind, namespace, name = obj_key
        if kind == "Service":
            self._services.add((namespace, name))
        elif kind == "EndpointSlice":
            if service_key is None or not service_key[1]:
                return  # a slice owned by no service feeds nothing
            self._endpoints.add(service_key)
        elif kind == "Pod":
            self._pods.add((namespace, name))
        elif kind == "Node":
            self._nodes.add(name)
        else:
            self._others.add(obj_key)
        if kind in ("Service", "EndpointSlice"):
            self._first.setdefault(service_key or (namespace, name), now)

    def pop(self) -> Changes:
        with self._cond:
            changes = Changes(
                frozenset(self._services),
                frozenset(self._endpoints),
                frozenset(self._pods),
                frozenset(self._nodes),
                frozenset(self._others),
                dict(self._first),
            )
            for s in (
                self._services,
                self._endpoints,
                self._pods,
                self._nodes,
                self._others,
                self._first,
            ):
                s.clear()
            return changes

    def _has_changes(self) -> bool:
        return bool(self._services or self._endpoints or self._pods or self._nodes or self._others)

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
        self._slice_objects: dict[ServiceKey, EndpointSlice] = {}  # by (namespace, slice name)
        self._slices: dict[ServiceKey, tuple[EndpointSlice, ...]] = {}
        self._pods: dict[ServiceKey, Pod] = {}
        self._nodes: dict[str, Node] = {}
        self._others: dict[ObjectKey, RawObject] = {}
        self._trackers: list[ChangeTracker] = []
        self._synced = threading.Event()
        self._generation = 0

    def tracker(self) -> ChangeTracker:
        """A new change feed; it starts empty (take a snapshot for the current state)."""
        t = ChangeTracker()
        with self._lock:
            self._trackers.append(t)
        return t

    def apply(self, upserts: Iterable[KubeObject] = (), deletes: Iterable[ObjectKey] = ()) -> int:
        """Add/replace and remove objects in one step; returns how many really changed."""
        now = time.monotonic()
        changed: list[tuple[ObjectKey, ServiceKey | None]] = []
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
            with t._cond:
                for obj_key, service_key in changed:
                    t._record(obj_key, service_key, now)
                t._cond.notify_all()
        return len(changed)

    def _upsert(self, obj: KubeObject) -> list[tuple[ObjectKey, ServiceKey | None]]:
        if isinstance(obj, Service):
            if self._services.get(obj.service_key) == obj:
                return []
            self._services[obj.service_key] = obj
            return [(obj.key, obj.service_key)]
        if isinstance(obj, EndpointSlice):
            slice_key = (obj.namespace, obj.name)
            old = self._slice_objects.get(slice_key)
            if old == obj:
                return []
            result = []
            if old is not None and old.service_key != obj.service_key:
                result.extend(self._delete(obj.key))
            self._slice_objects[slice_key] = obj
            others = tuple(s for s in self._slices.get(obj.service_key, ()) if s.name != obj.name)
            self._slices[obj.service_key] = tuple(sorted((*others, obj), key=lambda s: s.name))
            result.append((obj.key, obj.service_key))
            return result
        if isinstance(obj, Pod):
            key = (obj.namespace, obj.name)
            if self._pods.get(key) == obj:
                return []
            self._pods[key] = obj
        elif isinstance(obj, Node):
            if self._nodes.get(obj.name) == obj:
                return []
            self._nodes[obj.name] = obj
        else:
            if self._others.get(obj.key) == obj:
                return []
            self._others[obj.key] = obj
        return [(obj.key, None)]

    def _delete(self, key: ObjectKey) -> list[tuple[ObjectKey, ServiceKey | None]]:
        kind, namespace, name = key
        if kind == "Service":
            return [(key, (namespace, name))] if self._services.pop((namespace, name), None) else []
        if kind == "EndpointSlice":
            old = self._slice_objects.pop((namespace, name), None)
            if old is None:
                return []
            rest = tuple(s for s in self._slices.get(old.service_key, ()) if s.name != name)
            if rest:
                self._slices[old.service_key] = rest
            else:
                self._slices.pop(old.service_key, None)
            return [(key, old.service_key)]
        store: dict = {"Pod": self._pods, "Node": self._nodes}.get(kind, self._others)
        store_key = {"Pod": (namespace, name), "Node": name}.get(kind, key)
        return [(key, None)] if store.pop(store_key, None) is not None else []

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

    def keys(self) -> set[ObjectKey]:
        """Every object key currently held (sources diff against this)."""
        with self._lock:
            return (
                {s.key for s in self._services.values()}
                | {s.key for s in self._slice_objects.values()}
                | {p.key for p in self._pods.values()}
                | {n.key for n in self._nodes.values()}
                | set(self._others)
            )
