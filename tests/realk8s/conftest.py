"""One real control plane (etcd + kube-apiserver, netplane.testing.controlplane) per session.

Tests that stop the API server start it again before they end; tests create their objects
in a namespace of their own (`k8s_namespace`), so they never see each other's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from netplane import netns
from netplane.netns import unique_name
from netplane.testing import anchors
from netplane.testing.controlplane import ControlPlane, Node
from netplane.testing.lab import Lab


@pytest.fixture(scope="session")
def controlplane() -> Iterator[ControlPlane]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    missing = [n for n in ("etcd", "kube-apiserver", "kubectl") if not anchors.is_built(n)]
    if missing:  # not a skip: CI builds them first (bootstrap.sh test), so this is a failure
        pytest.fail(
            f"anchors not built: {', '.join(missing)}: run `netplane anchors build` "
            f"(cache {anchors.cache_dir()})",
            pytrace=False,
        )
    with ControlPlane() as cp:
        yield cp


@pytest.fixture
def k8s_namespace(controlplane: ControlPlane) -> Iterator[str]:
    """A Kubernetes namespace for one test, deleted afterwards (without waiting)."""
    name = unique_name("t")
    controlplane.ensure_namespace(name)
    yield name
    if controlplane.apiserver_running:
        controlplane.api.delete(f"/api/v1/namespaces/{name}", ok=(404,))


RBAC = Path(__file__).resolve().parents[2] / "deploy" / "rbac.yaml"
NETPLANE = str(Path(sys.executable).with_name("netplane"))
POD_NET = "10.244.0.0/16"
DNS_ADDR = "127.0.0.1"


@pytest.fixture(scope="session")
def shipped_rbac(controlplane: ControlPlane) -> ControlPlane:
    """deploy/rbac.yaml applied: the ServiceAccounts and ClusterRoles netplane ships."""
    controlplane.apply_manifest(RBAC)
    return controlplane


class Daemon:
    """A netplane process inside a namespace, its output in a log file; stopped by the fixture."""

    def __init__(self, ns: str, argv: list[str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = netns.popen(ns, argv, stdout=out, stderr=subprocess.STDOUT, cwd="/")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"exited {self.proc.returncode}:\n{self.text()[-3000:]}")

    def stop(self) -> None:
        netns.stop(self.proc, timeout=30)


@dataclass
class NetplaneNode:
    """A node namespace with a pod bridge (Lab) on the control plane's hub, running
    `netplane proxy run` and `netplane dns serve` under the shipped ServiceAccounts."""

    cp: ControlPlane
    lab: Lab
    node: Node
    proxy: Daemon
    dns: Daemon

    def dig(self, name: str, rtype: str = "A") -> list[str]:
        out = netns.run(
            self.lab.node,
            ["dig", "+short", "+tries=1", "+time=2", f"@{DNS_ADDR}", name, rtype],
            check=False,
        )
        return [line for line in out.split() if line and not line.startswith(";")]

    def nat_rules(self) -> str:
        """The nat table without iptables-save's dated header and footer lines."""
        out = netns.run(self.lab.node, ["iptables-save", "-t", "nat"])
        return "\n".join(line for line in out.splitlines() if not line.startswith("#"))


@pytest.fixture
def netplane_node(shipped_rbac: ControlPlane, tmp_path: Path) -> Iterator[NetplaneNode]:
    cp = shipped_rbac
    with Lab(prefix="npk8sl") as lab:
        node = cp.add_node(unique_name("node"), namespace=lab.node)
        daemons: list[Daemon] = []
        try:
            proxy_kubeconfig = cp.token_kubeconfig("kube-system", "netplane-proxy")
            proxy = Daemon(
                lab.node,
                [NETPLANE, "-v", "proxy", "run", "--kubeconfig", str(proxy_kubeconfig),
                 "--node", node.name, "--cluster-cidr", POD_NET,
                 "--metrics-addr", "127.0.0.1:10249", "--healthz-addr", "127.0.0.1:10256"],
                tmp_path / "proxy.log",
            )  # fmt: skip
            daemons.append(proxy)
            dns_kubeconfig = cp.token_kubeconfig("kube-system", "netplane-dns")
            dns = Daemon(
                lab.node,
                [NETPLANE, "-v", "dns", "serve", "--kubeconfig", str(dns_kubeconfig),
                 "--listen", f"{DNS_ADDR}:53", "--workers", "1"],
                tmp_path / "dns.log",
            )  # fmt: skip
            daemons.append(dns)
            yield NetplaneNode(cp, lab, node, proxy, dns)
        finally:
            for d in daemons:
                d.stop()
            cp.remove_node(node.name)
