"""An in-memory Kubernetes API server that speaks the real list/watch protocol.

Tests and the client benchmark need an API server whose faults they control: dropped watch
connections, expired resource versions (410 Gone both as a watch ERROR event and as an
HTTP status), slow responses and a server that is gone for a while. It serves the four
collections netplane consumes, cluster-wide, with paging (`limit`/`continue` over a
consistent snapshot), watches from a resourceVersion with bookmarks, and a bounded event
history like etcd's compaction window. It is not a general API server: no writes over
HTTP, no selectors, no authentication.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import copy
import itertools
import json
import socket
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

# collection path -> (kind, apiVersion)
COLLECTIONS = {
    "/api/v1/services": ("Service", "v1"),
    "/apis/discovery.k8s.io/v1/endpointslices": ("EndpointSlice", "discovery.k8s.io/v1"),
    "/api/v1/pods": ("Pod", "v1"),
    "/api/v1/nodes": ("Node", "v1"),
    "/api/v1/namespaces": ("Namespace", "v1"),
}
_KIND_PATH = {kind: path for path, (kind, _) in COLLECTIONS.items()}

_Key = tuple[str, str]  # (namespace, name)


def _status(code: int, reason: str, message: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class FakeApiServer:
    """Objects per kind, a global resourceVersion counter and the recent event history.

    Mutations (`put`, `delete`) are made by the test in-process and fan out to open watches.
    `history` bounds the events kept: a watch from an older resourceVersion gets 410 Gone.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        history: int = 10_000,
        bookmark_interval: float = 1.0,
    ) -> None:
        self.host, self.port = host, port
        self.history = history
        self.bookmark_interval = bookmark_interval
        self.delay = 0.0  # seconds added before every response (a slow server)
        self.watch_gone_http = False  # answer watches from an expired RV with HTTP 410
        self.expire_continues = 0  # answer this many `continue` requests with HTTP 410
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path, query) as received
        self._cond = threading.Condition()
        self._rv = 1000
        self._objects: dict[str, dict[_Key, dict]] = {k: {} for k, _ in COLLECTIONS.values()}
        self._events: list[tuple[int, str, str, dict]] = []  # (rv, kind, type, object)
        self._oldest = self._rv  # watches from an RV below this are expired
        self._epoch = 0  # bumped by drop_watches/expire_watches: open streams end
        self._expire_epoch = 0
        self._snapshots: dict[str, list[dict]] = {}  # continue token -> remaining items
        self._tokens = itertools.count()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()

    # ---- lifecycle ------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeApiServer:
        owner = self

        class Handler(_Handler):
            api = owner

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # clients that hang up mid-response are part of the tests

        self._server = Server((self.host, self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection (the API server is gone)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        self.drop_connections()

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def drop_connections(self) -> None:
        """Reset every open connection, as a crashing server or a broken network would."""
        with self._cond:
            conns = list(self._conns)
            self._epoch += 1
            self._cond.notify_all()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    # ---- the store ------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._rv

    def load(self, objects: Iterable[dict]) -> None:
        """Bulk-insert objects without events (an existing cluster)."""
        with self._cond:
            for obj in objects:
                self._rv += 1
                stored = self._stamp(obj)
                self._objects[obj["kind"]][self._key(stored)] = stored
            self._oldest = self._rv

    def put(self, obj: dict) -> int:
        """Create or replace one object; returns its new resourceVersion."""
        with self._cond:
            self._rv += 1
            stored = self._stamp(obj)
            store = self._objects[obj["kind"]]
            kind = "MODIFIED" if self._key(stored) in store else "ADDED"
            store[self._key(stored)] = stored
            self._record(obj["kind"], kind, stored)
            return self._rv

    def delete(self, kind: str, namespace: str, name: str) -> int:
        with self._cond:
            old = self._objects[kind].pop((namespace, name))
            self._rv += 1
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = str(self._rv)
            self._record(kind, "DELETED", gone)
            return self._rv

    def get(self, kind: str, namespace: str, name: str) -> dict | None:
        with self._cond:
            return self._objects[kind].get((namespace, name))

    def compact(self) -> None:
        """Forget the event history: every watch from an older RV gets 410 Gone."""
        with self._cond:
            self._events.clear()
            self._oldest = self._rv
            self._snapshots.clear()

    def expire_watches(self) -> None:
        """Compact and send an ERROR 410 event on every open watch."""
        with self._cond:
            self._events.clear()
            self._oldest = self._rv
            self._expire_epoch += 1
            self._cond.notify_all()

    def _stamp(self, obj: dict) -> dict:
        stored = copy.deepcopy(obj)
        meta = stored.setdefault("metadata", {})
        meta["resourceVersion"] = str(self._rv)
        meta.setdefault("uid", f"uid-{self._rv}")
        meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        return stored

    @staticmethod
    def _key(obj: dict) -> _Key:
        meta = obj["metadata"]
        return (meta.get("namespace", ""), meta["name"])

    def _record(self, kind: str, event: str, obj: dict) -> None:
        self._events.append((self._rv, kind, event, obj))
        if len(self._events) > self.history:
            dropped = self._events[: len(self._events) - self.history]
            del self._events[: len(dropped)]
            self._oldest = dropped[-1][0]
        self._cond.notify_all()

    # ---- serving (called from handler threads) ----------------------------------------

    def list_page(self, kind: str, query: dict[str, str]) -> tuple[int, dict]:
        limit = int(query.get("limit") or 0)
        token = query.get("continue")
        with self._cond:
            if token:
                rv, remaining = self._resume(token)
                if remaining is None or self.expire_continues > 0:
                    self.expire_continues = max(0, self.expire_continues - 1)
                    return 410, _status(
                        410, "Expired", "The provided continue parameter is too old"
                    )
            else:
                rv = self._rv
                remaining = [
                    self._objects[kind][k] for k in sorted(self._objects[kind])
                ]  # a consistent snapshot: stored dicts are replaced, never changed in place
        page, rest = (remaining[:limit], remaining[limit:]) if limit else (remaining, [])
        page = [_without_type(o) for o in page]  # list items carry no kind/apiVersion
        meta: dict = {"resourceVersion": str(rv)}
        if rest:
            token = f"{rv}:{next(self._tokens)}"
            with self._cond:
                self._snapshots[token] = rest
            meta["continue"] = base64.urlsafe_b64encode(token.encode()).decode()
            meta["remainingItemCount"] = len(rest)
        _, api_version = COLLECTIONS[_KIND_PATH[kind]]
        return 200, {"kind": f"{kind}List", "apiVersion": api_version, "metadata": meta,
                     "items": page}  # fmt: skip

    def _resume(self, token: str) -> tuple[int, list[dict] | None]:
        try:
            raw = base64.urlsafe_b64decode(token.encode()).decode()
        except ValueError:
            return 0, None
        remaining = self._snapshots.pop(raw, None)
        return int(raw.split(":")[0]), remaining

    def watch_start(self, kind: str, rv: int) -> tuple[list[tuple], int, int, int] | None:
        """(events of `kind` after `rv`, current rv, epochs), or None when `rv` is expired."""
        with self._cond:
            if rv < self._oldest:
                return None
            return self._after(kind, rv), self._rv, self._epoch, self._expire_epoch

    def watch_next(
        self, kind: str, rv: int, epoch: int, expire_epoch: int, timeout: float
    ) -> tuple[str, list[tuple], int]:
        """Wait for changes after `rv`: ("events", events of `kind`, new rv), "idle", "gone"
        or "drop". The new rv covers other kinds' changes too, so it is a valid bookmark."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._rv > rv or self._epoch != epoch or self._expire_epoch != expire_epoch,
                timeout,
            )
            if self._epoch != epoch:
                return "drop", [], rv
            if self._expire_epoch != expire_epoch or rv < self._oldest:
                return "gone", [], rv
            if self._rv == rv:
                return "idle", [], rv
            return "events", self._after(kind, rv), self._rv

    def _after(self, kind: str, rv: int) -> list[tuple]:
        start = bisect.bisect_right(self._events, rv, key=lambda e: e[0])
        return [e for e in self._events[start:] if e[1] == kind]


def _without_type(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


class _Handler(BaseHTTPRequestHandler):
    api: FakeApiServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.api._cond:
            self.api._conns.add(self.connection)

    def finish(self) -> None:
        with self.api._cond:
            self.api._conns.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.api.requests.append((parts.path, query))
        if self.api.delay:
            time.sleep(self.api.delay)
        collection = COLLECTIONS.get(parts.path)
        if collection is None:
            self._json(404, _status(404, "NotFound", f"the server could not find {parts.path}"))
            return
        kind, _ = collection
        if query.get("watch") in ("true", "1"):
            self._watch(kind, query)
        else:
            self._json(*self.api.list_page(kind, query))

    def _json(self, code: int, body: dict) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, payload: dict) -> None:
        data = json.dumps(payload, separators=(",", ":")).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _watch(self, kind: str, query: dict[str, str]) -> None:
        rv = int(query.get("resourceVersion") or self.api.resource_version)
        started = self.api.watch_start(kind, rv)
        gone = _status(410, "Expired", f"too old resource version: {rv}")
        if started is None and self.api.watch_gone_http:
            self._json(410, gone)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 1800)
        try:
            if started is None:
                self._chunk({"type": "ERROR", "object": gone})
            else:
                events, rv, epoch, expire_epoch = started
                self._send(events)
                last_bookmark = time.monotonic()
                while (left := deadline - time.monotonic()) > 0:
                    what, events, rv = self.api.watch_next(
                        kind, rv, epoch, expire_epoch, min(left, self.api.bookmark_interval)
                    )
                    if what == "drop":
                        self.close_connection = True
                        return
                    if what == "gone":
                        self._chunk({"type": "ERROR", "object": gone})
                        break
                    self._send(events)
                    now = time.monotonic()
                    if bookmarks and now - last_bookmark >= self.api.bookmark_interval:
                        self._bookmark(kind, rv)
                        last_bookmark = now
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True

    def _send(self, events: list[tuple]) -> None:
        for _, _, event, obj in events:
            self._chunk({"type": event, "object": obj})

    def _bookmark(self, kind: str, rv: int) -> None:
        _, api_version = COLLECTIONS[_KIND_PATH[kind]]
        self._chunk(
            {
                "type": "BOOKMARK",
                "object": {
                    "kind": kind,
                    "apiVersion": api_version,
                    "metadata": {"resourceVersion": str(rv)},
                },
            }
        )


# ---- realistic objects, as the API server returns them ------------------------------------

_MANAGED = [
    {
        "manager": "kube-controller-manager",
        "operation": "Update",
        "apiVersion": "v1",
        "time": "2026-01-01T00:00:00Z",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}},
    }
]


def write_kubeconfig(path: Path, server: str) -> str:
    """A kubeconfig for SERVER (a bearer token the fake server does not check); returns its path."""
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster: {{server: "{server}"}}
users:
- name: tester
  user: {{token: test-token}}
contexts:
- name: fake
  context: {{cluster: fake, user: tester}}
current-context: fake
"""
    )
    return str(path)


def make_service(namespace: str, name: str, cluster_ip: str, port: int = 80) -> dict:
    return {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app": name},
            "managedFields": _MANAGED,
        },
        "spec": {
            "ports": [{"name": "http", "protocol": "TCP", "port": port, "targetPort": 8080}],
            "selector": {"app": name},
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "type": "ClusterIP",
            "sessionAffinity": "None",
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster",
        },
        "status": {"loadBalancer": {}},
    }


def make_slice(namespace: str, service: str, name: str, ips: list[str], node: str = "") -> dict:
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Service", "name": service, "uid": f"uid-{service}"}
            ],
            "managedFields": _MANAGED,
        },
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": [ip],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": node or "node-1",
                "targetRef": {"kind": "Pod", "namespace": namespace, "name": f"{service}-{i}"},
            }
            for i, ip in enumerate(ips)
        ],
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
    }


def make_node(name: str, ip: str, pod_cidr: str) -> dict:
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
    }


def make_pod(namespace: str, name: str, ip: str, node: str) -> dict:
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "nginx"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def synthetic_cluster(services: int, endpoints_per_service: int) -> list[dict]:
    """`services` Services in 10.96.0.0/12, each with one slice of N endpoints in 10.244/16."""
    objects: list[dict] = []
    for i in range(services):
        ns, name = f"ns{i % 50}", f"svc{i}"
        ip = i + 16  # past 10.96.0.1 (kubernetes) and 10.96.0.10 (kube-dns)
        objects.append(
            make_service(ns, name, f"10.{96 + ip // 65536}.{ip // 256 % 256}.{ip % 256}")
        )
        first = i * endpoints_per_service
        ips = [_pod_ip(first + j) for j in range(endpoints_per_service)]
        objects.append(make_slice(ns, name, f"{name}-abcde", ips))
    return objects


def _pod_ip(n: int) -> str:
    return f"10.{244 + n // 65536}.{n // 256 % 256}.{n % 256}"
