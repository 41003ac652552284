"""LoadBalancer addresses on the laptop's side: one route per address to the node that
announces it (as MetalLB's layer-2 mode makes one node answer ARP for it)."""

from __future__ import annotations

import zlib

from netplane.cluster.control.topology import Topology
from netplane.cluster.daemon.store import ObjectStore
from netplane.cluster.node import plumbing


class LbRoutes:
    def __init__(self, store: ObjectStore, topo: Topology) -> None:
        self.store, self.topo = store, topo
        self.routes: dict[str, str] = {}

    def wanted(self) -> dict[str, str]:
        out = {}
        with self.store.lock:
            for key, body in self.store.items("Service"):
                if body["spec"].get("type") != "LoadBalancer":
                    continue
                node = self.topo.nodes[zlib.crc32(repr(key).encode()) % len(self.topo.nodes)]
                for ing in body.get("status", {}).get("loadBalancer", {}).get("ingress", []):
                    out[ing["ip"]] = node.ip
        return out

    def sync(self) -> None:
        wanted = self.wanted()
        for address in [a for a in self.routes if a not in wanted]:
            plumbing.set_lb_route(self.topo, address, None)
            del self.routes[address]
        for address, node_ip in wanted.items():
            if self.routes.get(address) != node_ip:
                plumbing.set_lb_route(self.topo, address, node_ip)
                self.routes[address] = node_ip
