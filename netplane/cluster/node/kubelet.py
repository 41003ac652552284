"""The node agent's side of pods (side effects): sandbox, environment, application.

Called by the supervisor from worker threads; it reports back through callbacks so the
supervisor alone writes pod status.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from netplane.cluster.control.topology import API_PORT, DNS_IP, Topology
from netplane.cluster.node import sandbox
from netplane.cluster.node.children import Child
from netplane.cluster.node.plumbing import NETNS_DIR
from netplane.cluster.node.responders import is_dns_image
from netplane.cluster.statedir import StateDir
from netplane.model import Pod, parse_as
from netplane.resolvconf import ResolvConf, effective_policy, for_pod


def component_available(module: str) -> bool:
    """Whether a peer component (proxy daemon, DNS server) is installed yet."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def netplane_argv(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "netplane"), *args]


def resolv_conf(pod: dict) -> str | None:
    """What kubelet writes for the pod (the DNS component's rules: policy, dnsConfig); None
    for dnsPolicy Default, which keeps the node's (here: the host's) resolv.conf."""
    model = parse_as(pod, Pod)
    if effective_policy(model.dns_policy, model.host_network) == "Default":
        return None
    return for_pod(model, ResolvConf(), (DNS_IP,), "cluster.local").render()


class Kubelet:
    def __init__(
        self,
        topo: Topology,
        state: StateDir,
        cni: sandbox.CniChoice,
        on_event: Callable[[dict], None],
    ) -> None:
        """ON_EVENT gets the node runtimes' reports: `{"ready": uid}` when a pod's
        application listens, `{"uid", "container", "state", ...}` when a container process
        starts, exits or is restarted."""
        self.topo, self.state, self.cni, self.on_event = topo, state, cni, on_event
        self.runtimes: dict[str, Child] = {}
        self.dns: dict[str, Child] = {}
        self.agents: dict[str, Child] = {}
        self.apps: dict[str, tuple[str, dict]] = {}  # uid -> (node, add message)
        self._lock = threading.Lock()

    # -- runtimes: one per node ------------------------------------------------------------
    def start_cni_agents(self) -> None:
        """One `netplane cni agent` per node when our plugin is used: the plugin binary hands
        it each request instead of importing the plugin's Python modules in every call."""
        if self.cni.bridge != "netplane-bridge" or not component_available("netplane.cni.agent"):
            return
        for node in self.topo.nodes:
            sock = sandbox.agent_socket(self.state, node.name)
            self.agents[node.name] = Child(
                f"cni-agent-{node.name}",
                [
                    "nsenter",
                    f"--net={NETNS_DIR / self.topo.node_ns(node.name)}",
                    *netplane_argv("cni", "agent", "--socket", str(sock)),
                ],
                self.state.pids,
                self.state.logs,
            ).start()

    def wait_cni_agents(self, timeout: float = 10) -> None:
        """Until every agent serves (sandboxes need them; nothing else does)."""
        if not self.agents:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(
            sandbox.agent_socket(self.state, n.name).exists() for n in self.topo.nodes
        ):
            time.sleep(0.02)

    def start_runtimes(self) -> None:
        for node in self.topo.nodes:
            self.runtimes[node.name] = Child(
                f"runtime-{node.name}",
                [
                    "nsenter",
                    f"--net={NETNS_DIR / self.topo.node_ns(node.name)}",
                    sys.executable,
                    "-m",
                    "netplane.cluster.node.runtime",
                    "--node",
                    node.name,
                    "--state-dir",
                    str(self.state.path),
                ],
                self.state.pids,
                self.state.logs,
                on_line=self._runtime_line,
                on_start=functools.partial(self._resend, node.name),
            ).start()
        cp = self.topo.control_plane
        self.apps["apiserver"] = (
            cp.name,
            {
                "op": "add",
                "uid": "apiserver",
                "pod": "kube-system/kube-apiserver",
                "listeners": [[API_PORT, "TCP", "apiserver"]],
                "tls": {"pki": str(self.state.path / "pki"), "ip": cp.ip},
            },
        )
        self.runtimes[cp.name].send(self.apps["apiserver"][1])

    def _resend(self, node: str) -> None:
        with self._lock:
            msgs = [m for n, m in self.apps.values() if n == node]
        for m in msgs:
            self.runtimes[node].send(m)

    def _runtime_line(self, msg: dict) -> None:
        if msg.get("ready") != "apiserver" and ("ready" in msg or "container" in msg):
            self.on_event(msg)

    # -- pods ------------------------------------------------------------------------------
    def start_pod(self, uid: str, pod: dict) -> sandbox.Sandbox:
        meta, spec = pod["metadata"], pod["spec"]
        return sandbox.create(
            self.topo, self.state, self.cni, uid, meta["namespace"], meta["name"],
            spec["nodeName"], resolv_conf(pod),
        )  # fmt: skip

    def run_app(self, sb: sandbox.Sandbox, pod: dict, env: dict[str, str]) -> None:
        """Start what the pod's images run; on_event({"ready": uid}) fires when it listens."""
        containers = pod["spec"].get("containers", [])
        pod_name = f"{sb.namespace}/{sb.name}"
        if any(is_dns_image(c.get("image", "")) for c in containers):
            child = Child(
                f"dns-{sb.name}",
                [
                    "nsenter",
                    f"--net={NETNS_DIR / sb.netns}",
                    *netplane_argv(
                        "dns",
                        "serve",
                        "--manifests",
                        str(self.state.manifests),
                        "--listen",
                        f"{sb.ip}:53",
                        "--pods",
                        "verified",
                        "--workers",
                        "1",  # a lab pod: one worker is plenty, and halves the memory
                    ),
                ],
                self.state.pids,
                self.state.logs,
            ).start()
            with self._lock:
                self.dns[sb.uid] = child
            threading.Thread(target=self._wait_dns, args=(sb.uid, child), daemon=True).start()
            return
        msg = {
            "op": "add",
            "uid": sb.uid,
            "netns": sb.netns,
            "pod": pod_name,
            "containers": containers,
            "env": env,
            "restartPolicy": pod["spec"].get("restartPolicy", "Always"),
            "logdir": str(self.state.pod_logs(sb.namespace, sb.name, sb.uid)),
        }
        with self._lock:
            self.apps[sb.uid] = (sb.node, msg)
        self.runtimes[sb.node].send(msg)

    def _wait_dns(self, uid: str, child: Child) -> None:
        """Ready once the server has a UDP socket on port 53 (seen in its netns' table)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pid = child.pid
            if pid:
                try:
                    table = Path(f"/proc/{pid}/net/udp").read_text()
                    if any(line.split()[1].endswith(":0035") for line in table.splitlines()[1:]):
                        self.on_event({"ready": uid})
                        return
                except OSError:
                    pass
            time.sleep(0.05)

    def stop_app(self, sb: sandbox.Sandbox) -> None:
        with self._lock:
            app = self.apps.pop(sb.uid, None)
            dns = self.dns.pop(sb.uid, None)
        if app:
            self.runtimes[sb.node].send({"op": "remove", "uid": sb.uid})
        if dns:
            dns.stop()

    def stop_pod(self, sb: sandbox.Sandbox) -> None:
        self.stop_app(sb)
        sandbox.remove(self.topo, self.state, self.cni, sb)

    def children(self) -> list[Child]:
        with self._lock:
            return [*self.dns.values(), *self.runtimes.values(), *self.agents.values()]
