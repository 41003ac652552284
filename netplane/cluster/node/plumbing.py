"""Network namespaces for the underlay, the nodes and the laptop (side effects).

Every address lives inside namespaces named `<cluster id>-...`; veth pairs are created
directly inside their namespaces (`ip link add ... netns`), so the root namespace's links,
addresses and routes are never touched.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from netplane import netns
from netplane.cluster.control.topology import Topology

NETNS_DIR = Path(netns.NETNS_DIR)
ETC_NETNS = Path("/etc/netns")


class PlumbingError(RuntimeError):
    pass


def _batch(ns: str | None, commands: list[str]) -> None:
    """COMMANDS through one `ip -batch` (in NS): one process instead of one per command,
    which on a loaded machine was most of `up`'s network step."""
    argv = ["ip", *(["-n", ns] if ns else []), "-batch", "-"]
    netns.run(None, argv, input="".join(c + "\n" for c in commands))


def build(topo: Topology) -> None:
    """Underlay bridge, one namespace per node with its InternalIP and routes to the other
    nodes' pod subnets (what flannel's host-gw backend installs), and the laptop. Runs on a
    clean slate: `up` removes whatever a crashed cluster left first."""
    under, prefix, router = topo.underlay_ns, topo.prefix_len, topo.router_ip
    hosts = [
        (topo.node_ns(n.name), f"n{n.index}", n.ip,
         [f"route add {o.pod_cidr} via {o.ip}" for o in topo.nodes if o.name != n.name])
        for n in topo.nodes
    ] + [(topo.laptop_ns, "laptop", topo.laptop_ip, [])]  # fmt: skip
    try:
        _batch(None, [f"netns add {ns}" for ns in (under, *(h[0] for h in hosts))])
        # The home router: every host's default gateway, forwarding nowhere (ip_forward
        # stays 0 in its namespace), so service IPs have a route and strangers fail fast.
        _batch(under, ["link set lo up", "link add br0 type bridge", "link set br0 up",
                       f"addr add {router}/{prefix} dev br0 nodad"])  # fmt: skip
        for ns, peer, address, routes in hosts:  # eth0 on the underlay, its peer in `under`
            _batch(ns, ["link set lo up",
                        f"link add eth0 type veth peer name {peer} netns {under}",
                        "link set eth0 up", f"addr add {address}/{prefix} dev eth0 nodad",
                        f"route add default via {router}", *routes])  # fmt: skip
        peers = [h[1] for h in hosts]
        _batch(under, [f"link set {p} {op}" for p in peers for op in ("master br0", "up")])
        for node in topo.nodes:
            with netns.entered(topo.node_ns(node.name)):  # /proc/sys/net is per namespace
                Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
    except netns.NetnsError as e:
        raise PlumbingError(str(e)) from None


def set_lb_route(topo: Topology, address: str, node_ip: str | None) -> None:
    """Where the laptop sends a LoadBalancer address: to the node that announces it (as
    MetalLB's layer-2 mode makes one node answer ARP for it); None removes the route."""
    if node_ip is None:
        with contextlib.suppress(netns.NetnsError):
            netns.ip("-n", topo.laptop_ns, "route", "del", f"{address}/32")
    else:
        netns.ip("-n", topo.laptop_ns, "route", "replace", f"{address}/32", "via", node_ip)


def teardown(cluster_id: str) -> list[str]:
    """Delete every namespace (and so every veth and bridge in it) and /etc/netns entry of
    the cluster; returns what was removed."""
    removed = []
    for name in netns.names(f"{cluster_id}-"):
        if netns.delete(name):
            removed.append(name)
    if ETC_NETNS.is_dir():
        for d in ETC_NETNS.glob(f"{cluster_id}-*"):
            for f in d.iterdir():
                f.unlink()
            d.rmdir()
        marker = _etc_netns_marker(cluster_id)
        if marker.exists():  # we made /etc/netns: remove it again, unless others use it now
            marker.unlink()
            with contextlib.suppress(OSError):
                ETC_NETNS.rmdir()
    return removed


def ensure_etc_netns(cluster_id: str) -> None:
    """/etc/netns, where pods' resolv.conf go; a marker records that this cluster made it,
    so that `down` removes it only then and leaves the host as it found it."""
    if not ETC_NETNS.is_dir():
        ETC_NETNS.mkdir(parents=True, exist_ok=True)
        _etc_netns_marker(cluster_id).touch()


def _etc_netns_marker(cluster_id: str) -> Path:
    return ETC_NETNS / f".made-by-netplane-{cluster_id}"
