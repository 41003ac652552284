"""`netplane cni ...`: install the plugin on a node, run the node agent."""

from __future__ import annotations

import click

from netplane.cni.client import DEFAULT_SOCKET


@click.group()
def cni() -> None:
    """netplane's bridge CNI plugin."""


@cni.command()
@click.option("--bin-dir", default="/opt/cni/bin", show_default=True, type=click.Path())
@click.option("--conf-dir", default="/etc/cni/net.d", show_default=True, type=click.Path())
@click.option("--subnet", default="10.85.0.0/16", show_default=True, help="Pod CIDR of this node.")
@click.option("--name", "network", default="netplane", show_default=True, help="Network name.")
@click.option("--bridge", default="netplane0", show_default=True)
def install(bin_dir: str, conf_dir: str, subnet: str, network: str, bridge: str) -> None:
    """Write netplane-bridge, netplane-ipam and a conflist, like a CNI DaemonSet installer."""
    from netplane.cni.install import InstallPlan
    from netplane.cni.install import install as do_install

    plan = InstallPlan(bin_dir, conf_dir, subnet, network=network, bridge=bridge)
    try:
        written = do_install(plan)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--subnet") from None
    for path in written:
        click.echo(path)


@cni.command()
@click.option("--socket", "path", default=DEFAULT_SOCKET, show_default=True, type=click.Path())
@click.option(
    "--workers", default=0, type=click.IntRange(min=0), help="Processes (0: one per CPU)."
)
def agent(path: str, workers: int) -> None:
    """Serve plugin requests on a unix socket (the binary falls back in-process without it)."""
    from netplane.cni.agent import run

    run(path, workers)
