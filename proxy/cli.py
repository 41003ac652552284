"""`netplane proxy ...`: the kube-proxy replacement's commands (interfaces fixed by issue 2)."""

from __future__ import annotations

import sys
from typing import Any, TextIO

import click

from netplane.kube import source_options
from netplane.proxy.trace import Packet, packet_options

_FAMILY = click.Choice(["ipv4", "ipv6"])
_BACKEND = click.Choice(["iptables", "nftables"])


@click.group()
def proxy() -> None:
    """Service proxy: Services + EndpointSlices -> iptables rules or nftables objects."""


@proxy.command()
@click.option(
    "--manifests",
    "manifests",
    required=True,
    type=click.Path(exists=True),
    help="Manifest file or directory (YAML/JSON).",
)
@click.option("--node", required=True, help="This node's name (matches EndpointSlice nodeName).")
@click.option(
    "--cluster-cidr",
    default=None,
    help="Pod CIDR: traffic from it is pod traffic (not masqueraded).",
)
@click.option("--masquerade-all", is_flag=True, help="Masquerade all traffic to services.")
@click.option("--family", type=_FAMILY, default="ipv4", show_default=True)
@click.option("--backend", type=_BACKEND, default="iptables", show_default=True)
def render(
    manifests: str,
    node: str,
    cluster_cidr: str | None,
    masquerade_all: bool,
    family: str,
    backend: str,
) -> None:
    """Print the iptables-restore input (or, --backend nftables, the `nft -f` input) for
    NODE (pure: no root, no kernel state)."""
    from netplane.model import load_path
    from netplane.proxy.render import ProxyConfig, render_full
    from netplane.state import ClusterState

    result = load_path(manifests)
    for e in result.errors:
        click.echo(f"warning: {e}", err=True)
    state = ClusterState()
    state.apply(result.objects)
    config = ProxyConfig(
        node_name=node, family=family, cluster_cidr=cluster_cidr, masquerade_all=masquerade_all
    )
    if backend == "nftables":
        from netplane.proxy.nft._text import format_tables
        from netplane.proxy.nft.render import render_full as render_nft

        sys.stdout.write(format_tables(render_nft(state.snapshot(), config)))
        return
    sys.stdout.write(render_full(state.snapshot(), config))


@proxy.command()
@click.option(
    "--manifests",
    "manifests",
    default=None,
    type=click.Path(),
    help="Manifest file or directory, followed for changes.",
)
@source_options
@click.option("--node", envvar="NODE_NAME", required=True, help="This node's name [env NODE_NAME].")
@click.option("--cluster-cidr", default=None)
@click.option("--masquerade-all", is_flag=True)
@click.option("--family", type=_FAMILY, default="ipv4", show_default=True)
@click.option(
    "--backend",
    type=_BACKEND,
    default="iptables",
    show_default=True,
    help="iptables (iptables-restore) or nftables (kube-proxy's nftables layout, over "
    "netlink); the other one's rules are removed after the first sync.",
)
@click.option(
    "--iptables-variant",
    type=click.Choice(["auto", "legacy", "nft"]),
    default="auto",
    show_default=True,
)
@click.option("--metrics-addr", default="127.0.0.1:10249", show_default=True)
@click.option("--healthz-addr", default="0.0.0.0:10256", show_default=True)
@click.option("--min-sync-period", type=float, default=1.0, show_default=True)
@click.option(
    "--sync-period",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds between periodic syncs (partial: they write only what changed).",
)
@click.option(
    "--full-sync-period",
    type=float,
    default=3600.0,
    show_default=True,
    help="Seconds between full rewrites of every chain (0: only at start and after failures).",
)
@click.option(
    "--verify-period",
    type=float,
    default=0.0,
    show_default=True,
    help="Seconds between read-backs of the rules (drift is repaired); 0: 100 times the "
    "CPU time of the last one (30 s - 10 min). Foreign writes trigger one within a second.",
)
def run(**options: Any) -> None:
    """Run the proxy daemon: follow the manifests and keep the kernel's rules in sync.

    SIGTERM stops it and leaves the rules in place, so a restart does not disturb traffic.
    """
    import logging
    import os

    from netplane.proxy.daemon import run_daemon

    code = run_daemon(**options)
    # Everything is closed; skip the interpreter's teardown, which at 10k services spends
    # most of a second freeing objects a process about to end does not need to free.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@proxy.command()
@click.option(
    "--iptables-variant",
    type=click.Choice(["auto", "legacy", "nft"]),
    default="auto",
    show_default=True,
)
def cleanup(iptables_variant: str) -> None:
    """Remove netplane's (and kube-proxy's) chains and the rules jumping to them, and the
    nftables backend's `kube-proxy` tables.

    Both families; kubelet's KUBE-FIREWALL / KUBE-KUBELET-CANARY and other programs'
    chains and tables stay.
    """
    from netplane.proxy.nft.sync import cleanup as nft_cleanup
    from netplane.proxy.sync import cleanup as do_cleanup

    do_cleanup(iptables_variant)
    nft_cleanup()


@proxy.command("trace")
@packet_options
@click.option("--netns", default=None, help="Read the live rules of this network namespace.")
@click.option(
    "--rules-file",
    type=click.File("r"),
    default=None,
    help="Trace a saved ruleset instead (iptables-save or `nft list ruleset` output; - for stdin).",
)
@click.option(
    "--local-ip",
    "local_ips",
    multiple=True,
    help="With --rules-file: an address of the node (repeatable; what addrtype LOCAL is).",
)
@click.option(
    "--iptables-variant",
    type=click.Choice(["auto", "legacy", "nft"]),
    default="auto",
    show_default=True,
)
@click.option(
    "--backend",
    type=click.Choice(["auto", "iptables", "nftables"]),
    default="auto",
    show_default=True,
    help="Whose live rules to read (auto: the nftables backend's tables when there).",
)
def trace_(
    packet: Packet,
    json_output: bool,
    netns: str | None,
    rules_file: TextIO | None,
    local_ips: tuple[str, ...],
    iptables_variant: str,
    backend: str,
) -> None:
    """Where a packet goes on this node and why: every rule it passes, each random branch
    with its probability, the NAT it gets and the endpoints it can reach (reads only)."""
    from netplane.proxy import trace as t

    family = "ipv6" if ":" in packet.dst else "ipv4"
    try:
        if rules_file is not None:
            ruleset = t.read_file(rules_file.name, rules_file.read(), local_ips)
        else:
            ruleset = t.read_live(netns, family, iptables_variant, backend)
    except t.TraceError as e:
        raise click.ClickException(str(e)) from None
    t.report(ruleset, packet, json_output)
