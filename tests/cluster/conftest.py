"""A real emulated cluster per test module (namespaces, proxies, DNS), torn down after."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netplane.cluster.node.children import kill_recorded
from netplane.cluster.node.kubelet import component_available
from netplane.cluster.node.plumbing import teardown

NETPLANE = str(Path(sys.executable).parent / "netplane")


class Lab:
    def __init__(self, state: Path, name: str) -> None:
        self.state, self.name = state, name
        self.env = {**os.environ, "NETPLANE_STATE_DIR": str(state), "NETPLANE_CLUSTER": name}

    def argv(self, *args: str) -> list[str]:
        return [NETPLANE, *args]

    def run(self, *args: str, stdin: str | None = None, timeout: float = 120):
        return subprocess.run(
            [NETPLANE, *args],
            env=self.env,
            capture_output=True,
            text=True,
            input=stdin,
            timeout=timeout,
        )

    def np(self, *args: str, check: bool = True, stdin: str | None = None) -> str:
        proc = self.run(*args, stdin=stdin)
        if check and proc.returncode:
            raise AssertionError(f"netplane {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
        return proc.stdout

    def obj(self, kind: str, name: str, namespace: str = "default") -> dict:
        return json.loads(self.np("get", kind, name, "-n", namespace, "-o", "json"))

    def pods(self, namespace: str = "default") -> list[dict]:
        items = json.loads(self.np("get", "pods", "-n", namespace, "-o", "json"))["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    @property
    def id(self) -> str:
        return json.loads((self.state / "topology.json").read_text())["id"]

    def curl(self, *where: str, url: str, timeout: float = 3) -> str:
        return self.np("exec", *where, "--", "curl", "-s", "-m", str(timeout), url, check=False)

    def wait_ready(self, namespace: str = "default", count: int | None = None) -> list[dict]:
        deadline = time.monotonic() + 30
        while True:
            pods = self.pods(namespace)
            ready = [
                p
                for p in pods
                if any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in p.get("status", {}).get("conditions", [])
                )
            ]
            if len(ready) == len(pods) and (count is None or len(pods) == count):
                return pods
            assert time.monotonic() < deadline, f"pods not ready: {pods}"
            time.sleep(0.1)

    def cleanup(self) -> None:
        subprocess.run([NETPLANE, "down"], env=self.env, capture_output=True, timeout=120)
        topo = self.state / "topology.json"
        if topo.exists():  # down failed: remove what is left by hand
            kill_recorded(self.state / "pids", str(self.state))
            teardown(json.loads(topo.read_text())["id"])


def require_cluster_prerequisites() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    for module, what in (
        ("netplane.proxy.daemon", "netplane proxy run"),
        ("netplane.dns.server", "netplane dns serve"),
    ):
        if not component_available(module):
            pytest.skip(f"{what} is not installed yet")


def start_lab(tmp_path_factory, *args: str) -> Lab:
    require_cluster_prerequisites()
    lab = Lab(tmp_path_factory.mktemp("cluster") / "state", "t" + secrets.token_hex(3))
    try:
        lab.np("up", "--wait", "60", *args)
    except BaseException:
        lab.cleanup()
        raise
    return lab


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """One cluster for every test that can share it (each keeps to its own objects)."""
    lab = start_lab(tmp_path_factory)
    yield lab
    lab.cleanup()


@pytest.fixture
def make_lab(tmp_path_factory):
    """Start a cluster with extra `up` arguments; cleaned up even when the test fails."""
    labs = []

    def make(*args: str) -> Lab:
        labs.append(start_lab(tmp_path_factory, *args))
        return labs[-1]

    yield make
    for lab in labs:
        lab.cleanup()
