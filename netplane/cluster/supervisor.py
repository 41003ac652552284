"""The cluster's daemon: API server, controller loop, kubelets and their children.

Started (daemonised) by `netplane up`; `netplane down` asks it to stop and tear down. It
is the only writer of the objects: the CLI sends requests over `<state>/api.sock`
(one JSON line each way).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import random
import signal
import socketserver
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

from netplane.cluster import plumbing, sandbox
from netplane.cluster.admission import admit, object_key
from netplane.cluster.builtin import builtin_objects, node_manifest
from netplane.cluster.children import Child, stop_all
from netplane.cluster.controller import OWNER, parse_services, reconcile
from netplane.cluster.envvars import service_env
from netplane.cluster.kubelet import Kubelet, component_available, netplane_argv
from netplane.cluster.plumbing import NETNS_DIR
from netplane.cluster.store import ManifestWriter, StateDir, read_json, write_atomic
from netplane.cluster.topology import Topology
from netplane.model import InvalidField

log = logging.getLogger("netplane.cluster")
Key = tuple[str, str, str]
GRACE_SECONDS = 1.0  # emulated terminationGracePeriodSeconds (Kubernetes' default is 30)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Supervisor:
    def __init__(self, state: StateDir) -> None:
        self.state = state
        self.topo = Topology.from_json(read_json(state.path / "topology.json", None))
        self.config = read_json(state.path / "config.json", {})
        self.cni = sandbox.install_plugins(state, sandbox.CniChoice(**self.config["cni"]))
        self.lock = threading.RLock()
        self.changed = threading.Event()
        self.stopping = threading.Event()
        self.rng = random.Random()
        self.objects: dict[Key, dict] = {}
        self.sandboxes: dict[str, sandbox.Sandbox] = {}
        self.env: dict[str, dict[str, str]] = {}
        self.busy: set[str] = set()  # pod uids with a start or stop in flight
        self.failures: dict[str, str] = {}
        self.lb_routes: dict[str, str] = {}
        self.phase = "starting"
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="kubelet")
        self.kubelet = Kubelet(self.topo, state, self.cni, self._pod_ready)
        self.proxies: list[Child] = []
        self.manifests = ManifestWriter(state)
        self._saved = ""
        self.server: socketserver.UnixStreamServer | None = None

    # -- startup ---------------------------------------------------------------------------
    def start(self) -> None:
        self.phase = "network"
        plumbing.build(self.topo)
        sandbox.write_conflists(self.topo, self.state, self.cni)
        stamp = now()
        with self.lock:
            for i in range(len(self.topo.nodes)):
                body = node_manifest(self.topo, i)
                body["metadata"]["creationTimestamp"] = stamp
                self.objects[object_key(body)] = body
            for body in builtin_objects(self.topo) + self._saved_objects():
                try:
                    self.objects[object_key(body)] = admit(
                        body, self.objects, self.topo, self.rng, stamp
                    )
                except InvalidField as e:
                    log.error("dropping saved %s: %s", object_key(body), e)
        self.phase = "runtimes"
        self.kubelet.start_cni_agents()
        self.kubelet.start_runtimes()
        self.phase = "proxies"
        self._sync_manifests()
        if component_available("netplane.proxy.daemon"):
            self.proxies = [self._proxy(node.name) for node in self.topo.nodes]
        else:
            log.warning("netplane.proxy.daemon is not installed: services get no data plane")
        self.phase = "running"
        threading.Thread(target=self._loop, name="controller", daemon=True).start()
        self.changed.set()

    def _proxy(self, node: str) -> Child:
        """kube-proxy's place: one per node, in the node's namespace, following the manifests
        (min-sync-period 0: the emulator wants changes programmed at once)."""
        fixed = "--metrics-addr 127.0.0.1:10249 --healthz-addr 0.0.0.0:10256 --min-sync-period 0"
        argv = netplane_argv(
            "proxy", "run", "--manifests", str(self.state.manifests), "--node", node,
            "--cluster-cidr", self.topo.cluster_cidr, *fixed.split(),
        )  # fmt: skip
        netns = f"--net={NETNS_DIR / self.topo.node_ns(node)}"
        child = Child(f"proxy-{node}", ["nsenter", netns, *argv], self.state.pids, self.state.logs)
        return child.start()

    def _saved_objects(self) -> list[dict]:
        """What a crashed supervisor held (user objects only: pods are made anew)."""
        saved = []
        for body in read_json(self.state.path / "objects.json", []):
            meta = body.get("metadata", {})
            managed = meta.get("labels", {}).get("endpointslice.kubernetes.io/managed-by")
            owned = meta.get("annotations", {}).get(OWNER)
            if body["kind"] in ("Node", "Namespace") or managed or owned:
                continue
            if (body["kind"], meta.get("namespace"), meta.get("name")) in (
                ("Service", "default", "kubernetes"),
                ("EndpointSlice", "default", "kubernetes"),
                ("Service", "kube-system", "kube-dns"),
                ("Deployment", "kube-system", "coredns"),
            ):
                continue
            if body["kind"] == "Pod":
                body.pop("status", None)
            saved.append(body)
        return saved

    # -- the controller loop ---------------------------------------------------------------
    def _loop(self) -> None:
        while not self.stopping.is_set():
            self.changed.wait(1.0)
            self.changed.clear()
            if self.stopping.is_set():
                break
            try:
                self._step()
            except Exception:
                log.exception("controller step failed")
                time.sleep(0.5)

    def _step(self) -> None:
        with self.lock:
            for _ in range(5):  # a plan can enable the next (pods -> slices)
                plan = reconcile(self.objects, self.topo, self.rng, now())
                if not plan:
                    break
                for body in plan.upserts:
                    self.objects[object_key(body)] = body
                for key in plan.deletes:
                    self.objects.pop(key, None)
            self._kubelet_step()
            self._sync_manifests()
        self._sync_lb_routes()

    def _kubelet_step(self) -> None:
        for key, body in list(self.objects.items()):
            if key[0] != "Pod":
                continue
            meta, uid = body["metadata"], body["metadata"]["uid"]
            if uid in self.busy:
                continue
            if meta.get("deletionTimestamp"):
                self.busy.add(uid)
                # endpoints went not-ready with the deletionTimestamp; the grace period lets
                # the proxies drop them before the application stops answering
                grace = GRACE_SECONDS if uid in self.sandboxes else 0.0
                timer = threading.Timer(grace, self.pool.submit, (self._stop_pod, key, uid))
                timer.daemon = True
                timer.start()
            elif body["spec"].get("nodeName") and uid not in self.sandboxes:
                if uid in self.failures:
                    continue
                self.busy.add(uid)
                self.env[uid] = service_env(parse_services(self.objects), key[1])
                self.pool.submit(self._start_pod, key, body)

    def _start_pod(self, key: Key, body: dict) -> None:
        uid = body["metadata"]["uid"]
        t0 = time.monotonic()
        try:
            sb = self.kubelet.start_pod(uid, body)
            log.info(
                "pod %s/%s: sandbox %s in %.3f s", key[1], key[2], sb.ip, time.monotonic() - t0
            )
        except Exception as e:
            log.error("%s", e)
            with self.lock:
                self.busy.discard(uid)
                self.failures[uid] = str(e)
                cur = self.objects.get(key)
                if cur and cur["metadata"]["uid"] == uid:
                    self.objects[key] = {
                        **cur,
                        "status": {
                            **cur["status"],
                            "message": str(e),
                            "reason": "FailedCreatePodSandBox",
                        },
                    }
            self._retry_later(uid)
            return
        with self.lock:
            self.sandboxes[uid] = sb
            self.busy.discard(uid)
            cur = self.objects.get(key)
            if cur is not None and cur["metadata"]["uid"] == uid:
                node = self.topo.node(sb.node)
                self.objects[key] = {
                    **cur,
                    "status": {
                        "phase": "Running",
                        "hostIP": node.ip,
                        "hostIPs": [{"ip": node.ip}],
                        "podIP": sb.ip,
                        "podIPs": [{"ip": sb.ip}],
                        "startTime": now(),
                        "conditions": [{"type": "Ready", "status": "False"}],
                    },
                }
            self._persist_sandboxes()
        self.kubelet.run_app(sb, body)
        self.changed.set()

    def _retry_later(self, uid: str) -> None:
        def retry() -> None:
            with self.lock:
                self.failures.pop(uid, None)
            self.changed.set()

        threading.Timer(2.0, retry).start()

    def _pod_ready(self, uid: str) -> None:
        with self.lock:
            for key, body in self.objects.items():
                if key[0] == "Pod" and body["metadata"]["uid"] == uid:
                    status = {**body["status"], "conditions": [{"type": "Ready", "status": "True"}]}
                    self.objects[key] = {**body, "status": status}
                    break
        self.changed.set()

    def _stop_pod(self, key: Key, uid: str) -> None:
        sb = self.sandboxes.get(uid)
        if sb is not None:
            try:
                self.kubelet.stop_pod(sb)
            except Exception as e:
                log.error("stopping pod %s/%s: %s", key[1], key[2], e)
        with self.lock:
            self.sandboxes.pop(uid, None)
            self.env.pop(uid, None)
            self.busy.discard(uid)
            cur = self.objects.get(key)
            if cur is not None and cur["metadata"]["uid"] == uid:
                del self.objects[key]
            self._persist_sandboxes()
        self.changed.set()

    def _sync_manifests(self) -> None:
        self.manifests.sync(self.objects)
        text = json.dumps(list(self.objects.values()))
        if text != self._saved:
            write_atomic(self.state.path / "objects.json", text)
            self._saved = text

    def _persist_sandboxes(self) -> None:
        write_atomic(
            self.state.path / "sandboxes.json",
            json.dumps([sandbox.to_json(s) for s in self.sandboxes.values()]),
        )

    def _sync_lb_routes(self) -> None:
        wanted = {}
        with self.lock:
            for key, body in self.objects.items():
                if key[0] == "Service" and body["spec"].get("type") == "LoadBalancer":
                    for ing in body.get("status", {}).get("loadBalancer", {}).get("ingress", []):
                        node = self.topo.nodes[
                            zlib.crc32(repr(key).encode()) % len(self.topo.nodes)
                        ]
                        wanted[ing["ip"]] = node.ip
        for address in [a for a in self.lb_routes if a not in wanted]:
            plumbing.set_lb_route(self.topo, address, None)
            del self.lb_routes[address]
        for address, node_ip in wanted.items():
            if self.lb_routes.get(address) != node_ip:
                plumbing.set_lb_route(self.topo, address, node_ip)
                self.lb_routes[address] = node_ip

    # -- API -------------------------------------------------------------------------------
    def handle(self, req: dict) -> dict:
        op = req.get("op")
        if op == "apply":
            return self.apply(req["objects"])
        if op == "delete":
            return self.delete([tuple(k) for k in req["keys"]])
        if op == "get":
            return self.get(req["kind"], req.get("namespace"), req.get("name"))
        if op == "exec-info":
            return self.exec_info(req["namespace"], req["name"])
        if op == "status":
            return self.status()
        if op == "shutdown":
            threading.Thread(target=self.shutdown, daemon=True).start()
            return {"ok": True}
        return {"error": f"unknown request {op!r}"}

    def apply(self, bodies: list[dict]) -> dict:
        results = []
        with self.lock:
            for body in bodies:
                key = object_key(body) if isinstance(body, dict) else ("?", "", "?")
                try:
                    new = admit(body, self.objects, self.topo, self.rng, now())
                except (InvalidField, KeyError, TypeError) as e:
                    results.append({"key": key, "error": str(e)})
                    continue
                old = self.objects.get(key)
                if old is not None and old["metadata"].get("deletionTimestamp"):
                    results.append({"key": key, "error": "object is being deleted; retry"})
                    continue
                self.objects[key] = new
                action = "created" if old is None else ("unchanged" if old == new else "configured")
                results.append({"key": key, "action": action})
        self.changed.set()
        return {"results": results}

    def delete(self, keys: list[Key]) -> dict:
        results = []
        with self.lock:
            for key in keys:
                body = self.objects.get(key)
                if body is None or key[0] == "Node":
                    results.append(
                        {
                            "key": key,
                            "error": "NotFound"
                            if body is None
                            else "nodes cannot be deleted in the emulated cluster",
                        }
                    )
                    continue
                if key[0] == "Pod":
                    meta = {"deletionTimestamp": now(), **body["metadata"]}
                    self.objects[key] = {**body, "metadata": meta}
                else:
                    del self.objects[key]
                results.append({"key": key, "action": "deleted", "uid": body["metadata"]["uid"]})
        self.changed.set()
        return {"results": results}

    def get(self, kind: str, namespace: str | None, name: str | None) -> dict:
        with self.lock:
            items = [
                b
                for k, b in self.objects.items()
                if k[0] == kind
                and (namespace is None or k[1] == namespace)
                and (name is None or k[2] == name)
            ]
        return {"items": items}

    def exec_info(self, namespace: str, name: str) -> dict:
        with self.lock:
            body = self.objects.get(("Pod", namespace, name))
            if body is None:
                return {"error": f'pods "{name}" not found in namespace "{namespace}"'}
            sb = self.sandboxes.get(body["metadata"]["uid"])
            if sb is None:
                return {"error": f"pod {namespace}/{name} has no sandbox yet (still Pending)"}
            return {"netns": sb.netns, "env": self.env.get(sb.uid, {}), "node": sb.node}

    def status(self) -> dict:
        with self.lock:
            pods = [b for k, b in self.objects.items() if k[0] == "Pod"]
        ready = sum(
            1
            for p in pods
            if any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in p.get("status", {}).get("conditions", [])
            )
        )
        return {
            "phase": self.phase,
            "topology": self.topo.to_json(),
            "pods": len(pods),
            "ready": ready,
            "proxies": len(self.proxies),
            "cni": self.cni.bridge,
            "failures": list(self.failures.values())[:5],
        }

    # -- shutdown --------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop everything and remove what the cluster made, then exit."""
        self.phase = "stopping"
        self.stopping.set()
        self.changed.set()
        t0 = time.monotonic()
        # Everything the proxies, DNS servers and CNI plugin made lives in the namespaces
        # (IPAM store: the state dir), so deleting them removes it all at once; a CNI DEL per
        # pod would only add ~0.1 s per pod.
        stop_all(self.proxies + self.kubelet.children(), timeout=1.0)
        plumbing.teardown(self.topo.id)
        log.info("children and namespaces removed in %.2f s", time.monotonic() - t0)
        self.phase = "stopped"
        if self.server:
            self.server.shutdown()

    def serve(self) -> None:
        sup = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline()
                try:
                    reply = sup.handle(json.loads(line))
                except Exception as e:  # the API answers every request
                    log.exception("request failed")
                    reply = {"error": f"{type(e).__name__}: {e}"}
                self.wfile.write((json.dumps(reply) + "\n").encode())

        self.state.socket.unlink(missing_ok=True)
        socketserver.ThreadingUnixStreamServer.daemon_threads = True
        self.server = socketserver.ThreadingUnixStreamServer(str(self.state.socket), Handler)
        try:
            self.start()
        except Exception as e:
            log.exception("cluster start failed")
            self.phase = f"failed: {e}"
        self.server.serve_forever()
        self.state.socket.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="netplane cluster supervisor (started by up)")
    parser.add_argument("state_dir")
    args = parser.parse_args()
    state = StateDir(args.state_dir)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    (state.pids / "supervisor.pid").write_text(json.dumps({"pid": os.getpid(), "argv": sys.argv}))
    sup = Supervisor(state)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=sup.shutdown).start())
    sup.serve()
    (state.pids / "supervisor.pid").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
