"""The daemon's API: one JSON request per connection, answered from the store.

Requests: apply (create or update), create (refuse what exists), replace, patch, delete,
get, watch, exec-info, status, shutdown. Writes go through admission (defaulting,
validation, allocation); a refused object leaves the store unchanged. A watch answers with
a stream of lines instead of one: the events after the revision the client listed at.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Callable, Iterator
from typing import Any

from netplane.cluster.control.admission import AdmissionError, admit, object_key
from netplane.cluster.control.patch import PatchError, apply_patch
from netplane.cluster.control.selectors import SelectorError, matches, parse_selector
from netplane.cluster.control.topology import Topology
from netplane.cluster.daemon.pods import PodLifecycle
from netplane.cluster.daemon.store import Key, ObjectStore, now

log = logging.getLogger("netplane.cluster.api")
NAMESPACED_CHILDREN = (
    "Pod",
    "Service",
    "Deployment",
    "ReplicaSet",
    "EndpointSlice",
    "Endpoints",
    "Event",
)


class Api:
    def __init__(
        self,
        store: ObjectStore,
        topo: Topology,
        pods: PodLifecycle,
        status: Callable[[], dict],
        shutdown: Callable[[], None],
    ) -> None:
        self.store, self.topo, self.pods = store, topo, pods
        self.rng = random.Random()
        self._status, self._shutdown = status, shutdown

    def handle(self, req: dict) -> dict | Iterator[dict]:
        op = req.get("op")
        if op in ("apply", "create", "replace"):
            return self.write(req["objects"], op, req.get("dryRun", False))
        if op == "patch":
            return self.patch(tuple(req["key"]), req["patch"], req.get("type", "strategic"))
        if op == "delete":
            return self.delete([tuple(k) for k in req["keys"]])
        if op == "get":
            return self.get(req["kind"], req.get("namespace"), req.get("name"), req.get("selector"))
        if op == "watch":
            return self.watch(req["kinds"], req.get("namespace"), req.get("selector"),
                              int(req["resourceVersion"]))  # fmt: skip
        if op == "exec-info":
            return self.exec_info(req["namespace"], req["name"])
        if op == "status":
            return self._status()
        if op == "shutdown":
            self._shutdown()
            return {"ok": True}
        return {"error": f"unknown request {op!r}"}

    # -- writes ------------------------------------------------------------------------------
    def write(self, bodies: list, op: str, dry_run: bool = False) -> dict:
        results = []
        with self.store.lock:
            for body in bodies:
                key = object_key(body) if isinstance(body, dict) else ("?", "", "?")
                results.append(self._write_one(key, body, op, dry_run))
        self.store.touch()
        return {"results": results}

    def _write_one(self, key: Key, body: Any, op: str, dry_run: bool) -> dict:
        old = self.store.get(key)
        if op == "create" and old is not None:
            return {"key": key, "error": "AlreadyExists", "code": 409}
        if op == "replace" and old is None:
            return {"key": key, "error": "NotFound", "code": 404}
        if old is not None and old["metadata"].get("deletionTimestamp"):
            return {"key": key, "error": "object is being deleted; retry", "code": 409}
        try:
            new = admit(body, self.store.objects, self.topo, self.rng, now())
        except AdmissionError as e:
            return {"key": key, "error": str(e), "code": e.code, "reason": e.reason}
        if dry_run:
            return {"key": key, "action": "created" if old is None else "configured", "object": new}
        if old is not None and _unchanged(old, new):
            return {"key": key, "action": "unchanged", "object": old}
        stored = self.store.put(key, new)
        return {"key": key, "action": "created" if old is None else "configured", "object": stored}

    def patch(self, key: Key, patch: dict, kind: str) -> dict:
        with self.store.lock:
            old = self.store.get(key)
            if old is None:
                return {"results": [{"key": key, "error": "NotFound", "code": 404}]}
            try:
                body = apply_patch(copy.deepcopy(old), patch, kind)
            except PatchError as e:
                return {"results": [{"key": key, "error": str(e), "code": 400}]}
            result = self._write_one(key, body, "replace", False)
            if result.get("action") == "configured":
                result["action"] = "patched"
            elif result.get("action") == "unchanged":
                result["action"] = "patched (no change)"
        self.store.touch()
        return {"results": [result]}

    def delete(self, keys: list[Key]) -> dict:
        results = []
        with self.store.lock:
            for key in keys:
                body = self.store.get(key)
                if body is None:
                    results.append({"key": key, "error": "NotFound", "code": 404})
                    continue
                if key[0] == "Node":
                    results.append(
                        {
                            "key": key,
                            "error": "nodes cannot be deleted in the emulated cluster",
                            "code": 403,
                        }
                    )
                    continue
                if key[0] == "Namespace" and key[2] in (
                    "default",
                    "kube-system",
                    "kube-public",
                    "kube-node-lease",
                ):
                    results.append(
                        {
                            "key": key,
                            "error": "this namespace may not be deleted",
                            "code": 403,
                            "reason": "Forbidden",
                        }
                    )
                    continue
                if key[0] in ("Pod", "Namespace"):
                    # pods stop after their grace period; a namespace once its contents went
                    if not body["metadata"].get("deletionTimestamp"):
                        meta = {**body["metadata"], "deletionTimestamp": now()}
                        if key[0] == "Namespace":
                            body = {**body, "status": {"phase": "Terminating"}}
                        self.store.put(key, {**body, "metadata": meta})
                else:
                    self.store.pop(key)
                results.append({"key": key, "action": "deleted", "uid": body["metadata"]["uid"]})
        self.store.touch()
        return {"results": results}

    # -- reads -------------------------------------------------------------------------------
    def get(
        self, kind: str, namespace: str | None, name: str | None, selector: str | None = None
    ) -> dict:
        try:
            wanted = parse_selector(selector) if selector else None
        except SelectorError as e:
            return {"error": str(e)}
        with self.store.lock:
            items = [
                b
                for k, b in self.store.items(kind)
                if (namespace is None or k[1] == namespace or k[1] == "")
                and (name is None or k[2] == name)
                and (wanted is None or matches(wanted, b["metadata"].get("labels") or {}))
            ]
            revision = self.store.revision
        return {"items": items, "resourceVersion": str(revision)}

    def watch(
        self, kinds: list[str], namespace: str | None, selector: str | None, since: int
    ) -> Iterator[dict]:
        """The API's watch: {"type": ADDED | MODIFIED | DELETED, "object"} for each change
        after SINCE that the list would have shown, a BOOKMARK every few seconds (how a
        gone client is noticed), and an ERROR (code 410) when SINCE is too old."""
        try:
            wanted = parse_selector(selector) if selector else None
        except SelectorError as e:
            yield {"type": "ERROR", "error": str(e), "code": 400}
            return
        while True:
            events = self.store.events_since(since, timeout=5.0)
            if events is None:
                yield {"type": "ERROR", "error": "too old resource version", "code": 410}
                return
            for revision, kind, key, body in events:
                since = revision
                if (
                    key[0] in kinds
                    and (namespace is None or key[1] in (namespace, ""))
                    and (wanted is None or matches(wanted, body["metadata"].get("labels") or {}))
                ):
                    yield {"type": kind, "object": body}
            if not events:
                yield {"type": "BOOKMARK", "resourceVersion": str(since)}

    def exec_info(self, namespace: str, name: str) -> dict:
        with self.store.lock:
            body = self.store.get(("Pod", namespace, name))
            if body is None:
                return {"error": f'pods "{name}" not found', "code": 404}
            sb = self.pods.sandboxes.get(body["metadata"]["uid"])
            if sb is None:
                return {"error": f"pod {name} has no sandbox yet (still Pending)", "code": 400}
            return {
                "netns": sb.netns,
                "env": self.pods.env.get(sb.uid, {}),
                "node": sb.node,
                "uid": sb.uid,
                "ip": sb.ip,
            }


def _unchanged(old: dict, new: dict) -> bool:
    skip = ("resourceVersion", "generation")
    om = {k: v for k, v in old["metadata"].items() if k not in skip}
    nm = {k: v for k, v in new["metadata"].items() if k not in skip}
    return om == nm and {k: v for k, v in old.items() if k not in ("metadata", "status")} == {
        k: v for k, v in new.items() if k not in ("metadata", "status")
    }
