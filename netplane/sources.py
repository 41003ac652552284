"""Object sources: where the cluster's objects come from.

Every source feeds a `ClusterState` through `state.apply()` and calls `state.mark_synced()`
once it has delivered a complete view: manifest files (a file or a directory, followed for
changes) here, the Kubernetes API in `netplane.kube`, both behind the `Source` protocol.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from netplane.model import KubeObject, ManifestError, ObjectKey, load_file
from netplane.model._load import MANIFEST_SUFFIXES, manifest_files
from netplane.state import ClusterState

try:  # inotify through a well-kept Rust library; polling where it is missing
    from watchfiles._rust_notify import RustNotify
except ImportError:  # pragma: no cover
    RustNotify = None

log = logging.getLogger(__name__)


class Source(Protocol):
    def run(self, state: ClusterState, stop: threading.Event) -> None:
        """Feed `state` until `stop` is set."""


def start_source(source: Source, state: ClusterState) -> tuple[threading.Thread, threading.Event]:
    """Run a source in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()
    thread = threading.Thread(
        target=source.run, args=(state, stop), name=type(source).__name__, daemon=True
    )
    thread.start()
    return thread, stop


_Signature = tuple[int, int, int]  # (inode, size, mtime_ns)


class ManifestSource:
    """Manifests in a file or a directory tree, re-read when a file changes.

    Changes arrive through inotify (the `watchfiles` library), so an idle source costs
    nothing and an edit is seen within milliseconds even with ten thousand files; a full
    `stat()` rescan every `rescan_interval` seconds (and on any event that is not a plain
    manifest file, such as a ConfigMap volume flipping its `..data` symlink) catches what
    inotify cannot see (NFS, some bind mounts). Only changed files are parsed again, and
    only the objects they define are compared and published, so a one-object edit costs the
    same with ten services as with ten thousand.

    An object that becomes invalid, or a file that stops parsing, keeps its last good
    version in service: a typo in one manifest must not take a running service down.
    Deleting the object from the file (or the file) removes it. When several files define
    the same object, the first file in path order wins and the others are reported.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        poll_interval: float = 0.1,
        rescan_interval: float = 10.0,
        on_errors: Callable[[tuple[ManifestError, ...]], None] | None = None,
    ) -> None:
        self.path = Path(os.path.abspath(path))  # inotify reports absolute paths
        self.poll_interval = poll_interval  # when inotify is unavailable
        self.rescan_interval = rescan_interval
        self._on_errors = on_errors
        self._signatures: dict[Path, _Signature] = {}
        self._file_errors: dict[Path, tuple[ManifestError, ...]] = {}
        self._file_objects: dict[Path, dict[ObjectKey, KubeObject]] = {}  # incl. last good
        self._definers: dict[ObjectKey, set[Path]] = {}  # files that define each object
        self._duplicates: set[ObjectKey] = set()  # keys defined in more than one file
        self._served: dict[ObjectKey, KubeObject] = {}
        self.errors: tuple[ManifestError, ...] = ()

    def sync_once(self, state: ClusterState, paths: Iterable[Path] | None = None) -> bool:
        """Re-read changed files and apply the difference; True when any file changed.

        `paths`: the files an event named; None rescans the whole tree.
        """
        if paths is None:
            current = {
                f: sig
                for f in (manifest_files(self.path) if self.path.exists() else [])
                if (sig := _signature(f)) is not None
            }
            candidates = current.keys() | self._signatures.keys()
        else:
            candidates = set(paths)
            current = {f: sig for f in candidates if (sig := _signature(f)) is not None}
        dirty = {f for f in candidates if current.get(f) != self._signatures.get(f)}
        if not dirty and state.synced:
            return False
        for f in dirty:
            if f in current:
                self._signatures[f] = current[f]
            else:
                self._signatures.pop(f, None)
        affected: set[ObjectKey] = set()
        for f in dirty:
            affected |= self._reload(f, f in current)
        self._publish(state, affected)
        return True

    def _reload(self, f: Path, exists: bool) -> set[ObjectKey]:
        """Re-read one file; returns the keys whose definition may have changed."""
        old = self._file_objects.pop(f, {})
        self._file_errors.pop(f, None)
        for key in old:
            self._definers[key].discard(f)
        if not exists:
            return set(old)
        result = load_file(f)
        if result.errors:  # only files with errors: this is sorted on every change
            self._file_errors[f] = result.errors
        unreadable = not result.objects and any(e.document == 0 for e in result.errors)
        objects = (
            dict(old)
            if unreadable
            else {  # the last good versions stay in service
                k: old[k] for k in result.rejected_keys if k in old
            }
        )
        for obj in result.objects:
            objects.setdefault(obj.key, obj)  # a second definition in one file is ignored
        self._file_objects[f] = objects
        for key in objects:
            self._definers.setdefault(key, set()).add(f)
        return old.keys() | objects.keys()

    def _publish(self, state: ClusterState, affected: set[ObjectKey]) -> None:
        upserts: list[KubeObject] = []
        deletes: list[ObjectKey] = []
        for key in affected:
            files = self._definers.get(key)
            if files and len(files) > 1:
                self._duplicates.add(key)
            else:
                self._duplicates.discard(key)
            if not files:
                self._definers.pop(key, None)
                if self._served.pop(key, None) is not None:
                    deletes.append(key)
                continue
            obj = self._file_objects[min(files)][key]
            if self._served.get(key) is not obj:
                self._served[key] = obj
                upserts.append(obj)
        state.apply(upserts, deletes)
        state.mark_synced()
        self._report_errors()

    def _report_errors(self) -> None:
        errors = (
            []
            if self.path.exists()
            else [ManifestError(str(self.path), 0, "no such file or directory")]
        )
        for f in sorted(self._file_errors):
            errors.extend(self._file_errors[f])
        for key in sorted(self._duplicates):
            for f in sorted(self._definers[key])[1:]:
                errors.append(
                    ManifestError(
                        str(f),
                        0,
                        "defined more than once; the first definition is used",
                        kind=key[0],
                        name="/".join(k for k in key[1:] if k),
                    )
                )
        new_errors = tuple(errors)
        if new_errors != self.errors:
            for e in new_errors:
                if e not in self.errors:
                    log.warning("manifest error: %s", e)
            self.errors = new_errors
            if self._on_errors:
                self._on_errors(new_errors)

    def run(self, state: ClusterState, stop: threading.Event) -> None:
        while not stop.is_set():
            watched = self.path if self.path.is_dir() else self.path.parent
            if RustNotify is None or not watched.is_dir():
                self._guarded(state)  # nothing to watch (yet): poll until it exists
                stop.wait(self.poll_interval)
                continue
            # Register the watch before scanning, so no edit falls between the two.
            with RustNotify([str(watched)], False, False, 0, True, True) as watcher:
                self._guarded(state)
                while not stop.is_set() and watched.is_dir():
                    events = watcher.watch(20, 2, int(self.rescan_interval * 1000), stop)
                    if not isinstance(events, set):  # "timeout": rescan; "stop"/"signal"
                        if events != "timeout":
                            break
                        events = set()
                    self._guarded(state, watched, events)

    def _event_paths(self, watched: Path, events: set[tuple[int, str]]) -> set[Path] | None:
        """The manifest files an inotify batch names, or None for "rescan everything"."""
        paths = {Path(p) for _, p in events}
        if not paths or not all(
            p.name.endswith(MANIFEST_SUFFIXES)
            and p.is_relative_to(watched)
            and not any(part.startswith(".") for part in p.relative_to(watched).parts)
            for p in paths
        ):
            return None
        return paths if self.path.is_dir() else paths & {self.path}

    def _guarded(self, state: ClusterState, watched: Path | None = None, events=None) -> None:
        """Sync the files EVENTS name (everything without events); never raises: a source
        must outlive any one bad read or surprising event."""
        try:
            self.sync_once(state, self._event_paths(watched, events) if events else None)
        except Exception:
            log.exception("reading manifests from %s failed", self.path)


def _signature(f: Path) -> _Signature | None:
    try:
        st = f.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
