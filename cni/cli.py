"""`netplane cni ...`: install the plugin on a node, run the node agent, remove it all."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import click

from netplane.cni.client import DEFAULT_SOCKET

if TYPE_CHECKING:
    from netplane.cni.install import InstallPlan

log = logging.getLogger(__name__)

_bin_dir = click.option(
    "--bin-dir", default="/opt/cni/bin", show_default=True, type=click.Path(file_okay=False)
)
_conf_dir = click.option(
    "--conf-dir", default="/etc/cni/net.d", show_default=True, type=click.Path(file_okay=False)
)
_network = click.option(
    "--name", "network", default="netplane", show_default=True, help="Network name."
)
_bridge = click.option("--bridge", default="netplane0", show_default=True)
_subnet = click.option(
    "--subnet",
    "subnets",
    multiple=True,
    help="Pod CIDR of this node (repeat for dual stack). Default: the Node's spec.podCIDRs "
    "when --node is given, else 10.85.0.0/16.",
)
_node = click.option(
    "--node", default=None, help="Read the pod CIDRs from this Node object through the API."
)
_kubeconfig = click.option("--kubeconfig", type=click.Path(dir_okay=False), default=None)
_in_cluster = click.option(
    "--in-cluster", is_flag=True, help="Reach the API with the pod's service account."
)


def _plan(
    bin_dir: str,
    conf_dir: str,
    subnets: tuple[str, ...],
    network: str,
    bridge: str,
    node: str | None,
    kubeconfig: str | None,
    in_cluster: bool,
) -> InstallPlan:
    from netplane.cni.install import InstallPlan

    if not subnets and node:
        from netplane.cni.node import NodeError, pod_cidrs
        from netplane.kube.options import api_client

        try:
            subnets = pod_cidrs(api_client(kubeconfig=kubeconfig, in_cluster=in_cluster), node)
        except NodeError as exc:
            raise click.ClickException(str(exc)) from None
    if not subnets:
        return InstallPlan(bin_dir, conf_dir, network=network, bridge=bridge)
    return InstallPlan(bin_dir, conf_dir, tuple(subnets), network=network, bridge=bridge)


@click.group()
def cni() -> None:
    """netplane's bridge CNI plugin."""


@cni.command()
@_bin_dir
@_conf_dir
@_subnet
@_network
@_bridge
@_node
@_kubeconfig
@_in_cluster
@click.option(
    "--plugin-only",
    is_flag=True,
    help="Only the plugin: the agent writes the conflist once it serves (the DaemonSet).",
)
def install(
    bin_dir: str,
    conf_dir: str,
    subnets: tuple[str, ...],
    network: str,
    bridge: str,
    node: str | None,
    kubeconfig: str | None,
    in_cluster: bool,
    plugin_only: bool,
) -> None:
    """Put netplane-bridge (a static launcher that forwards to the agent) and a conflist on
    this node, like a CNI DaemonSet installer. The node needs nothing else installed."""
    from netplane.cni.install import install as do_install
    from netplane.cni.launcher import binary

    plan = _plan(bin_dir, conf_dir, subnets, network, bridge, node, kubeconfig, in_cluster)
    try:
        written = do_install(plan, binary(), with_conflist=not plugin_only)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--subnet") from None
    for path in written:
        click.echo(path)


@cni.command()
@_bin_dir
@_conf_dir
@_network
@_bridge
@click.option("--data-dir", default="", help="IPAM store (default /var/lib/cni/networks).")
def uninstall(bin_dir: str, conf_dir: str, network: str, bridge: str, data_dir: str) -> None:
    """Remove the conflist and plugin, then the bridge, pod veths, masquerade chains and IPAM
    store of the network (run in the node's network namespace)."""
    from netplane.cni.install import InstallPlan, clean_node, remove_files

    plan = InstallPlan(bin_dir, conf_dir, network=network, bridge=bridge)
    for what in remove_files(plan) + clean_node(plan, data_dir):
        click.echo(f"removed {what}")


@cni.command()
@_bridge
def drained(bridge: str) -> None:
    """Exit 0 when no pod is attached to the bridge any more (or there is no bridge)."""
    from netplane.cni import netops
    from netplane.cni.rtnl import Rtnl

    with Rtnl() as rtnl:
        link = rtnl.link(bridge)
        ports = netops.bridge_ports(rtnl, link.index) if link is not None else []
    if any(netops.is_our_veth(p) for p in ports):
        raise SystemExit(1)


@cni.command()
@click.option("--socket", "path", default=DEFAULT_SOCKET, show_default=True, type=click.Path())
@click.option(
    "--workers", default=0, type=click.IntRange(min=0), help="Processes (0: one per CPU)."
)
@click.option(
    "--conf-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Write the conflist here once serving (the runtime sees the network only then).",
)
@_bin_dir
@_subnet
@_network
@_bridge
@_node
@_kubeconfig
@_in_cluster
def agent(
    path: str,
    workers: int,
    conf_dir: str | None,
    bin_dir: str,
    subnets: tuple[str, ...],
    network: str,
    bridge: str,
    node: str | None,
    kubeconfig: str | None,
    in_cluster: bool,
) -> None:
    """Serve plugin requests on a unix socket (the node's launcher forwards to it)."""
    from netplane.cni.agent import run

    plan = None
    if conf_dir:
        plan = _plan(bin_dir, conf_dir, subnets, network, bridge, node, kubeconfig, in_cluster)

    def serving() -> None:
        if plan is not None:
            from netplane.cni.install import install_conflist

            log.info("wrote %s", install_conflist(plan))

    run(path, workers, on_serving=serving)
