"""The state directory: where a cluster keeps its objects, manifests, logs and sockets.

<state>/topology.json     the cluster's shape (written once by `up`)
<state>/objects.json      every API object (the supervisor is the only writer)
<state>/manifests/        Services, EndpointSlices, Pods, Nodes, one JSON file each:
                          what the proxies and DNS servers follow
<state>/sandboxes.json    pod sandboxes (netns, IP) the kubelet layer made
<state>/pids/             one file per child process, for `down` after a crash
<state>/api.sock          the supervisor's API
<state>/logs/             daemon and child logs; logs/pods/<ns>_<pod>_<uid>/<container>.log
<state>/cni/<node>/       CNI config and IPAM store per node
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

DEFAULT_ROOT = Path("/run/netplane")
MANIFEST_KINDS = ("Service", "EndpointSlice", "Pod", "Node")  # Endpoints arrive mirrored


def default_state_dir(cluster: str) -> Path:
    return DEFAULT_ROOT / cluster


def write_atomic(path: Path, text: str) -> None:
    """Readers (the proxies' manifest source) never see a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path, default: Any) -> Any:
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

    def pod_logs(self, namespace: str, name: str, uid: str) -> Path:
        """Where a pod's container logs go, one `<container>.log` each (kubelet's
        /var/log/pods layout)."""
        return self.logs / "pods" / f"{namespace}_{name}_{uid}"

    def cni_dir(self, node: str) -> Path:
        return self.path / "cni" / node

    def create(self) -> None:
        for d in (self.path, self.manifests, self.logs, self.pids):
            d.mkdir(parents=True, exist_ok=True)

    def manifest_file(self, key: tuple[str, str, str]) -> Path:
        name = "_".join(re.sub(r"[^a-z0-9.-]", "-", part.lower()) or "-" for part in key)
        if len(name) > 200:  # a file name is at most 255 bytes; names may be 253 long
            name = f"{name[:180]}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"
        return self.manifests / f"{name}.json"
