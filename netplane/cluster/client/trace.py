"""`netplane trace --node NODE`: where a packet goes on one node of the emulated cluster.

The node's live rules are read inside its network namespace and traced as `netplane proxy
trace` does on a real node (same options, same report)."""

from __future__ import annotations

import click

from netplane.cluster.client import api
from netplane.cluster.client.cli import cluster_options
from netplane.cluster.statedir import StateDir, read_json
from netplane.proxy.trace import Packet, TraceError, packet_options, read_live, report


@click.command("trace")
@cluster_options
@click.option("--node", required=True, help="The node whose rules the packet meets.")
@packet_options
def trace(
    state: StateDir,
    cluster: str,
    node: str,
    packet: Packet,
    json_output: bool,
) -> None:
    """Where a packet goes on NODE and why: every rule it passes, each random branch with its
    probability, the NAT it gets and the endpoints it can reach (`--src 10.244.0.5 --dst
    10.96.0.10 --port 53 --proto udp`)."""
    from netplane.cluster.control.topology import Topology

    topo_json = read_json(state.path / "topology.json", None)
    if topo_json is None:
        raise api.NotRunning(f"no cluster at {state.path}: start one with `netplane up`")
    topo = Topology.from_json(topo_json)
    try:
        netns = topo.node_ns(topo.node(node).name)
    except KeyError as e:
        raise click.ClickException(str(e.args[0])) from None
    try:
        ruleset = read_live(netns, "ipv6" if ":" in packet.dst else "ipv4")
    except TraceError as e:
        raise click.ClickException(str(e)) from None
    report(ruleset, packet, json_output)
