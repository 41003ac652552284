"""Object sources: where the cluster's objects come from.

Every source feeds a `ClusterState` through `state.apply()` and calls `state.mark_synced()`
once it has delivered a complete view: manifest files (a file or a directory, followed for
changes) here, the Kubernetes API in `netplane.kube`, both behind the `Source` protocol.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from netplane.model import KubeObject, ManifestError, ObjectKey, load_file
from netplane.model._load import MANIFEST_SUFFIXES, manifest_files
from netplane.state import ClusterState

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


FIRST_LOAD_GC_PAUSE = 30.0  # seconds the collector may stay off while the first load runs


def wait_first_load(state: ClusterState, stop: threading.Event, tick: float) -> bool:
    """Wait until STATE has a complete view (True) or STOP is set (False).

    The servers turn the collector off for their first load (~10^5 new objects and no
    cycles: it would walk them again and again for nothing) and on once it is applied. An
    API server that keeps them waiting (down, or refusing them) must not keep it off, or
    every failed attempt's cyclic garbage would stay: after FIRST_LOAD_GC_PAUSE seconds of
    waiting it collects as usual."""
    waiting = time.monotonic()
    while not stop.is_set():
        if state.wait_synced(tick):
            return True
        if time.monotonic() - waiting > FIRST_LOAD_GC_PAUSE:
            gc.enable()
    return False


_Signature = tuple[int, int, int]  # (inode, size, mtime_ns)
SETTLE = 1.0  # seconds of quiet before an object that vanished from the files is removed


class ManifestSource:
    """Manifests in a file or a directory tree, re-read when a file changes.

    Changes arrive through inotify (the `watchfiles` library), so an idle source costs
    nothing and an edit is seen within milliseconds even with ten thousand files; a full
    `stat()` rescan every `rescan_interval` seconds (and on any event that is not a plain
    manifest file, such as a ConfigMap volume flipping its `..data` symlink) catches what
    inotify cannot see (NFS, some bind mounts). Only changed files are parsed again, and
    only the objects they define are compared and published, so a one-object edit costs the
    same with ten services as with ten thousand. When several files define the same object,
    the first file in path order wins and the others are reported.

    The last good state stays in service; only an object really removed from a present,
    readable source is removed (proxy/README.md, "Sources", states the rule for users):
    - an object that becomes invalid, or a file that stops parsing (a typo, or a file
      caught half-written in the middle of a document), keeps its last good version;
    - the path (file or directory) disappearing or becoming unreadable, or a file in it
      that cannot be read (a dangling symlink, an I/O error, no permission), changes
      nothing: the last good objects are served and `stale` says why (logged, and the
      proxy's `netplane_source_stale` metric) until it is back;
    - an object no longer defined by any readable file (deleted from its file, or its file
      deleted) is removed once the source has been quiet for `settle` seconds (or has
      stayed gone for ten times that): a file caught half-written exactly between two
      documents, or a directory re-created and then refilled, is complete again by then.
    At start, a missing path counts as empty (it may be created later).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        poll_interval: float = 0.1,
        rescan_interval: float = 10.0,
        on_errors: Callable[[tuple[ManifestError, ...]], None] | None = None,
        settle: float = SETTLE,
    ) -> None:
        self.path = Path(os.path.abspath(path))  # inotify reports absolute paths
        self.poll_interval = poll_interval  # when inotify is unavailable
        self.rescan_interval = rescan_interval
        self.settle = settle
        self._on_errors = on_errors
        self._signatures: dict[Path, _Signature] = {}
        self._file_errors: dict[Path, tuple[ManifestError, ...]] = {}
        self._file_objects: dict[Path, dict[ObjectKey, KubeObject]] = {}  # incl. last good
        self._definers: dict[ObjectKey, set[Path]] = {}  # files that define each object
        self._duplicates: set[ObjectKey] = set()  # keys defined in more than one file
        self._served: dict[ObjectKey, KubeObject] = {}
        self._vanished: dict[ObjectKey, float] = {}  # served, defined nowhere: since when
        self._unreadable: set[Path] = set()  # files whose last good objects stay
        self._last_change = float("-inf")  # monotonic time a file last changed
        self._read_once = False
        self.stale: str | None = None  # why the last good objects are served, if they are
        self.errors: tuple[ManifestError, ...] = ()

    def sync_once(self, state: ClusterState, paths: Iterable[Path] | None = None) -> bool:
        """Re-read changed files and apply the difference; True when any file changed.

        `paths`: the files an event named; None rescans the whole tree.
        """
        now = time.monotonic()
        listing: list[OSError] = []
        exists = self.path.exists()
        if exists and paths is None:
            files = manifest_files(self.path, listing)
        else:
            files = list(paths or ())
        problem = self._path_problem(exists, listing)
        if problem and self._read_once:  # keep everything until the path is back
            self._set_stale(problem)
            return False
        current: dict[Path, _Signature] = {}
        unreadable: set[Path] = set()
        for f in files:
            sig = _signature(f)
            if sig is not None:
                current[f] = sig
            elif os.path.lexists(f):  # listed, but cannot be looked at: a dangling link
                unreadable.add(f)
        if paths is None:
            # files under a directory that could not be listed are not gone
            bad = [Path(e.filename) for e in listing if e.filename]
            unreadable |= {f for f in self._signatures if any(f.is_relative_to(d) for d in bad)}
            candidates = current.keys() | self._signatures.keys()
        else:
            candidates = set(files)
        readable = candidates - unreadable
        changed = {f for f in readable if current.get(f) != self._signatures.get(f)}
        retry = readable & self._unreadable  # unreadable last time: try again
        for f in changed:
            if f in current:
                self._signatures[f] = current[f]
            else:
                self._signatures.pop(f, None)
        before = set(self._unreadable)
        if paths is None:
            self._unreadable = unreadable
        else:
            self._unreadable = (self._unreadable - set(files)) | unreadable
        for f in unreadable:
            self._file_errors[f] = (ManifestError(str(f), 0, "cannot read: no such file"),)
        affected: set[ObjectKey] = set()
        for f in changed | retry:
            affected |= self._reload(f, f in current)
        if changed:
            self._last_change = now
        if changed or retry or self._vanished or self._unreadable != before or not state.synced:
            self._publish(state, affected, now)
        self._read_once = True
        self._set_stale(self._stale_reason(problem))
        return bool(changed)

    def _path_problem(self, exists: bool, listing: list[OSError]) -> str | None:
        if not exists:
            return f"{self.path}: no such file or directory"
        for e in listing:
            if e.filename and Path(e.filename) == self.path:
                return f"{self.path}: cannot list: {e.strerror}"
        return None

    def _stale_reason(self, problem: str | None) -> str | None:
        if problem:
            return problem
        if self._unreadable:
            names = ", ".join(str(f) for f in sorted(self._unreadable)[:3])
            more = ", ..." if len(self._unreadable) > 3 else ""
            return f"{len(self._unreadable)} file(s) cannot be read: {names}{more}"
        return None

    def _set_stale(self, reason: str | None) -> None:
        if reason == self.stale:
            return
        if reason:
            log.warning("manifest source %s is stale (%s): serving its last good objects",
                        self.path, reason)  # fmt: skip
        else:
            log.info("manifest source %s is readable again", self.path)
        self.stale = reason

    def _settled(self, now: float) -> set[ObjectKey]:
        """The vanished objects to remove now: the source has been quiet long enough."""
        quiet = now - self._last_change >= self.settle
        out = {k for k, since in self._vanished.items() if quiet or now - since >= 10 * self.settle}
        for key in out:
            del self._vanished[key]
        return out

    def next_settle(self) -> float | None:
        """Seconds until vanished objects may be removed (None: nothing waits)."""
        if not self._vanished:
            return None
        now = time.monotonic()
        quiet = self._last_change + self.settle
        longest = min(self._vanished.values()) + 10 * self.settle
        return max(0.0, min(quiet, longest) - now)

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
        whole_file = [e for e in result.errors if e.document == 0]
        if any(e.message.startswith("cannot read") for e in whole_file):
            self._unreadable.add(f)
        unreadable = not result.objects and bool(whole_file)
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

    def _publish(self, state: ClusterState, affected: set[ObjectKey], now: float) -> None:
        upserts: list[KubeObject] = []
        for key in affected:
            files = self._definers.get(key)
            if files and len(files) > 1:
                self._duplicates.add(key)
            else:
                self._duplicates.discard(key)
            if not files:
                self._definers.pop(key, None)
                if key in self._served:
                    self._vanished.setdefault(key, now)
                continue
            self._vanished.pop(key, None)
            obj = self._file_objects[min(files)][key]
            if self._served.get(key) is not obj:
                self._served[key] = obj
                upserts.append(obj)
        deletes = [
            key
            for key in self._settled(now)
            if not self._definers.get(key) and self._served.pop(key, None) is not None
        ]
        if self._vanished and affected:
            log.info("%d object(s) gone from %s: removed in %.1f s unless they come back",
                     len(self._vanished), self.path, self.next_settle() or 0.0)  # fmt: skip
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
        rust_notify = _inotify()
        while not stop.is_set():
            watched = self.path if self.path.is_dir() else self.path.parent
            if rust_notify is None or not watched.is_dir():
                self._guarded(state)  # nothing to watch (yet): poll until it exists
                stop.wait(self.poll_interval)
                continue
            # Register the watch before scanning, so no edit falls between the two.
            with rust_notify([str(watched)], False, False, 0, True, True) as watcher:
                self._guarded(state)
                while not stop.is_set() and watched.is_dir():
                    settle = self.next_settle()  # wake up to remove what stayed gone
                    timeout = (
                        self.rescan_interval
                        if settle is None
                        else min(self.rescan_interval, settle + 0.05)
                    )
                    events = watcher.watch(20, 2, int(timeout * 1000), stop)
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

    def _guarded(
        self,
        state: ClusterState,
        watched: Path | None = None,
        events: set[tuple[int, str]] | None = None,
    ) -> None:
        """Sync the files EVENTS name (everything without events); never raises: a source
        must outlive any one bad read or surprising event."""
        try:
            paths = self._event_paths(watched, events) if watched and events else None
            self.sync_once(state, paths)
        except Exception:
            log.exception("reading manifests from %s failed", self.path)


def _signature(f: Path) -> _Signature | None:
    try:
        st = f.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _inotify() -> Any:
    """watchfiles' inotify watcher (a well-kept Rust library), or None: then polling.
    Imported here, not at start-up: the API sources never use it (~45 ms)."""
    try:
        from watchfiles._rust_notify import RustNotify
    except ImportError:  # pragma: no cover
        return None
    return RustNotify
