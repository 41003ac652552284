"""Object sources: where the cluster's objects come from.

Every source feeds a `ClusterState` through `state.apply()` and calls `state.mark_synced()`
once it has delivered a complete view. Today: manifest files (a file or a directory, polled
for changes). The Kubernetes API source plugs in behind the same `Source` protocol.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from netplane.model import KubeObject, LoadResult, ManifestError, ObjectKey, load_file
from netplane.model._load import manifest_files
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


_Signature = tuple[int, int, int]  # (inode, size, mtime_ns)


class ManifestSource:
    """Manifests in a file or a directory tree, re-read when a file changes.

    Polling `stat()` is used rather than inotify: it works the same on every filesystem
    (bind mounts, ConfigMap volumes whose symlinks flip atomically) and costs a few
    microseconds per file per poll. Only changed files are parsed again.

    An object that becomes invalid, or a file that stops parsing, keeps its last good
    version in service: a typo in one manifest must not take a running service down.
    Deleting the object from the file (or the file) removes it.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        poll_interval: float = 0.1,
        on_errors: Callable[[tuple[ManifestError, ...]], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.poll_interval = poll_interval
        self._on_errors = on_errors
        self._files: dict[Path, tuple[_Signature, LoadResult]] = {}
        self._served: dict[ObjectKey, KubeObject] = {}
        self._origin: dict[ObjectKey, Path] = {}  # which file each served object came from
        self.errors: tuple[ManifestError, ...] = ()

    def sync_once(self, state: ClusterState) -> bool:
        """Re-read changed files and apply the difference; True when any file changed."""
        current = {}
        for f in manifest_files(self.path) if self.path.exists() else []:
            try:
                st = f.stat()
            except OSError:
                continue
            current[f] = (st.st_ino, st.st_size, st.st_mtime_ns)
        dirty = current.keys() != self._files.keys() or any(
            self._files[f][0] != sig for f, sig in current.items()
        )
        if not dirty and state.synced:
            return False
        files = {}
        for f, sig in current.items():
            old = self._files.get(f)
            files[f] = old if old is not None and old[0] == sig else (sig, load_file(f))
        self._files = files
        self._publish(state)
        return True

    def _publish(self, state: ClusterState) -> None:
        wanted: dict[ObjectKey, KubeObject] = {}
        origin: dict[ObjectKey, Path] = {}
        errors: list[ManifestError] = []
        if not self.path.exists():
            errors.append(ManifestError(str(self.path), 0, "no such file or directory"))
        for f, (_, result) in sorted(self._files.items()):
            errors.extend(result.errors)
            unreadable = not result.objects and any(e.document == 0 for e in result.errors)
            keep = (
                {k for k, src in self._origin.items() if src == f}
                if unreadable
                else result.rejected_keys & self._served.keys()
            )
            for key in keep:  # the last good version stays in service
                if key not in wanted:
                    wanted[key], origin[key] = self._served[key], f
            for obj in result.objects:
                if obj.key in wanted:
                    errors.append(
                        ManifestError(
                            str(f),
                            0,
                            "defined more than once; the first definition is used",
                            kind=obj.key[0],
                            name="/".join(k for k in obj.key[1:] if k),
                        )
                    )
                    continue
                wanted[obj.key], origin[obj.key] = obj, f
        deletes = [k for k in self._served if k not in wanted]
        upserts = [o for k, o in wanted.items() if self._served.get(k) != o]
        self._served, self._origin = wanted, origin
        state.apply(upserts, deletes)
        state.mark_synced()
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
            try:
                self.sync_once(state)
            except Exception:  # a source must outlive any one bad read
                log.exception("reading manifests from %s failed", self.path)
            stop.wait(self.poll_interval)
