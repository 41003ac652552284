"""The tables: their fixed objects, and how services are spread over them.

Table `kube-proxy` holds what kube-proxy's table holds (base chains, dispatch, filtering,
masquerading). The services' NAT objects (their chains, affinity sets and `service-ips` /
`service-nodeports` elements) are spread by a hash of the service's name over SHARDS tables:
`kube-proxy` itself and, when there are more than SHARD_SERVICES services, `kube-proxy-1`,
`kube-proxy-2`... each with its own `nat-prerouting` / `nat-output` base chains, `services`
chain, dispatch maps and `mark-for-masquerade`. Why: every transaction that adds a rule
with a jump or a verdict makes the kernel re-check every chain reachable from the table's
base chains (measured at 10k services in one table: 60-400 ms per endpoint change, the
same whatever the change), so a change costs in proportion to the services of its table.
A packet's first NAT lookup runs the shards' dispatch chains in turn until one translates
it (then NAT stops: the kernel makes a connection's binding once). With up to
SHARD_SERVICES services (and always with `shards=1`) the layout is kube-proxy's exactly.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from functools import lru_cache
from types import MappingProxyType
from typing import TYPE_CHECKING

from netplane.proxy.nft._model import (
    CT_NEW,
    DISPATCH_IP,
    DISPATCH_PORT,
    MASQUERADE,
    REJECT,
    RETURN,
    Addr,
    Chain,
    Element,
    FibLocal,
    Hook,
    InSet,
    Mark,
    Rule,
    Ruleset,
    SetDef,
    VMap,
    jump,
)
from netplane.proxy.render import ProxyConfig
from netplane.state import ServiceKey

if TYPE_CHECKING:
    from netplane.proxy.nft.render import ServiceObjects

TABLE = "kube-proxy"

# shared containers
CLUSTER_IPS = "cluster-ips"
SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
FIREWALL_IPS = "firewall-ips"
SHARED_SETS = (
    CLUSTER_IPS,
    NO_ENDPOINT_SERVICES,
    NO_ENDPOINT_NODEPORTS,
    FIREWALL_IPS,
    SERVICE_IPS,
    SERVICE_NODEPORTS,
)

# top-level chains
MARK_MASQ = "mark-for-masquerade"
MASQUERADING = "masquerading"
SERVICES = "services"
REJECT_CHAIN = "reject-chain"
FIREWALL_CHECK = "firewall-check"
SERVICE_ENDPOINTS_CHECK = "service-endpoints-check"
NODEPORT_ENDPOINTS_CHECK = "nodeport-endpoints-check"
CLUSTER_IPS_CHECK = "cluster-ips-check"

_DSTNAT, _FILTER, _SRCNAT = -100, 0, 100
BASE_CHAINS: tuple[tuple[str, Hook], ...] = (
    ("filter-prerouting-pre-dnat", Hook("filter", "prerouting", _DSTNAT - 10)),
    ("filter-output-pre-dnat", Hook("filter", "output", _DSTNAT - 10)),
    ("filter-input", Hook("filter", "input", _FILTER)),
    ("filter-forward", Hook("filter", "forward", _FILTER)),
    ("filter-output", Hook("filter", "output", _FILTER)),
    ("nat-prerouting", Hook("nat", "prerouting", _DSTNAT)),
    ("nat-output", Hook("nat", "output", _DSTNAT)),
    ("nat-postrouting", Hook("nat", "postrouting", _SRCNAT)),
)
# (destination, base chain, only new connections): kube-proxy's jumps, in its order
_JUMPS = (
    (NODEPORT_ENDPOINTS_CHECK, "filter-input", True),
    (SERVICE_ENDPOINTS_CHECK, "filter-input", True),
    (SERVICE_ENDPOINTS_CHECK, "filter-forward", True),
    (SERVICE_ENDPOINTS_CHECK, "filter-output", True),
    (FIREWALL_CHECK, "filter-prerouting-pre-dnat", True),
    (FIREWALL_CHECK, "filter-output-pre-dnat", True),
    (SERVICES, "nat-output", False),
    (SERVICES, "nat-prerouting", False),
    (MASQUERADING, "nat-postrouting", False),
    (CLUSTER_IPS_CHECK, "filter-forward", True),
    (CLUSTER_IPS_CHECK, "filter-output", True),
)

SHARD_SETS = (SERVICE_IPS, SERVICE_NODEPORTS)  # in every shard table
SHARD_SERVICES = 1000  # services per table before the services are spread over more
MAX_SHARDS = 64


def family(config: ProxyConfig) -> str:
    return "ip6" if config.family == "ipv6" else "ip"


def addr_type(config: ProxyConfig) -> str:
    return "ipv6_addr" if config.family == "ipv6" else "ipv4_addr"


def _loopback(config: ProxyConfig) -> str:
    return "::1" if config.family == "ipv6" else "127.0.0.0/8"


# ---- base ----------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def base(config: ProxyConfig) -> Ruleset:
    """The table's fixed part: base chains, jumps, dispatch chains, empty maps and sets."""
    mark = 1 << config.masquerade_bit
    addr = addr_type(config)
    not_loopback = Addr("daddr", _loopback(config), negate=True)
    chains: dict[str, Chain] = {}
    jumps: dict[str, list[Rule]] = {name: [] for name, _ in BASE_CHAINS}
    for dest, source, new_only in _JUMPS:
        stmts = (CT_NEW, jump(dest)) if new_only else (jump(dest),)
        jumps[source].append(Rule(stmts))
    for name, hook in BASE_CHAINS:
        chains[name] = Chain(name, tuple(jumps[name]), hook)

    def add(name: str, *rules: Rule, comment: str | None = None) -> None:
        chains[name] = Chain(name, rules, None, comment)

    add(NODEPORT_ENDPOINTS_CHECK, Rule((not_loopback, VMap(DISPATCH_PORT, NO_ENDPOINT_NODEPORTS))))
    add(SERVICE_ENDPOINTS_CHECK, Rule((VMap(DISPATCH_IP, NO_ENDPOINT_SERVICES),)))
    add(FIREWALL_CHECK, Rule((VMap(DISPATCH_IP, FIREWALL_IPS),)))
    add(
        SERVICES,
        Rule((VMap(DISPATCH_IP, SERVICE_IPS),)),
        Rule((FibLocal("daddr"), not_loopback, VMap(DISPATCH_PORT, SERVICE_NODEPORTS))),
    )
    add(
        MASQUERADING,
        Rule((Mark("unset", mark), RETURN)),
        Rule((Mark("xor", mark),)),
        Rule((MASQUERADE,)),
    )
    add(
        CLUSTER_IPS_CHECK,
        Rule(
            (InSet("daddr", CLUSTER_IPS), REJECT),
            "Reject traffic to invalid ports of ClusterIPs",
        ),
    )
    add(MARK_MASQ, Rule((Mark("or", mark),)))
    add(
        REJECT_CHAIN,
        Rule((REJECT,)),
        comment="helper for @no-endpoint-services / @no-endpoint-nodeports",
    )
    ip_proto_port = f"{addr} . inet_proto . inet_service"
    sets = {
        s.name: s
        for s in (
            SetDef(CLUSTER_IPS, addr, comment="Active ClusterIPs"),
            SetDef(
                NO_ENDPOINT_SERVICES,
                ip_proto_port,
                map=True,
                comment="vmap to drop or reject packets to services with no endpoints",
            ),
            SetDef(
                NO_ENDPOINT_NODEPORTS,
                "inet_proto . inet_service",
                map=True,
                comment="vmap to drop or reject packets to service nodeports with no endpoints",
            ),
            SetDef(
                FIREWALL_IPS,
                ip_proto_port,
                map=True,
                comment="destinations that are subject to LoadBalancerSourceRanges",
            ),
            SetDef(
                SERVICE_IPS,
                ip_proto_port,
                map=True,
                comment="ClusterIP, ExternalIP and LoadBalancer IP traffic",
            ),
            SetDef(
                SERVICE_NODEPORTS, "inet_proto . inet_service", map=True, comment="NodePort traffic"
            ),
        )
    }
    return Ruleset(
        family(config),
        TABLE,
        "rules for kube-proxy",
        MappingProxyType(chains),
        MappingProxyType(sets),
        MappingProxyType({name: MappingProxyType({}) for name in SHARED_SETS}),
    )


def shard_base(config: ProxyConfig, shard: int) -> Ruleset:
    """The fixed objects of shard table SHARD (> 0): NAT dispatch for its services."""
    if shard == 0:
        return base(config)
    return _shard_base(config, shard)


@lru_cache(maxsize=256)
def _shard_base(config: ProxyConfig, shard: int) -> Ruleset:
    whole = base(config)
    names = ("nat-prerouting", "nat-output", SERVICES, MARK_MASQ)
    return Ruleset(
        whole.family,
        table_name(shard),
        f"rules for kube-proxy: services shard {shard}",
        MappingProxyType({n: whole.chains[n] for n in names}),
        MappingProxyType({n: whole.sets[n] for n in SHARD_SETS}),
        MappingProxyType({n: MappingProxyType({}) for n in SHARD_SETS}),
    )


def table_name(shard: int) -> str:
    return TABLE if shard == 0 else f"{TABLE}-{shard}"


def shard_index(table: str) -> int | None:
    """The shard a table of ours holds (None: not one of ours)."""
    if table == TABLE:
        return 0
    prefix, _, number = table.rpartition("-")
    if prefix == TABLE and number.isdigit() and number == str(int(number)):
        return int(number)
    return None


def shard_of(key: ServiceKey, shards: int) -> int:
    """Where service KEY's NAT objects live: a stable hash of its name (the same in every
    process, so a restarted proxy finds them where it left them)."""
    if shards == 1:
        return 0
    return zlib.crc32(f"{key[0]}/{key[1]}".encode()) % shards


def shard_count(services: int, current: int | None = None) -> int:
    """Tables for SERVICES services: a power of two, ~SHARD_SERVICES services each. The
    CURRENT count is kept until it is too small or four times too big (a change of count
    moves services between tables: better not at every service added)."""
    wanted = 1 << max(0, math.ceil(math.log2(max(1, math.ceil(services / SHARD_SERVICES)))))
    wanted = min(wanted, MAX_SHARDS)
    if current is None or wanted > current or wanted * 4 <= current:
        return wanted
    return current


def chain_table(chain: str, shard_table: str) -> str:
    """The table of a service's chain: firewall chains are filter objects (table 0)."""
    return TABLE if chain.startswith("firewall-") else shard_table


def element_table(set_name: str, shard_table: str) -> str:
    return shard_table if set_name in SHARD_SETS else TABLE


# ---- assemble ------------------------------------------------------------------------------


def assemble(
    config: ProxyConfig, services: Iterable[ServiceObjects], shards: int = 1
) -> tuple[Ruleset, ...]:
    """Every table, complete: table i holds shard i. Where two services claim the same
    element key (a duplicate IP and port), the first in (namespace, name) order wins, as
    the first rule does in the iptables backend."""
    parts = [shard_base(config, i) for i in range(shards)]
    chains = [dict(p.chains) for p in parts]
    sets = [dict(p.sets) for p in parts]
    elements: list[dict[str, dict[tuple[str, ...], Element]]] = [
        {name: {} for name in p.elements} for p in parts
    ]
    claimed: dict[tuple[str, tuple[str, ...]], bool] = {}
    for objects in sorted(services, key=_order):
        shard = shard_of(objects.key, shards) if objects.key is not None else 0
        for name, rules in objects.chains.items():
            chains[0 if name.startswith("firewall-") else shard][name] = Chain(name, rules)
        sets[shard].update(objects.sets)
        for container, els in objects.elements.items():
            bucket = elements[shard if container in SHARD_SETS else 0][container]
            for e in els:
                if claimed.setdefault((container, e.key), True) and e.key not in bucket:
                    bucket[e.key] = e
                claimed[(container, e.key)] = False
    return tuple(
        Ruleset(p.family, p.table, p.comment, chains[i], sets[i], elements[i])
        for i, p in enumerate(parts)
    )


def _order(objects: ServiceObjects) -> tuple[int, ServiceKey]:
    return (0, objects.key) if objects.key is not None else (1, ("", ""))
