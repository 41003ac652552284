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


def _attach(topo: Topology, ns: str, peer: str, address: str) -> None:
    """A host on the underlay: eth0 in NS, its peer enslaved to the underlay bridge, and
    the router as its default gateway."""
    netns.veth(ns, "eth0", topo.underlay_ns, peer)
    netns.ip("-n", topo.underlay_ns, "link", "set", peer, "master", "br0")
    netns.address(ns, "eth0", f"{address}/{topo.prefix_len}")
    netns.route(ns, "default", topo.router_ip)


def build(topo: Topology) -> None:
    """Underlay bridge, one namespace per node with its InternalIP and routes to the other
    nodes' pod subnets (what flannel's host-gw backend installs), and the laptop. Runs on a
    clean slate: `up` removes whatever a crashed cluster left first."""
    try:
        netns.create(topo.underlay_ns)
        netns.bridge(topo.underlay_ns, "br0")
        # The home router: every host's default gateway, forwarding nowhere (ip_forward
        # stays 0 in its namespace), so service IPs have a route and strangers fail fast.
        netns.address(topo.underlay_ns, "br0", f"{topo.router_ip}/{topo.prefix_len}")
        for node in topo.nodes:
            ns = netns.create(topo.node_ns(node.name))
            _attach(topo, ns, f"n{node.index}", node.ip)
            netns.sysctl(ns, "net.ipv4.ip_forward", 1)
            for other in topo.nodes:
                if other.name != node.name:
                    netns.route(ns, other.pod_cidr, other.ip)
        netns.create(topo.laptop_ns)
        _attach(topo, topo.laptop_ns, "laptop", topo.laptop_ip)
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
