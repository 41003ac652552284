"""Pod lifecycle: the kubelet's sync loop over the store's pods (side effects via Kubelet).

A scheduled pod without a sandbox gets one (in a worker thread); a pod marked for
deletion is stopped after the grace period and removed. A failed start is retried with
exponential back-off (2 s doubling to 60 s, as kubelet's), never by creating more pods:
the failure is written to the pod's status, where the controller and `describe` see it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from netplane.cluster.control.controller import parse_services
from netplane.cluster.control.envvars import service_env
from netplane.cluster.control.status import running_status, with_ready
from netplane.cluster.control.topology import Topology
from netplane.cluster.daemon.store import Key, ObjectStore, now
from netplane.cluster.node import sandbox
from netplane.cluster.node.kubelet import Kubelet
from netplane.cluster.statedir import write_atomic

log = logging.getLogger("netplane.cluster.pods")
GRACE_SECONDS = 1.0  # emulated terminationGracePeriodSeconds (Kubernetes' default is 30)
BACKOFF = (2.0, 60.0)


class PodLifecycle:
    def __init__(self, store: ObjectStore, topo: Topology, kubelet: Kubelet) -> None:
        self.store, self.topo, self.kubelet = store, topo, kubelet
        self.sandboxes: dict[str, sandbox.Sandbox] = {}
        self.env: dict[str, dict[str, str]] = {}
        self.busy: set[str] = set()  # pod uids with a start or stop in flight
        self.failures: dict[str, tuple[str, float, float]] = {}  # uid -> (error, retry at, delay)
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="kubelet")

    def sync(self) -> None:
        """Start and stop what the store's pods ask for (called with the store's lock)."""
        t = time.monotonic()
        for key, body in self.store.items("Pod"):
            meta = body["metadata"]
            uid = meta["uid"]
            if uid in self.busy:
                continue
            if meta.get("deletionTimestamp"):
                self.busy.add(uid)
                # endpoints went not-ready with the deletionTimestamp; the grace period lets
                # the proxies drop them before the application stops answering
                grace = GRACE_SECONDS if uid in self.sandboxes else 0.0
                timer = threading.Timer(grace, self.pool.submit, (self._stop, key, uid))
                timer.daemon = True
                timer.start()
            elif body["spec"].get("nodeName") and uid not in self.sandboxes:
                failed = self.failures.get(uid)
                if failed and t < failed[1]:
                    continue
                self.busy.add(uid)
                self.env[uid] = service_env(parse_services(self.store.objects), key[1])
                self.pool.submit(self._start, key, body)

    def _start(self, key: Key, body: dict) -> None:
        uid = body["metadata"]["uid"]
        t0 = time.monotonic()
        try:
            sb = self.kubelet.start_pod(uid, body)
            log.info(
                "pod %s/%s: sandbox %s in %.3f s", key[1], key[2], sb.ip, time.monotonic() - t0
            )
        except Exception as e:
            self._failed(key, uid, str(e))
            return
        with self.store.lock:
            self.sandboxes[uid] = sb
            self.busy.discard(uid)
            self.failures.pop(uid, None)
            cur = self.store.get(key)
            if cur is not None and cur["metadata"]["uid"] == uid:
                node = self.topo.node(sb.node)
                self.store.put(key, {**cur, "status": running_status(cur, node.ip, sb.ip, now())})
            self._persist()
        self.kubelet.run_app(sb, body, self.env.get(uid, {}))
        self.store.touch()

    def _failed(self, key: Key, uid: str, error: str) -> None:
        with self.store.lock:
            self.busy.discard(uid)
            delay = min(self.failures.get(uid, ("", 0.0, BACKOFF[0] / 2))[2] * 2, BACKOFF[1])
            self.failures[uid] = (error, time.monotonic() + delay, delay)
            cur = self.store.get(key)
            if cur and cur["metadata"]["uid"] == uid:
                status = {**cur["status"], "message": error, "reason": "FailedCreatePodSandBox"}
                self.store.put(key, {**cur, "status": status})
        log.error("pod %s/%s: %s (retry in %.0f s)", key[1], key[2], error, delay)
        timer = threading.Timer(delay, self.store.touch)
        timer.daemon = True
        timer.start()

    def ready(self, uid: str, ready: bool = True) -> None:
        """The node reports the pod's application listening (or its containers' state)."""
        with self.store.lock:
            for key, body in self.store.items("Pod"):
                if body["metadata"]["uid"] == uid:
                    self.store.put(key, with_ready(body, ready, now()))
                    break
        self.store.touch()

    def container_state(self, uid: str, state: dict) -> None:
        """A container process started, exited or was restarted (from the node runtime)."""
        from netplane.cluster.control.status import with_container_state

        with self.store.lock:
            for key, body in self.store.items("Pod"):
                if body["metadata"]["uid"] == uid:
                    self.store.put(key, with_container_state(body, state, now()))
                    break
        self.store.touch()

    def _stop(self, key: Key, uid: str) -> None:
        sb = self.sandboxes.get(uid)
        if sb is not None:
            try:
                self.kubelet.stop_pod(sb)
            except Exception as e:
                log.error("stopping pod %s/%s: %s", key[1], key[2], e)
        with self.store.lock:
            self.sandboxes.pop(uid, None)
            self.env.pop(uid, None)
            self.busy.discard(uid)
            self.failures.pop(uid, None)
            cur = self.store.get(key)
            if cur is not None and cur["metadata"]["uid"] == uid:
                self.store.pop(key)
            self._persist()
        self.store.touch()

    def failure_messages(self) -> list[str]:
        return [f[0] for f in self.failures.values()]

    def _persist(self) -> None:
        write_atomic(
            self.store.state.path / "sandboxes.json",
            json.dumps([sandbox.to_json(s) for s in self.sandboxes.values()]),
        )
