"""A real Kubernetes node on this machine: the real kubelet and Debian's containerd inside a
node namespace of a `ControlPlane`, with a mount namespace of its own.

    with ControlPlane(controller_manager=True) as cp, RealNode(cp, "node-a") as node:
        node.import_images(archive)                  # into the node's containerd
        cp.kubectl("apply", "-k", "deploy/")         # DaemonSets land on the node
        node.run("ip", "-br", "link")                # a command in the node's namespaces

The mount namespace gives the node the standard paths every CNI and kubelet expects, private
to it: /etc/cni/net.d, /opt/cni/bin (Debian's reference plugins, as `kubernetes-cni` puts
them), /var/lib/kubelet, /var/lib/cni, /run/netplane, /run/containerd, /var/run/netns,
/var/log/pods. So the manifests in deploy/ run unchanged, two nodes never share a file, and
every mount the runtime makes disappears with the namespace. Kernel tunables kubelet would set
machine-wide (vm.overcommit_memory, kernel.panic, kernel.panic_on_oops) are shown to it, in
its mount namespace only, with the values it wants, so it changes nothing on the host.
Pods live under the cgroup /npnode-<name> of every v1 hierarchy (cgroupfs driver), removed
at the end. Root lacks CAP_SYS_RESOURCE here: containerd's `restrict_oom_score_adj` and
kubelet's `oomScoreAdj: 0` keep them from asking for negative OOM scores.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from netplane.image import host_arch
from netplane.testing import anchors
from netplane.testing.controlplane import ControlPlane, Node
from netplane.testing.oci import oci_archive
from netplane.testing.procs import stop_process

# path inside the node -> its directory under the node's root (a file when it ends in "!")
_PRIVATE = (
    "/etc/cni/net.d",
    "/opt/cni/bin",
    "/var/lib/kubelet",
    "/var/lib/cni",
    "/var/lib/containerd",
    "/run/containerd",
    "/run/netplane",
    "/var/run/netns",
    "/var/log/pods",
    "/var/log/containers",
    "/etc/kubernetes",
)
# kubelet's setupKernelTunables: the values it would write machine-wide
_TUNABLES = {"vm/overcommit_memory": "1", "kernel/panic": "10", "kernel/panic_on_oops": "1"}
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
PAUSE_IMAGE = "localhost/netplane/pause:1"


def containerd_config(
    root: str,
    state: str,
    socket: str,
    sandbox_image: str,
    cni_bin_dir: str = "/opt/cni/bin",
    cni_conf_dir: str = "/etc/cni/net.d",
) -> str:
    """A containerd config (TOML) for a CRI node: runc on overlayfs, CNI from the dirs given."""
    return f"""version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # root lacks CAP_SYS_RESOURCE here: a sandbox's oom_score_adj of -998 makes runc fail
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin_dir}"
    conf_dir = "{cni_conf_dir}"
"""


class NodeError(RuntimeError):
    """The node could not start; the message carries the component's log tail."""


class RealNode:
    """containerd + kubelet for the node NAME of CP (see the module doc)."""

    def __init__(self, cp: ControlPlane, name: str, directory: Path | None = None) -> None:
        self.cp = cp
        self.name = name
        self.root = Path(directory or tempfile.mkdtemp(prefix=f"npnode-{name}-", dir="/var/tmp"))
        self.node: Node | None = None
        self.cgroup = f"/npnode-{name}-{os.getpid()}"
        self._holder: subprocess.Popen | None = None
        self._procs: dict[str, subprocess.Popen] = {}
        self._made_lib_modules = False

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> RealNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> RealNode:
        try:
            bins = anchors.require("kubelet")
            self.node = self.cp.add_node(self.name)  # the Node object, with spec.podCIDR
            self._make_cgroups()
            self._enter_holder()
            self._start_containerd()
            self._start_kubelet(bins["kubelet"])
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """kubelet, then every container (the shims outlive containerd), containerd, the
        mount namespace, the cgroups, the node's namespace and directory."""
        if "kubelet" in self._procs:
            self._stop("kubelet", 20)
        if "containerd" in self._procs and self._procs["containerd"].poll() is None:
            with contextlib.suppress(Exception):
                self._kill_all_tasks()
        if "containerd" in self._procs:
            self._stop("containerd", 20)
        self._kill_leftovers()
        if self._holder is not None:
            self._holder.kill()
            self._holder.wait()
            self._holder = None
        self._remove_cgroups()
        if self.node is not None:
            with contextlib.suppress(Exception):
                self.cp.remove_node(self.name)
            self.node = None
        if self._made_lib_modules:
            with contextlib.suppress(OSError):
                os.rmdir("/lib/modules")
        if os.environ.get("NETPLANE_KEEP_NODE") != "1":
            shutil.rmtree(self.root, ignore_errors=True)

    # -- running things in the node -------------------------------------------------------
    def nsenter(self) -> list[str]:
        assert self._holder is not None and self.node is not None
        return [
            "nsenter",
            f"--mount=/proc/{self._holder.pid}/ns/mnt",
            f"--net=/run/netns/{self.node.netns}",
            "--",
        ]

    def run(
        self, *argv: str, check: bool = True, timeout: float = 60, input: str | None = None
    ) -> str:
        proc = subprocess.run(
            [*self.nsenter(), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            check=False,
        )
        if check and proc.returncode != 0:
            raise NodeError(f"{' '.join(argv)} on {self.name}: {proc.stderr.strip()}")
        return proc.stdout

    def ctr(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        argv = ["ctr", "--address", CONTAINERD_SOCKET, "-n", "k8s.io", *args]
        return self.run(*argv, check=check, timeout=timeout)

    def import_images(self, *archives: Path) -> None:
        for archive in archives:
            self.ctr("images", "import", "--all-platforms", str(archive), timeout=900)

    def log(self, component: str) -> str:
        path = self.root / f"{component}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- setup ----------------------------------------------------------------------------
    def _make_cgroups(self) -> None:
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            if not (hierarchy / "cgroup.procs").exists() or hierarchy.name == "unified":
                continue
            mine = hierarchy / self.cgroup.lstrip("/")
            mine.mkdir(exist_ok=True)
            if hierarchy.name == "cpuset":  # a v1 cpuset child starts with no CPUs or memory
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    (mine / knob).write_text((hierarchy / knob).read_text())

    def _remove_cgroups(self) -> None:
        for _ in range(40):
            left = False
            for hierarchy in Path("/sys/fs/cgroup").iterdir():
                top = hierarchy / self.cgroup.lstrip("/")
                if not top.exists():
                    continue
                for path in sorted(top.rglob("*"), key=lambda p: -len(p.parts)):
                    if path.is_dir():
                        with contextlib.suppress(OSError):
                            path.rmdir()
                with contextlib.suppress(OSError):
                    top.rmdir()
                left = left or top.exists()
            if not left:
                return
            time.sleep(0.25)

    def _enter_holder(self) -> None:
        """A process that holds the node's mount namespace, with the private mounts made."""
        assert self.node is not None
        if not os.path.exists("/lib/modules"):  # a real node has one; DaemonSets mount it
            os.makedirs("/lib/modules")
            self._made_lib_modules = True
        lines = ["set -e"]
        for path in _PRIVATE:
            src = self.root / "fs" / path.strip("/").replace("/", "_")
            src.mkdir(parents=True, exist_ok=True)
            lines.append(f"mkdir -p {path} && mount --bind {src} {path}")
        for key, value in _TUNABLES.items():
            fake = self.root / "sysctl" / key.replace("/", "_")
            fake.parent.mkdir(exist_ok=True)
            fake.write_text(value + "\n")
            lines.append(f"mount --bind {fake} /proc/sys/{key}")
        lines.append("echo ready")
        lines.append("exec sleep infinity")
        bin_dir = self.root / "fs" / "opt_cni_bin"
        for plugin in Path("/usr/lib/cni").iterdir():  # what `kubernetes-cni` gives a node
            shutil.copy2(plugin, bin_dir / plugin.name)
        (self.root / "fs" / "etc_kubernetes" / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        self._holder = subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", "nsenter", f"--net=/run/netns/{self.node.netns}",
             "unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(lines)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self._holder.stdout is not None
        if self._holder.stdout.readline().strip() != "ready":
            err = self._holder.stderr.read() if self._holder.stderr else ""
            raise NodeError(f"node mount namespace: {err}")

    def _start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 (lives as long as the process)
        proc = subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", *self.nsenter(), *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._procs[name] = proc
        return proc

    def _stop(self, name: str, deadline: float) -> None:
        proc = self._procs.pop(name)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(deadline)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float, proc: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self._procs[proc].poll() is not None:
                raise NodeError(f"{proc} exited:\n{self.log(proc)[-3000:]}")
            if time.monotonic() > deadline:
                raise NodeError(f"{what} not ready in {timeout:.0f} s:\n{self.log(proc)[-3000:]}")
            time.sleep(0.2)

    def _start_containerd(self) -> None:
        config = self.root / "containerd.toml"
        config.write_text(
            containerd_config(
                "/var/lib/containerd", "/run/containerd", CONTAINERD_SOCKET, PAUSE_IMAGE
            )
        )
        self._start("containerd", ["containerd", "--config", str(config)])
        sock = self.root / "fs" / "run_containerd" / "containerd.sock"
        self._wait("containerd", sock.exists, 60, "containerd")

    def _start_kubelet(self, kubelet: Path) -> None:
        assert self.node is not None
        kubeconfig = self.cp.kubeconfig(f"system:node:{self.name}", ["system:nodes"])
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup,
            "failCgroupV1": False,
            "failSwapOn": False,
            "oomScoreAdj": 0,
            "clusterDNS": ["10.96.0.10"],
            "clusterDomain": "cluster.local",
            "resolvConf": "/etc/kubernetes/resolv.conf",
            # the API server reaches kubelet (logs, exec) without a client certificate here
            "authentication": {
                "anonymous": {"enabled": True},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.cp.ca)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "nodeStatusUpdateFrequency": "4s",
        }
        path = self.root / "kubelet.yaml"
        path.write_text(yaml.safe_dump(config))
        self._start(
            "kubelet",
            [str(kubelet), f"--config={path}", f"--kubeconfig={kubeconfig}",
             f"--hostname-override={self.name}", f"--node-ip={self.node.ip}", "--v=1"],
        )  # fmt: skip
        self._wait("kubelet", self._ready, 120, "kubelet")

    def _ready(self) -> bool:
        try:
            node = self.cp.api.get(f"/api/v1/nodes/{self.name}")
        except Exception:
            return False
        # Ready needs the pod network: here "the kubelet is posting status" is enough
        return bool(node.get("status", {}).get("nodeInfo", {}).get("kubeletVersion"))

    def untaint_when_ready(self, timeout: float = 180) -> None:
        """Wait for the Ready condition (it needs a pod network), then drop the not-ready
        taint, as the node lifecycle controller would (it is off in the test control plane)."""
        deadline = time.monotonic() + timeout
        while True:
            node = self.cp.api.get(f"/api/v1/nodes/{self.name}")
            conditions = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
            if conditions.get("Ready") == "True":
                break
            if time.monotonic() > deadline:
                raise NodeError(f"{self.name} not Ready: {node['status'].get('conditions')}")
            time.sleep(0.5)
        taints = [
            t for t in node["spec"].get("taints", []) if t["key"] != "node.kubernetes.io/not-ready"
        ]
        patch = json.dumps({"spec": {"taints": taints}})
        self.cp.kubectl("patch", "node", self.name, "--type=merge", "-p", patch)

    def _kill_all_tasks(self) -> None:
        for line in self.ctr("tasks", "ls", "-q", check=False).split():
            self.ctr("tasks", "kill", "-s", "SIGKILL", line, check=False)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            tasks = self.ctr("tasks", "ls", "-q", check=False).split()
            for task in tasks:
                self.ctr("tasks", "rm", "-f", task, check=False)
            if not tasks:
                return
            time.sleep(0.3)

    def _kill_leftovers(self) -> None:
        """Whatever still runs in the node's cgroup (a shim, a container process)."""
        for procs in (
            Path("/sys/fs/cgroup/pids").joinpath(self.cgroup.lstrip("/")).rglob("cgroup.procs")
        ):
            for text in procs.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(text), signal.SIGKILL)
        for pid in _pids_with_arg(str(self.root)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class Scheduler:
    """The real kube-scheduler beside the control plane (DaemonSet and Deployment pods are
    placed by it), stopped with `close()`."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.log = cp.directory / "scheduler.log"
        kubeconfig = cp.kubeconfig("system:kube-scheduler")
        binary = anchors.require("kube-scheduler")["kube-scheduler"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                ["setpriv", "--pdeathsig", "KILL", "ip", "netns", "exec", cp.netns, str(binary),
                 f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
                 f"--authorization-kubeconfig={kubeconfig}", "--leader-elect=false",
                 "--bind-address=127.0.0.1", "--secure-port=10259", "--v=1"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        stop_process(self.proc)


def _pids_with_arg(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def pause_archive(path: Path) -> Path:
    """The sandbox image (containerd's sandbox_image)."""
    oci_archive(str(path), PAUSE_IMAGE, host_arch())
    return path
