"""`netplane cni install`: put the plugins and a conflist where a runtime looks for them.

Mirrors what CNI DaemonSet installers do: write each file to a temp name, then rename, so a
runtime watching the directories never sees a half-written binary or config.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from dataclasses import dataclass
from typing import Any

from netplane.cni.launcher import render

BRIDGE = "netplane-bridge"
IPAM = "netplane-ipam"


@dataclass(frozen=True)
class InstallPlan:
    bin_dir: str
    conf_dir: str
    subnet: str
    network: str = "netplane"
    bridge: str = "netplane0"
    conf_name: str = "10-netplane.conflist"
    python: str = sys.executable


def conflist(plan: InstallPlan) -> dict[str, Any]:
    ipaddress.ip_network(plan.subnet, strict=True)  # fail before writing anything
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
                    "ranges": [[{"subnet": plan.subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            }
        ],
    }


def files(plan: InstallPlan) -> dict[str, tuple[str, int]]:
    """path -> (content, mode) for everything the install writes (pure)."""
    scripts = os.path.dirname(plan.python)
    ipam_launcher = f"#!{plan.python}\nfrom netplane.cni.ipam import main\n\nmain()\n"
    return {
        os.path.join(plan.bin_dir, BRIDGE): (
            render(plan.python, os.path.join(scripts, BRIDGE)),
            0o755,
        ),
        os.path.join(plan.bin_dir, IPAM): (ipam_launcher, 0o755),
        os.path.join(plan.conf_dir, plan.conf_name): (
            json.dumps(conflist(plan), indent=2) + "\n",
            0o644,
        ),
    }


def install(plan: InstallPlan) -> list[str]:
    planned = files(plan)
    for path, (content, mode) in planned.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(content)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    return list(planned)
