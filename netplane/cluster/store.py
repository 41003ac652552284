"""The state directory: where a cluster keeps its objects, manifests, logs and sockets.

<state>/topology.json     the cluster's shape (written once by `up`)
<state>/objects.json      every API object (the supervisor is the only writer)
<state>/manifests/        Services, EndpointSlices, Pods, Nodes, one JSON file each:
                          what the proxies and DNS servers follow
<state>/sandboxes.json    pod sandboxes (netns, IP) the kubelet layer made
<state>/pids/             one file per child process, for `down` after a crash
<state>/api.sock          the supervisor's API
<state>/logs/             supervisor and child logs
<state>/cni/<node>/       CNI config and IPAM store per node
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

DEFAULT_ROOT = Path("/run/netplane")
MANIFEST_KINDS = ("Service", "EndpointSlice", "Pod", "Node")  # Endpoints arrive mirrored


def default_state_dir(cluster: str) -> Path:
    return DEFAULT_ROOT / cluster


def write_atomic(path: Path, text: str) -> None:
    """Readers (the proxies' manifest source) never see a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path, default):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default


class StateDir:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).absolute()

    @property
    def socket(self) -> Path:
        return self.path / "api.sock"

    @property
    def manifests(self) -> Path:
        return self.path / "manifests"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def pids(self) -> Path:
        return self.path / "pids"

    def cni_dir(self, node: str) -> Path:
        return self.path / "cni" / node

    def create(self) -> None:
        for d in (self.path, self.manifests, self.logs, self.pids):
            d.mkdir(parents=True, exist_ok=True)

    def manifest_file(self, key: tuple[str, str, str]) -> Path:
        name = "_".join(re.sub(r"[^a-z0-9.-]", "-", part.lower()) or "-" for part in key)
        return self.manifests / f"{name}.json"


class ManifestWriter:
    """Mirrors the objects the data plane consumes into `<state>/manifests/`, touching only
    the files whose object changed (the proxies re-read changed files only)."""

    def __init__(self, state: StateDir) -> None:
        self.state = state
        self._written: dict[tuple[str, str, str], str] = {}
        for f in state.manifests.glob("*.json"):
            f.unlink()

    def sync(self, objects: dict[tuple[str, str, str], dict]) -> int:
        wanted = {k: v for k, v in objects.items() if k[0] in MANIFEST_KINDS}
        changed = 0
        for key in [k for k in self._written if k not in wanted]:
            self.state.manifest_file(key).unlink(missing_ok=True)
            del self._written[key]
            changed += 1
        for key, body in wanted.items():
            text = json.dumps(body, sort_keys=True)
            if self._written.get(key) != text:
                write_atomic(self.state.manifest_file(key), text)
                self._written[key] = text
                changed += 1
        return changed
