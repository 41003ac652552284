"""deploy/ on two real nodes: the real kubelet and containerd on each, `kubectl apply -k`, and
what a user checks after it (slow; runs on the cached anchors and the image built here).

Each node is a `RealNode` of a real control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler): its own network and mount namespaces, so deploy/'s manifests run unchanged.
An overlay points the node components at the API server's address and at the local image.
The nodes route each other's pod CIDR through their addresses (flannel's host-gw backend in
two commands): netplane-bridge, like the reference bridge, wires pods to their own node only.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import pytest
import yaml

from netplane import netns
from netplane.testing.controlplane import APISERVER_IP, APISERVER_PORT, ControlPlane
from netplane.testing.realnode import RealNode, Scheduler, pause_archive

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cni"))
from crihelp import Cri  # noqa: E402 (the CRI client of the CNI tests)

REPO = Path(__file__).resolve().parents[2]
IMAGE = "localhost/netplane/netplane:0.1.0"


def _overlay(directory: Path) -> Path:
    directory.mkdir()
    (directory / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(REPO / "deploy", directory)],
                "configMapGenerator": [
                    {
                        "name": "netplane-apiserver",
                        "namespace": "kube-system",
                        "behavior": "replace",
                        "options": {"disableNameSuffixHash": True},
                        "literals": [f"host={APISERVER_IP}", f"port={APISERVER_PORT}"],
                    }
                ],
                "images": [
                    {
                        "name": "ghcr.io/netplane/netplane",
                        "newName": IMAGE.split(":")[0],
                        "newTag": IMAGE.split(":")[1],
                    }
                ],
            }
        )
    )
    return directory


def _wait(what: str, check, timeout: float = 300, interval: float = 0.5):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout:.0f} s")
        time.sleep(interval)


def _all_ready(cp: ControlPlane, nodes: int) -> bool:
    get = cp.api.get
    for name in ("netplane-proxy", "netplane-cni"):
        ds = get(f"/apis/apps/v1/namespaces/kube-system/daemonsets/{name}").get("status", {})
        if ds.get("desiredNumberScheduled") != nodes or ds.get("numberReady") != nodes:
            return False
    dns = get("/apis/apps/v1/namespaces/kube-system/deployments/netplane-dns")
    return dns.get("status", {}).get("readyReplicas") == dns["spec"]["replicas"]


WORKLOAD = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      topologySpreadConstraints:  # one per node: one of them is always on the other node
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: DoNotSchedule
          labelSelector: {matchLabels: {app: web}}
      containers:
        - name: web
          image: IMAGE
          command: [python3, -c, "import http.server as h, socket;
            C = type('C', (h.BaseHTTPRequestHandler,), {'do_GET': lambda s: (s.send_response(200),
            s.end_headers(), s.wfile.write(socket.gethostname().encode()))});
            h.ThreadingHTTPServer(('', 8080), C).serve_forever()"]
          readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-np, namespace: default}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default}
spec:
  nodeSelector: {kubernetes.io/hostname: node-a}
  containers:
    - name: client
      image: IMAGE
      command: [sleep, "3600"]
"""

FETCH = (
    "import sys, urllib.request; "
    "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
)


def test_deploy_on_two_real_nodes(built_image, tmp_path):
    _, archive = built_image
    pause = pause_archive(tmp_path / "pause.tar")
    with (
        ControlPlane(controller_manager=True) as cp,
        Scheduler(cp),
        RealNode(cp, "node-a") as node,
        RealNode(cp, "node-b") as other,
    ):
        nodes = (node, other)
        for n in nodes:
            n.import_images(archive, pause)
            for peer in nodes:
                if peer is not n:
                    assert peer.node is not None
                    n.run("ip", "route", "add", peer.node.pod_cidr, "via", peer.node.ip)
        overlay = _overlay(tmp_path / "overlay")
        start = time.monotonic()
        cp.kubectl("apply", "-k", str(overlay))
        try:
            for n in nodes:
                n.untaint_when_ready()
            _wait("netplane's DaemonSets and DNS Deployment Ready", lambda: _all_ready(cp, 2))
        except Exception:
            print(cp.kubectl("get", "all", "-A", "-o", "wide", check=False))
            print(cp.kubectl("get", "events", "-A", check=False)[-4000:])
            raise
        apply_to_ready = time.monotonic() - start
        print(f"kubectl apply -k -> all Ready: {apply_to_ready:.1f} s")

        print("RunPodSandbox incl. CNI ADD, same kubelet's containerd, ms (p50 / max):")
        for name, seconds in _sandbox_times(node, 10).items():
            ms = sorted(1000 * s for s in seconds)
            print(f"  {name}: {statistics.median(ms):.1f} / {ms[-1]:.1f}")

        # the network a pod gets is netplane-bridge's, from its Node's pod CIDR
        cidrs = {}
        for n in nodes:
            assert n.node is not None
            cidrs[n.name] = n.node.pod_cidr
            conflist = json.loads(n.run("cat", "/etc/cni/net.d/10-netplane.conflist"))
            assert conflist["plugins"][0]["type"] == "netplane-bridge"
            assert conflist["plugins"][0]["ipam"]["ranges"] == [[{"subnet": n.node.pod_cidr}]]

        cp.kubectl("apply", "-f", "-", input=WORKLOAD.replace("IMAGE", IMAGE))
        cp.kubectl("wait", "--for=condition=Ready", "pod", "-l", "app=web", "--timeout=300s")
        cp.kubectl("wait", "--for=condition=Ready", "pod/client", "--timeout=300s")
        pods = cp.api.get("/api/v1/namespaces/default/pods")["items"]
        for p in pods:
            prefix = cidrs[p["spec"]["nodeName"]].rsplit(".", 1)[0] + "."
            assert p["status"]["podIP"].startswith(prefix), p["status"]
        webs = [p for p in pods if p["metadata"]["name"] != "client"]
        assert {p["spec"]["nodeName"] for p in webs} == set(cidrs), "one web pod per node"
        for n in nodes:  # made by the first ADD on the node
            assert "netplane0" in n.run("ip", "-br", "link", "show", "type", "bridge")
        names = {p["metadata"]["name"] for p in webs}

        # a ClusterIP Service by name: the pod's resolv.conf -> netplane dns -> netplane proxy
        # (both endpoints answer: one of them is on the other node)
        def fetch() -> str:
            return cp.kubectl("exec", "client", "--", "python3", "-c", FETCH, "http://web").strip()

        # until the proxy has the new Service's rules (the node has no route to 10.96/12)
        _wait("the web Service answering", lambda: _answers(fetch), timeout=120, interval=1)
        answers = {fetch() for _ in range(12)}
        assert answers == names, answers  # both endpoints answer
        # a NodePort from outside the nodes, on each node
        outside = cp.add_node("outside", register=False)
        for n in nodes:
            assert n.node is not None
            argv = ["python3", "-c", FETCH, f"http://{n.node.ip}:30080"]
            got = _wait(
                f"the NodePort answering on {n.name}",
                lambda argv=argv: _answers(lambda: netns.run(outside.netns, argv)),
                timeout=60,
                interval=1,
            )
            assert got.strip() in names

        # an upgrade (a new image tag rolls the DaemonSets the same way): running pods keep
        # their network (supervise cleans up only when its DaemonSet goes), and pods made and
        # deleted afterwards get their ADD and DEL from the new agents
        for ds in ("daemonset/netplane-cni", "daemonset/netplane-proxy"):
            cp.kubectl("-n", "kube-system", "rollout", "restart", ds)
        for ds in ("daemonset/netplane-cni", "daemonset/netplane-proxy"):
            cp.kubectl("-n", "kube-system", "rollout", "status", ds, "--timeout=300s")
        answers = {fetch() for _ in range(12)}
        assert answers == names, answers
        cp.kubectl("rollout", "restart", "deployment/web")
        cp.kubectl("rollout", "status", "deployment/web", "--timeout=300s")
        pods = cp.api.get("/api/v1/namespaces/default/pods?labelSelector=app%3Dweb")["items"]
        renewed = {p["metadata"]["name"] for p in pods if "deletionTimestamp" not in p["metadata"]}
        assert renewed and renewed.isdisjoint(names), (renewed, names)

        def only_renewed() -> bool:  # until the proxy has the new endpoints only
            try:
                return {fetch() for _ in range(12)} == renewed
            except Exception:
                return False

        _wait("only the new web pods answering", only_renewed, timeout=180, interval=1)

        # removal: the workload first, then netplane; the node is left clean
        cp.kubectl("delete", "-f", "-", "--wait=true", input=WORKLOAD.replace("IMAGE", IMAGE))
        cp.kubectl("delete", "-k", str(overlay), "--wait=true")
        _wait("netplane's pods gone", lambda: not cp.api.get(
            "/api/v1/namespaces/kube-system/pods")["items"])  # fmt: skip
        leftovers = {n.name: node_state(n) for n in nodes}
        assert leftovers == {"node-a": {}, "node-b": {}}, leftovers


def _answers(fetch) -> str:  # type: ignore[no-untyped-def]
    try:
        return str(fetch())
    except Exception:
        return ""


def node_state(node: RealNode) -> dict[str, object]:
    """What netplane could leave on a node; empty when clean. kubelet's own chains
    (KUBE-IPTABLES-HINT, KUBE-KUBELET-CANARY, KUBE-FIREWALL) are not netplane's."""
    found: dict[str, object] = {}
    kubelet_chains = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY", "KUBE-FIREWALL")
    for tool in ("iptables-save", "ip6tables-save"):
        rules = [
            line
            for line in node.run(tool).splitlines()
            if line.startswith((":", "-A"))
            and ("KUBE-" in line or "NETPLANE" in line or "CNI-" in line)
            and not any(chain in line for chain in kubelet_chains)
        ]
        if rules:
            found[tool] = rules
    bridges = node.run("ip", "-br", "link", "show", "type", "bridge").split()
    if bridges:
        found["bridges"] = bridges
    for path in ("/etc/cni/net.d", "/run/netplane", "/var/lib/cni/networks"):
        listing = node.run("sh", "-c", f"ls -A {path} 2>/dev/null || true").split()
        if listing:
            found[path] = listing
    if node.run("sh", "-c", "ls /opt/cni/bin | grep netplane || true").strip():
        found["/opt/cni/bin"] = "netplane-bridge"
    return found


REFERENCE = {
    "cniVersion": "1.0.0",
    "name": "reference",
    "plugins": [
        {
            "type": "bridge",
            "bridge": "cniref0",
            "isGateway": True,
            "ipMasq": True,
            "hairpinMode": True,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.244.201.0/24"}]],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        }
    ],
}


def _sandbox_times(node: RealNode, count: int) -> dict[str, list[float]]:
    """RunPodSandbox (which includes the CNI ADD) on the node's containerd, the runtime its
    kubelet uses: with netplane-bridge (the DaemonSet's conflist), then with the reference
    bridge + host-local (a conflist that sorts first, same options), then netplane again."""
    cri = Cri(str(node.root / "fs" / "run_containerd" / "containerd.sock"))
    conf_dir = node.root / "fs" / "etc_cni_net.d"
    times: dict[str, list[float]] = {"netplane-bridge": [], "reference bridge": []}

    def run(name: str, prefix: str, n: int) -> None:
        for i in range(n):
            meta = {"name": f"sb{i}", "namespace": "default", "uid": f"{prefix}-{i}-{time.time()}"}
            start = time.perf_counter()
            sandbox = cri("RunPodSandbox", {"config": {"metadata": meta, "linux": {}}})
            times[name].append(time.perf_counter() - start)
            sid = sandbox["pod_sandbox_id"]
            ip = cri("PodSandboxStatus", {"pod_sandbox_id": sid})["status"]["network"]["ip"]
            assert ip.startswith(prefix), (name, ip)
            # kubelet stops sandboxes of pods it does not know, maybe before we do
            with contextlib.suppress(Exception):
                cri("StopPodSandbox", {"pod_sandbox_id": sid})
            with contextlib.suppress(Exception):
                cri("RemovePodSandbox", {"pod_sandbox_id": sid})

    def switch(to_reference: bool) -> None:
        path = conf_dir / "05-reference.conflist"
        if to_reference:
            path.write_text(json.dumps(REFERENCE))
        else:
            path.unlink()
        time.sleep(3)  # containerd reloads the directory on inotify

    run("netplane-bridge", "10.244.1.", count // 2)
    switch(True)
    run("reference bridge", "10.244.201.", count)
    switch(False)
    run("netplane-bridge", "10.244.1.", count - count // 2)
    node.run("ip", "link", "del", "cniref0")
    node.run("rm", "-rf", "/var/lib/cni/networks/reference")
    return times
