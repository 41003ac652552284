"""The controller loop: run the pure controllers until they settle, then the side effects.

Each step runs `reconcile` (Deployments, ReplicaSets, scheduler, garbage collector,
EndpointSlices, namespaces) a few times, lets the kubelet layer start and stop pods,
persists, and moves LoadBalancer routes. A failing step is logged and retried; the
controllers themselves skip an object they cannot handle, so one bad object never stops
the others.
"""

from __future__ import annotations

import logging
import random
import threading
import time

from netplane.cluster.control.admission import object_key
from netplane.cluster.control.controller import reconcile
from netplane.cluster.control.topology import Topology
from netplane.cluster.daemon.lbroutes import LbRoutes
from netplane.cluster.daemon.pods import PodLifecycle
from netplane.cluster.daemon.store import ObjectStore, now

log = logging.getLogger("netplane.cluster.controller")


class ControllerLoop:
    def __init__(
        self, store: ObjectStore, topo: Topology, pods: PodLifecycle, lb: LbRoutes
    ) -> None:
        self.store, self.topo, self.pods, self.lb = store, topo, pods, lb
        self.rng = random.Random()
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="controller", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self.store.touch()

    def stop(self) -> None:
        self.stopping.set()
        self.store.touch()

    def _run(self) -> None:
        while not self.stopping.is_set():
            self.store.changed.wait(1.0)
            self.store.changed.clear()
            if self.stopping.is_set():
                break
            try:
                self.step()
            except Exception:
                log.exception("controller step failed")
                time.sleep(0.5)

    def step(self) -> None:
        with self.store.lock:
            for _ in range(5):  # a plan can enable the next (deployment -> rs -> pods -> slices)
                plan = reconcile(self.store.objects, self.topo, self.rng, now())
                for key in plan.deletes:
                    self.store.pop(key)
                for body in plan.upserts:
                    self.store.put(object_key(body), body)
                for problem in plan.problems:
                    log.warning("%s", problem)
                if not plan.changes:
                    break
            self.pods.sync()
            self.store.persist()
        self.lb.sync()
