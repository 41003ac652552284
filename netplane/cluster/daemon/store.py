"""The daemon's object store: every API object, one lock, and what is persisted.

Objects are plain dicts keyed by (kind, namespace, name), as the API serves them. Each
write bumps `metadata.resourceVersion` (one counter for the store, as etcd's revision) and
is kept as a watch event (ADDED, MODIFIED, DELETED) in a bounded history, as the API
server's watch cache: a watcher asks for what came after the revision it listed at.
Persistence: `objects.json` (what a restarted daemon reloads) and the manifests the proxies
and DNS servers follow.
"""

from __future__ import annotations

import datetime
import json
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from netplane.cluster.statedir import MANIFEST_KINDS, StateDir, write_atomic

Key = tuple[str, str, str]
Event = tuple[int, str, Key, dict]  # (revision, ADDED | MODIFIED | DELETED, key, object)
HISTORY = 2000  # events kept for watchers (the API server keeps ~100 per kind by default)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ObjectStore:
    def __init__(self, state: StateDir) -> None:
        self.state = state
        self.lock = threading.RLock()
        self.changed = threading.Event()  # wakes the controller loop
        self.written = threading.Condition(self.lock)  # wakes the watchers
        self.history: deque[Event] = deque(maxlen=HISTORY)
        self.objects: dict[Key, dict] = {}
        self.revision = 0
        self._manifests = ManifestWriter(state)
        self._saved = ""

    # -- reads and writes (callers hold `lock` when they read-modify-write) --------------
    def get(self, key: Key) -> dict | None:
        return self.objects.get(key)

    def items(self, kind: str | None = None) -> Iterator[tuple[Key, dict]]:
        return ((k, v) for k, v in list(self.objects.items()) if kind is None or k[0] == kind)

    def put(self, key: Key, body: dict) -> dict:
        """Store BODY under KEY with a new resourceVersion (unless nothing changed)."""
        with self.lock:
            old = self.objects.get(key)
            if old is not None and _same(old, body):
                return old
            self.revision += 1
            body = {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.revision)}}
            self.objects[key] = body
            self._event("ADDED" if old is None else "MODIFIED", key, body)
            return body

    def pop(self, key: Key) -> dict | None:
        with self.lock:
            old = self.objects.pop(key, None)
            if old is not None:
                self.revision += 1
                meta = {**old["metadata"], "resourceVersion": str(self.revision)}
                self._event("DELETED", key, {**old, "metadata": meta})
            return old

    def _event(self, kind: str, key: Key, body: dict) -> None:
        self.history.append((self.revision, kind, key, body))
        self.written.notify_all()

    def events_since(self, revision: int, timeout: float) -> list[Event] | None:
        """The events after REVISION, waiting up to TIMEOUT for one; None when some of
        them are no longer kept (the API's 410 Gone: list again)."""
        with self.lock:
            if self.revision <= revision:
                self.written.wait(timeout)
            if self.revision <= revision:
                return []
            if not self.history or self.history[0][0] > revision + 1:
                return None
            return [e for e in self.history if e[0] > revision]

    def touch(self) -> None:
        self.changed.set()

    # -- persistence -------------------------------------------------------------------------
    def persist(self) -> None:
        with self.lock:
            self._manifests.sync(self.objects)
            text = json.dumps(list(self.objects.values()))
        if text != self._saved:
            write_atomic(self.state.path / "objects.json", text)
            self._saved = text


def _same(a: dict, b: dict) -> bool:
    strip = ("resourceVersion",)
    ma = {k: v for k, v in a.get("metadata", {}).items() if k not in strip}
    mb = {k: v for k, v in b.get("metadata", {}).items() if k not in strip}
    return ma == mb and {k: v for k, v in a.items() if k != "metadata"} == {
        k: v for k, v in b.items() if k != "metadata"
    }


class ManifestWriter:
    """Mirrors the objects the data plane consumes into `<state>/manifests/`, touching only
    the files whose object changed (the proxies re-read changed files only)."""

    def __init__(self, state: StateDir) -> None:
        self.state = state
        self._written: dict[Key, str] = {}
        for f in state.manifests.glob("*.json"):
            f.unlink()

    def sync(self, objects: dict[Key, dict]) -> int:
        wanted = {k: v for k, v in objects.items() if k[0] in MANIFEST_KINDS}
        changed = 0
        for key in [k for k in self._written if k not in wanted]:
            self.state.manifest_file(key).unlink(missing_ok=True)
            del self._written[key]
            changed += 1
        for key, body in wanted.items():
            meta = {k: v for k, v in body["metadata"].items() if k != "resourceVersion"}
            text = json.dumps({**body, "metadata": meta}, sort_keys=True)
            if self._written.get(key) != text:
                write_atomic(self.state.manifest_file(key), text)
                self._written[key] = text
                changed += 1
        return changed


def read_saved(path: Path) -> list[dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return []
