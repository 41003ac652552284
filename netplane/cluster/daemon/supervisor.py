"""The cluster's daemon: builds the nodes, then wires the store, the API, the controller
loop, the pods' lifecycle and the children (proxies, node runtimes, CNI agents).

Started (daemonised) by `netplane up`; `netplane down` asks it to stop and tear down. It
is the only writer of the objects: the CLI sends requests over `<state>/api.sock`.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from netplane.cluster.control import validation
from netplane.cluster.control.admission import AdmissionError, admit, object_key
from netplane.cluster.control.builtin import builtin_objects, node_manifest
from netplane.cluster.control.topology import Topology
from netplane.cluster.control.workloads_controller import BUILTIN_NAMESPACES
from netplane.cluster.daemon.api import Api
from netplane.cluster.daemon.lbroutes import LbRoutes
from netplane.cluster.daemon.loop import ControllerLoop
from netplane.cluster.daemon.pods import PodLifecycle
from netplane.cluster.daemon.server import ApiServer
from netplane.cluster.daemon.store import ObjectStore, now, read_saved
from netplane.cluster.node import plumbing, sandbox
from netplane.cluster.node.children import Child, stop_all
from netplane.cluster.node.kubelet import Kubelet, component_available, netplane_argv
from netplane.cluster.node.plumbing import NETNS_DIR
from netplane.cluster.statedir import StateDir, read_json

log = logging.getLogger("netplane.cluster")
BUILTIN = {
    ("Service", "default", "kubernetes"),
    ("EndpointSlice", "default", "kubernetes"),
    ("Service", "kube-system", "kube-dns"),
    ("Deployment", "kube-system", "coredns"),
}


def _process_age() -> float:
    """Seconds since this process was started (interpreter, imports, set-up so far)."""
    with open("/proc/self/stat") as f:
        started = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
    with open("/proc/uptime") as f:
        return float(f.read().split()[0]) - started


class Supervisor:
    def __init__(self, state: StateDir) -> None:
        self.state = state
        self.topo = Topology.from_json(read_json(state.path / "topology.json", None))
        self.config = read_json(state.path / "config.json", {})
        self.phase = "starting"
        self.timings: dict[str, float] = {}
        self.cni = sandbox.install_plugins(state, sandbox.CniChoice(**self.config["cni"]))
        self.store = ObjectStore(state)
        self.kubelet = Kubelet(self.topo, state, self.cni, self._runtime_event)
        self.pods = PodLifecycle(self.store, self.topo, self.kubelet)
        self.lb = LbRoutes(self.store, self.topo)
        self.loop = ControllerLoop(self.store, self.topo, self.pods, self.lb)
        self.api = Api(self.store, self.topo, self.pods, self.status, self._shutdown_async)
        self.proxies: list[Child] = []
        self.server: ApiServer | None = None

    # -- startup ---------------------------------------------------------------------------
    def _timed(self, phase: str, started: float) -> float:
        t = time.monotonic()
        self.timings[phase] = round(t - started, 3)
        return t

    def start(self) -> None:
        t = time.monotonic()
        self.timings["daemon"] = round(_process_age(), 3)
        # the schemas of user objects load while the network is built (mostly waits on `ip`)
        threading.Thread(target=validation.warm, name="schemas", daemon=True).start()
        self.phase = "network"
        plumbing.build(self.topo)
        sandbox.write_conflists(self.topo, self.state, self.cni)
        self._load_objects()
        t = self._timed("network", t)
        # Every child is spawned before any is waited for: on two cores their start-up (a
        # Python interpreter each) overlaps, and the pods only need the CNI agents.
        self.phase = "runtimes"
        self.kubelet.start_cni_agents()
        self.kubelet.start_runtimes()
        spawned = time.monotonic()
        self.phase = "proxies"
        self.store.persist()
        if component_available("netplane.proxy.daemon"):
            self.proxies = [self._proxy(node.name) for node in self.topo.nodes]
        else:
            log.warning("netplane.proxy.daemon is not installed: services get no data plane")
        proxies = time.monotonic()
        self.timings["proxies"] = round(proxies - spawned, 3)
        self.phase = "runtimes"
        self.kubelet.wait_cni_agents()
        self.timings["runtimes"] = round(spawned - t + time.monotonic() - proxies, 3)
        self.phase = "running"
        self.loop.start()

    def _load_objects(self) -> None:
        stamp = now()
        with self.store.lock:
            for i in range(len(self.topo.nodes)):
                body = node_manifest(self.topo, i, stamp)
                self.store.put(object_key(body), body)
            for body in builtin_objects(self.topo) + self._saved_objects():
                try:
                    new = admit(
                        body, self.store.objects, self.topo, self.api.rng, stamp, trusted=True
                    )
                except AdmissionError as e:
                    log.error("dropping saved %s: %s", object_key(body), e)
                    continue
                self.store.put(object_key(new), new)

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
        """What a crashed daemon held (user objects only: pods, replica sets and slices
        are made anew by the controllers)."""
        saved = []
        for body in read_saved(self.state.path / "objects.json"):
            meta = body.get("metadata", {})
            managed = meta.get("labels", {}).get("endpointslice.kubernetes.io/managed-by")
            owned = meta.get("ownerReferences")
            if body["kind"] in ("Node", "Event") or managed or owned:
                continue
            if body["kind"] == "Namespace" and meta.get("name") in BUILTIN_NAMESPACES:
                continue
            if (body["kind"], meta.get("namespace"), meta.get("name")) in BUILTIN:
                continue
            meta.pop("resourceVersion", None)
            if body["kind"] == "Pod":
                body.pop("status", None)
            saved.append(body)
        return saved

    def _runtime_event(self, msg: dict) -> None:
        if "ready" in msg:
            self.pods.ready(msg["ready"])
        elif "container" in msg:
            self.pods.container_state(msg["uid"], msg)

    # -- API -------------------------------------------------------------------------------
    def status(self) -> dict:
        with self.store.lock:  # the pods that should be running (not Completed, not leaving)
            pods = [
                b
                for _, b in self.store.items("Pod")
                if (b.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
                and not b["metadata"].get("deletionTimestamp")
            ]
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
            "timings": self.timings,
            "failures": self.pods.failure_messages()[:5],
        }

    # -- shutdown --------------------------------------------------------------------------
    def _shutdown_async(self) -> None:
        threading.Thread(target=self.shutdown, daemon=True).start()

    def shutdown(self) -> None:
        """Stop everything and remove what the cluster made, then exit."""
        self.phase = "stopping"
        self.loop.stop()
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
        self.server = ApiServer(self.state.socket, self.api.handle)
        try:
            self.start()
        except Exception as e:
            log.exception("cluster start failed")
            self.phase = f"failed: {e}"
        self.server.serve_forever()
        self.state.socket.unlink(missing_ok=True)
