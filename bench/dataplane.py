"""`netplane bench dataplane`: first-packet latency versus the number of services.

Three namespaces: a client pod, the node (netplane's rules, forwarding) and a server pod,
joined by veth pairs. N services all lead to the server pod; the client times TCP connects
(SYN -> SYN-ACK, i.e. the first packet through the node's NAT rules) to the first and to
the last service in dispatch order, straight to the pod IP with the rules in place
("direct": every new connection goes through the dispatch, service or not), and to the pod
IP before any rule exists ("no-rules": the floor of this topology). Dispatch order: iptables
tests KUBE-SERVICES rule by rule; the nftables backend looks a service up in its table's
map, and tables are tried in turn, so "first" is a service of table `kube-proxy` and
"last" one of the last table.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from netplane.bench import _workload as w
from netplane.bench._netns import Netns, kernel_check, netns, private_xtables_lock
from netplane.bench._probe import Listener
from netplane.bench._results import Label, Series, Skipped
from netplane.bench._runner import progress

CLIENT, SERVER = "10.200.1.2", "10.200.2.2"
NODE_CLIENT_SIDE, NODE_SERVER_SIDE = "10.200.1.1", "10.200.2.1"
POD_CIDR = "10.200.0.0/16"
QUICK_SCALES = (10, 1000)
FULL_SCALES = (10, 100, 1000, 10000)


@dataclass(frozen=True, slots=True)
class DataplanePlan:
    quick: bool
    scales: tuple[int, ...]
    backends: tuple[str, ...]
    repeat: int

    @classmethod
    def make(
        cls,
        quick: bool,
        scales: Iterable[int] = (),
        backends: Iterable[str] = (),
        repeat: int | None = None,
    ) -> DataplanePlan:
        repeat = repeat or (200 if quick else 2000)
        scales = tuple(scales)
        if repeat < 1 or any(s < 1 for s in scales):
            raise ValueError("counts must be positive")
        return cls(
            quick,
            tuple(sorted(set(scales))) or (QUICK_SCALES if quick else FULL_SCALES),
            tuple(dict.fromkeys(backends)) or ("legacy", "nft", "nftables"),
            min(repeat, 20_000),
        )


def _wire(client: Netns, node: Netns, server: Netns) -> None:
    """client pod -- node -- server pod, each pod routed through the node."""
    for pod, pod_ip, node_ip, near, far in (
        (client, CLIENT, NODE_CLIENT_SIDE, "npc", "eth0"),
        (server, SERVER, NODE_SERVER_SIDE, "nps", "eth0"),
    ):
        node.exec("ip", "link", "add", near, "type", "veth", "peer", "name", far,
                  "netns", pod.name)  # fmt: skip
        node.exec("ip", "addr", "add", f"{node_ip}/24", "dev", near)
        node.exec("ip", "link", "set", near, "up")
        pod.exec("ip", "addr", "add", f"{pod_ip}/24", "dev", far)
        pod.exec("ip", "link", "set", far, "up")
        pod.exec("ip", "route", "add", "default", "via", node_ip)
    node.exec("sysctl", "-qw", "net.ipv4.ip_forward=1")


def _connect_times(targets: list[str], repeat: int) -> dict[str, list[float]]:
    """Connect times per target, interleaved so that drift hits every target alike."""
    times: dict[str, list[float]] = {t: [] for t in targets}
    linger = struct.pack("ii", 1, 0)
    for _ in range(repeat):
        for target in targets:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(2)
            t0 = time.perf_counter()
            s.connect((target, w.SERVICE_PORT if target != SERVER else w.TARGET_PORT))
            times[target].append(time.perf_counter() - t0)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            s.close()
    return times


def dispatch_order(kube_services: tuple[str, ...]) -> list[str]:
    """Service IPs in the order KUBE-SERVICES tests them."""
    return [m.group(1) for line in kube_services if (m := re.search(r"-d (\S+)/32 ", line))]


def nft_dispatch_order(services: int, shards: int) -> list[str]:
    """A service of the first table the nftables backend's NAT tries (the lowest index) and
    one of the last (the highest index: another service when there is one table)."""
    from netplane.proxy.nft._tables import shard_of

    first = last = None
    for i in range(services):
        shard = shard_of((w.NAMESPACE, w.service_name(i)), shards)
        if shard == 0 and first is None:
            first = w.cluster_ip(i)
        if shard == shards - 1:
            last = w.cluster_ip(i)
    assert first is not None and last is not None
    return [first, last]


def _one(variant: str, services: int, repeat: int) -> list[Series]:
    from netplane.proxy._iptables import Iptables
    from netplane.proxy.nft._netlink import Netlink
    from netplane.proxy.nft.sync import NftSyncer
    from netplane.proxy.render import ProxyConfig
    from netplane.proxy.sync import Syncer
    from netplane.state import ClusterState

    state = ClusterState()
    docs = [d for i in range(services) for d in w.service_docs(i, 1, ip_of=lambda i, j: SERVER)]
    state.apply(w.objects(docs))
    with contextlib.ExitStack() as stack:
        client, node, server = (stack.enter_context(netns()) for _ in range(3))
        _wire(client, node, server)
        listener = Listener(server)
        stack.callback(listener.close)
        config = ProxyConfig(node_name="bench-node", cluster_cidr=POD_CIDR)
        floor = client.call(_connect_times, [SERVER], repeat)[SERVER]  # before any rule
        if variant == "nftables":
            nft = NftSyncer(config, Netlink(node.name))
            nft.sync(state.snapshot(), None, full=True)
            order = nft_dispatch_order(services, nft.shards)
        else:
            syncer = Syncer(config, Iptables(variant, "ipv4", netns=node.name))
            syncer.sync(state.snapshot(), None, full=True)
            applied = syncer.applied
            assert applied is not None  # the sync succeeded
            order = dispatch_order(applied["nat"]["KUBE-SERVICES"])
        targets = {"first": order[0], "last": order[-1], "direct": SERVER}
        times = client.call(_connect_times, list(targets.values()), repeat)
    labels: dict[str, Label] = {"backend": variant, "services": services}
    return [
        Series("first_packet", "s", {**labels, "target": "no-rules"}, tuple(floor)),
        *(
            Series("first_packet", "s", {**labels, "target": name}, tuple(times[ip]))
            for name, ip in targets.items()
        ),
    ]


def run(
    plan: DataplanePlan, checkpoint: Callable | None = None
) -> tuple[dict[str, Any], list[Series], list[Skipped]]:
    """Every point of PLAN; CHECKPOINT gets the figures so far after each point."""
    with private_xtables_lock():
        return _run(plan, checkpoint or (lambda *_: None))


def _run(
    plan: DataplanePlan, checkpoint: Callable
) -> tuple[dict[str, Any], list[Series], list[Skipped]]:
    problems = kernel_check(plan.backends)
    skipped = [Skipped(f"backend {v}", why) for v, why in problems.items()]
    usable = [v for v in plan.backends if v not in problems]
    series: list[Series] = []
    params = {
        "quick": plan.quick,
        "scales": list(plan.scales),
        "backends": list(plan.backends),
        "repeat": plan.repeat,
        "path": "client pod -> node (netplane rules, forwarding) -> server pod, veth pairs",
    }
    for services, variant in progress(
        [(s, v) for s in plan.scales for v in usable], "bench dataplane"
    ):
        series += _one(variant, services, plan.repeat)
        checkpoint(params, series, skipped)
    _summary(series)
    return params, series, skipped


def _summary(series: list[Series]) -> None:
    import statistics

    from netplane.bench.compare import format_value

    for s in series:
        lab = s.labels
        print(
            f"{lab['backend']:7} {lab['services']:>6} services  {lab['target']:6} "
            f"median {format_value(statistics.median(s.values), 's')}  (n={len(s.values)})"
        )
