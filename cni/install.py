"""`netplane cni install` / `uninstall`: the plugin and its network config on a node.

What a node gets is self-contained: the static launcher (launcher.c) as `netplane-bridge`,
which needs nothing installed on the host and forwards to the agent, and a conflist that
names it with `netplane-ipam` (run inside the agent, never exec'd). Each file is written to a
temp name, then renamed, so a runtime watching the directories never sees half a file.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
from dataclasses import dataclass
from typing import Any

BRIDGE = "netplane-bridge"
IPAM = "netplane-ipam"


@dataclass(frozen=True)
class InstallPlan:
    bin_dir: str
    conf_dir: str
    subnets: tuple[str, ...] = ("10.85.0.0/16",)
    network: str = "netplane"
    bridge: str = "netplane0"
    conf_name: str = "10-netplane.conflist"

    @property
    def plugin_path(self) -> str:
        return os.path.join(self.bin_dir, BRIDGE)

    @property
    def conf_path(self) -> str:
        return os.path.join(self.conf_dir, self.conf_name)


def conflist(plan: InstallPlan) -> dict[str, Any]:
    """One range set per subnet (IPv4 and IPv6 for a dual-stack node), a default route per
    family, masquerade for traffic leaving the pod network, hairpin so a pod reaches itself
    through a Service."""
    if not plan.subnets:
        raise ValueError("no pod subnet given")
    nets = [ipaddress.ip_network(s, strict=True) for s in plan.subnets]  # fail before writing
    if len({n.version for n in nets}) != len(nets):
        raise ValueError(f"at most one subnet per IP family: {', '.join(plan.subnets)}")
    return {
        "cniVersion": "1.0.0",
        "name": plan.network,
        "plugins": [
            {
                "type": BRIDGE,
                "bridge": plan.bridge,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": IPAM,
                    "ranges": [[{"subnet": str(n)}] for n in nets],
                    "routes": [{"dst": "0.0.0.0/0" if n.version == 4 else "::/0"} for n in nets],
                },
            }
        ],
    }


def _write(path: str, content: bytes, mode: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(content)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def install_plugin(plan: InstallPlan, launcher: str) -> str:
    with open(launcher, "rb") as f:
        _write(plan.plugin_path, f.read(), 0o755)
    return plan.plugin_path


def install_conflist(plan: InstallPlan) -> str:
    _write(plan.conf_path, (json.dumps(conflist(plan), indent=2) + "\n").encode(), 0o644)
    return plan.conf_path


def install(plan: InstallPlan, launcher: str, with_conflist: bool = True) -> list[str]:
    if with_conflist:
        conflist(plan)  # a bad subnet fails before anything is written
    written = [install_plugin(plan, launcher)]
    if with_conflist:
        written.append(install_conflist(plan))
    return written


def remove_files(plan: InstallPlan) -> list[str]:
    """The conflist first (the runtime stops using the network), then the plugin."""
    removed = []
    for path in (plan.conf_path, plan.plugin_path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed.append(path)
    return removed


def clean_node(plan: InstallPlan, data_dir: str = "") -> list[str]:
    """What the network left in this network namespace: our pod veths on the bridge, the
    bridge, masquerade chains of the network (found by comment), the IPAM store. For
    uninstall: the pods still on the bridge lose their network."""
    from netplane.cni import masq, netops
    from netplane.cni.inflight import DEFAULT_STATE_DIR, STATE_ENV
    from netplane.cni.rtnl import Rtnl
    from netplane.cni.spec import CniError
    from netplane.cni.store import DEFAULT_DATA_DIR

    done = []
    with Rtnl() as rtnl:
        bridge = rtnl.link(plan.bridge)
        if bridge is not None and bridge.kind == "bridge":
            for name in netops.bridge_ports(rtnl, bridge.index):
                if netops.is_our_veth(name):
                    netops.delete_link(rtnl, name)
            rtnl.del_link(bridge.index)
            done.append(f"bridge {plan.bridge}")
    chains: set[str] = set()
    for version in (4, 6):
        with contextlib.suppress(CniError):  # no ip6tables, or no nat table: nothing of ours
            chains |= set(masq.chains_of_network(masq.save(version), plan.network))
    if chains:
        masq.teardown(chains)
        done.append(f"{len(chains)} masquerade chains")
    store = os.path.join(data_dir or DEFAULT_DATA_DIR, plan.network)
    if os.path.isdir(store):
        shutil.rmtree(store)
        done.append(f"IPAM store {store}")
    markers = os.path.join(os.environ.get(STATE_ENV) or DEFAULT_STATE_DIR, "cni-adds")
    if os.path.isdir(markers):
        shutil.rmtree(markers)
        done.append(f"in-progress ADD markers {markers}")
    return done
