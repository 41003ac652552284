"""Pod sandboxes, made the way containerd makes them (side effects): a named netns, the
CNI plugin called with containerd's environment from inside the node's namespace, and the
pod's resolv.conf where `ip netns exec` picks it up.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from netplane import netns as nsutil
from netplane.cluster.control.topology import Topology
from netplane.cluster.node.plumbing import ETC_NETNS, NETNS_DIR, ensure_etc_netns
from netplane.cluster.statedir import StateDir

NETWORK = "netplane"
REFERENCE_CNI = Path("/usr/lib/cni")


class SandboxError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Sandbox:
    uid: str
    namespace: str
    name: str
    node: str
    netns: str
    container_id: str
    ip: str
    result: str  # the CNI ADD result, passed back as prevResult on DEL


@dataclass(frozen=True, slots=True)
class CniChoice:
    """Which bridge/IPAM plugin pair creates pod networks: ours, or the reference plugins
    ours are a drop-in replacement for (used while ours is missing or broken)."""

    bridge: str
    ipam: str
    path: str


def choose_cni(prefer: str = "auto") -> CniChoice:
    bindir = str(Path(sys.executable).parent)
    ours = CniChoice("netplane-bridge", "netplane-ipam", bindir)
    ref = CniChoice("bridge", "host-local", str(REFERENCE_CNI))
    if prefer == "reference":
        return ref
    works = _launcher() is not None
    if prefer == "netplane" and not works:
        raise SandboxError(
            "the netplane-bridge plugin does not answer CNI VERSION; use --cni reference"
        )
    return ours if works else ref


def _launcher() -> str | None:
    """Our plugin's static launcher when it answers CNI VERSION (2 ms; the venv's Python
    entry points took 0.2 s each, on `up`'s critical path), else None."""
    try:
        from netplane.cni.launcher import binary

        launcher = binary()
        proc = subprocess.run(
            [launcher],
            input="{}",
            env={"CNI_COMMAND": "VERSION", "PATH": os.environ.get("PATH", "")},
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (ImportError, RuntimeError, OSError, subprocess.TimeoutExpired):
        return None
    return launcher if proc.returncode == 0 and "supportedVersions" in proc.stdout else None


def conflist(topo: Topology, state: StateDir, node: str, cni: CniChoice) -> dict:
    spec = topo.node(node)
    return {
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "plugins": [
            {
                "type": cni.bridge,
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,  # flannel masquerades only leaving the pod network
                "hairpinMode": True,
                "ipam": {
                    "type": cni.ipam,
                    "ranges": [[{"subnet": spec.pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(state.cni_dir(node) / "ipam"),
                },
            }
        ],
    }


def write_conflists(topo: Topology, state: StateDir, cni: CniChoice) -> None:
    for node in topo.nodes:
        d = state.cni_dir(node.name)
        d.mkdir(parents=True, exist_ok=True)
        conf = conflist(topo, state, node.name, cni)
        (d / "10-netplane.conflist").write_text(json.dumps(conf, indent=2))


def install_plugins(state: StateDir, cni: CniChoice) -> CniChoice:
    """Put the plugin in the cluster's own CNI bin dir, as a CNI DaemonSet's installer does
    on each node (the static launcher, which hands each call to the node's agent)."""
    if cni.bridge != "netplane-bridge":
        return cni
    launcher = _launcher()
    if launcher is None:
        return cni  # an older CNI component: call the venv's scripts directly
    from netplane.cni.install import InstallPlan, install_plugin

    bindir = state.path / "cni" / "bin"
    install_plugin(InstallPlan(bin_dir=str(bindir), conf_dir="", bridge="cni0"), launcher)
    return CniChoice(cni.bridge, cni.ipam, str(bindir))


def agent_socket(state: StateDir, node: str) -> Path:
    return state.cni_dir(node) / "agent.sock"


def _invoke(
    topo: Topology, state: StateDir, cni: CniChoice, command: str, sb: Sandbox, prev: str = ""
) -> str:
    conf = json.loads((state.cni_dir(sb.node) / "10-netplane.conflist").read_text())
    plugin = {"cniVersion": conf["cniVersion"], "name": conf["name"], **conf["plugins"][0]}
    if prev:
        plugin["prevResult"] = json.loads(prev)
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": sb.container_id,
        "CNI_NETNS": str(NETNS_DIR / sb.netns) if (NETNS_DIR / sb.netns).exists() else "",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": (
            f"IgnoreUnknown=1;K8S_POD_NAMESPACE={sb.namespace};K8S_POD_NAME={sb.name};"
            f"K8S_POD_INFRA_CONTAINER_ID={sb.container_id};K8S_POD_UID={sb.uid}"
        ),
        "CNI_PATH": cni.path,
        # the runtime's environment reaches the plugin: it finds the node's CNI agent here
        "NETPLANE_CNI_SOCKET": str(agent_socket(state, sb.node)),
    }
    # The plugin runs in the node's network namespace, as containerd runs it on the node.
    argv = [
        "nsenter",
        f"--net={NETNS_DIR / topo.node_ns(sb.node)}",
        str(Path(cni.path) / cni.bridge),
    ]
    proc = subprocess.run(argv, input=json.dumps(plugin), env=env, capture_output=True, text=True)
    if proc.returncode:
        try:
            err = json.loads(proc.stdout)
            msg = f"{err.get('msg')} ({err.get('details', '')}, code {err.get('code')})"
        except ValueError:
            msg = (proc.stdout + proc.stderr).strip()
        raise SandboxError(f"CNI {command} for pod {sb.namespace}/{sb.name}: {msg}")
    return proc.stdout


def create(
    topo: Topology,
    state: StateDir,
    cni: CniChoice,
    uid: str,
    namespace: str,
    name: str,
    node: str,
    resolv_conf: str | None,
) -> Sandbox:
    netns = topo.pod_ns(namespace, name)
    container_id = hashlib.sha256(f"{uid}/{netns}".encode()).hexdigest()
    sb = Sandbox(uid, namespace, name, node, netns, container_id, "", "")
    nsutil.create(netns)
    try:
        result = _invoke(topo, state, cni, "ADD", sb)
        address = json.loads(result)["ips"][0]["address"].split("/")[0]
        if resolv_conf is not None:
            ensure_etc_netns(topo.id)
            d = ETC_NETNS / netns
            d.mkdir(exist_ok=True)
            (d / "resolv.conf").write_text(resolv_conf)
    except Exception:
        remove(topo, state, cni, sb)
        raise
    return Sandbox(uid, namespace, name, node, netns, container_id, address, result)


def remove(topo: Topology, state: StateDir, cni: CniChoice, sb: Sandbox) -> None:
    """CNI DEL (which releases the IP), then the netns and its resolv.conf; idempotent."""
    try:
        _invoke(topo, state, cni, "DEL", sb, sb.result)
    finally:
        nsutil.delete(sb.netns)
        shutil.rmtree(ETC_NETNS / sb.netns, ignore_errors=True)


def to_json(sb: Sandbox) -> dict:
    return asdict(sb)
