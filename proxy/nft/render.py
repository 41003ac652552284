"""Pure renderer: (cluster snapshot, node config) -> nftables objects, laid out as
kube-proxy's nftables mode lays them out.

- `render_service(snapshot, key, config) -> ServiceObjects`: one Service (all its ports, one
  family): the chains and affinity sets it owns, and its elements in the shared maps/sets
  (`service-ips`, `service-nodeports`, `no-endpoint-services`, `no-endpoint-nodeports`,
  `firewall-ips`, `cluster-ips`). Memoized by the identity of its inputs, like the iptables
  renderer: an unchanged service costs a dict lookup.
- `base(config) -> Ruleset`: the table, its base chains, the dispatch chains and the maps
  (empty), the same for every node.
- `assemble(config, services) -> Ruleset`: base + every service: what the kernel must hold.
- `render_full(snapshot, config) -> Ruleset`.

Same Service semantics as the iptables renderer (`proxy/render.py`; endpoint selection is
shared: `_endpoints`); the deliberate differences from kube-proxy are listed in
proxy/README.md ("nftables backend").
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType

from netplane.model import EndpointSlice, Service
from netplane.proxy._chains import service_port_name
from netplane.proxy._endpoints import categorize, port_endpoints
from netplane.proxy.nft import _names
from netplane.proxy.nft._model import (
    CT_NEW,
    DISPATCH_IP,
    DISPATCH_PORT,
    DROP,
    MASQUERADE,
    REJECT,
    RETURN,
    Addr,
    Chain,
    Dnat,
    Element,
    FibLocal,
    Hook,
    InSet,
    Mark,
    Numgen,
    Port,
    Proto,
    Rule,
    Ruleset,
    SetDef,
    Update,
    Verdict,
    VMap,
    goto,
    jump,
)
from netplane.proxy.render import ProxyConfig, paused_gc
from netplane.state import ServiceKey, Snapshot

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

_TO_MASQ = jump(MARK_MASQ)
_REJECT_VERDICT = goto(REJECT_CHAIN)


@dataclass(frozen=True, slots=True)
class ServiceObjects:
    """One Service's nftables objects for one family."""

    key: ServiceKey | None = None
    chains: Mapping[str, tuple[Rule, ...]] = field(default_factory=dict)  # owned by it
    sets: Mapping[str, SetDef] = field(default_factory=dict)  # its affinity sets
    # its elements in the shared maps and sets: {set name: elements}
    elements: Mapping[str, tuple[Element, ...]] = field(default_factory=dict)


EMPTY = ServiceObjects(None, MappingProxyType({}), MappingProxyType({}), MappingProxyType({}))


def family(config: ProxyConfig) -> str:
    return "ip6" if config.family == "ipv6" else "ip"


def _addr_type(config: ProxyConfig) -> str:
    return "ipv6_addr" if config.family == "ipv6" else "ipv4_addr"


def _loopback(config: ProxyConfig) -> str:
    return "::1" if config.family == "ipv6" else "127.0.0.0/8"


# ---- base ----------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def base(config: ProxyConfig) -> Ruleset:
    """The table's fixed part: base chains, jumps, dispatch chains, empty maps and sets."""
    mark = 1 << config.masquerade_bit
    addr = _addr_type(config)
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


# ---- render_service ------------------------------------------------------------------------

_memo: dict[tuple[ServiceKey, ProxyConfig], tuple[object, object, object, ServiceObjects]] = {}


def _node_ips(snapshot: Snapshot, config: ProxyConfig) -> tuple[str, ...]:
    if config.node_ips:
        return config.node_ips
    node = snapshot.nodes.get(config.node_name)
    return node.internal_ips if node is not None else ()


def render_service(snapshot: Snapshot, key: ServiceKey, config: ProxyConfig) -> ServiceObjects:
    svc = snapshot.services.get(key)
    if svc is None:
        return EMPTY
    slices = snapshot.slices.get(key, ())
    node_ips = _node_ips(snapshot, config)
    memo_key = (key, config)
    hit = _memo.get(memo_key)
    if hit is not None and hit[0] is svc and hit[1] is slices and hit[2] == node_ips:
        return hit[3]
    objects = _render(svc, slices, config, node_ips)
    if len(_memo) > 4 * len(snapshot.services) + 1024:
        _memo.clear()
    _memo[memo_key] = (svc, slices, node_ips, objects)
    return objects


@lru_cache(maxsize=1 << 17)
def _endpoint(
    ns: str, name: str, proto: str, port_name: str, ip: str, port: int, affinity: bool
) -> tuple[str, str | None, tuple[Rule, ...]]:
    """(endpoint chain, affinity set or None, the chain's rules) of one endpoint. Cached:
    an endpoint's chain does not change when its siblings come and go."""
    suffix = _names.endpoint_base(ns, name, proto, port_name, ip, port)
    chain = _names.ENDPOINT + suffix
    affinity_set = _names.AFFINITY + suffix if affinity else None
    rules = [Rule((Addr("saddr", ip), _TO_MASQ))]
    if affinity_set:
        rules.append(Rule((Update(affinity_set),)))
    rules.append(Rule((Proto(proto), Dnat(ip, port))))
    return chain, affinity_set, tuple(rules)


def _in_ranges(ip: str, ranges: list[str]) -> bool:
    addr = ipaddress.ip_address(ip)
    return any(addr in ipaddress.ip_network(r, strict=False) for r in ranges)


@lru_cache(maxsize=64)
def _pod_cidr(cluster_cidr: str | None, family_name: str) -> str | None:
    if not cluster_cidr:
        return None
    version = 6 if family_name == "ipv6" else 4
    for part in cluster_cidr.split(","):
        part = part.strip()
        if part and ipaddress.ip_network(part, strict=False).version == version:
            return str(ipaddress.ip_network(part, strict=False))
    return None


def _render(
    svc: Service,
    slices: tuple[EndpointSlice, ...],
    config: ProxyConfig,
    node_ips: tuple[str, ...],
) -> ServiceObjects:
    if svc.type == "ExternalName" or svc.headless or not svc.ports:
        return EMPTY
    v6 = config.family == "ipv6"
    cluster_ip = next((ip for ip in svc.cluster_ips if (":" in ip) == v6), None)
    if cluster_ip is None:
        return EMPTY
    address_type = "IPv6" if v6 else "IPv4"
    pod_cidr = _pod_cidr(config.cluster_cidr, config.family)
    ns, name = svc.namespace, svc.name
    external_ips = [ip for ip in svc.external_ips if (":" in ip) == v6]
    lb_ips = [ip for ip in svc.load_balancer_ips if (":" in ip) == v6]
    source_ranges = [r for r in svc.load_balancer_source_ranges if (":" in r) == v6]
    # Ranges given, none of this family: this family is closed (as our iptables backend).
    firewalled = bool(svc.load_balancer_source_ranges)
    allow_from_node = bool(source_ranges) and any(
        (":" in ip) == v6 and _in_ranges(ip, source_ranges) for ip in node_ips
    )
    node_port_type = svc.type in ("NodePort", "LoadBalancer")
    ext_policy_local = svc.external_traffic_policy == "Local" and (
        node_port_type or bool(svc.external_ips)
    )
    int_policy_local = svc.internal_traffic_policy == "Local"
    affinity = svc.session_affinity == "ClientIP"

    chains: dict[str, tuple[Rule, ...]] = {}
    sets: dict[str, SetDef] = {}
    elements: dict[str, list[Element]] = {}

    def element(
        container: str,
        key: tuple[str, ...],
        verdict: Verdict | None = None,
        comment: str | None = None,
    ) -> None:
        elements.setdefault(container, []).append(Element(key, verdict, comment))

    element(CLUSTER_IPS, (cluster_ip,))
    for port in svc.ports:
        proto = port.protocol.lower()
        spn = service_port_name(ns, name, port.name)
        suffix = _names.port_base(ns, name, proto, port.name)
        cluster_chain = _names.SERVICE + suffix
        local_chain = _names.LOCAL + suffix
        external_chain = _names.EXTERNAL + suffix
        firewall_chain = _names.FIREWALL + suffix
        node_port = port.node_port if node_port_type else 0
        service_port = str(port.port)

        externally_accessible = bool(node_port or lb_ips or external_ips)
        ext_local = ext_policy_local and externally_accessible
        uses_cluster = not int_policy_local or externally_accessible
        uses_local = int_policy_local or ext_local
        eps = port_endpoints(slices, port, address_type, config.node_name)
        cluster_eps, local_eps, reachable, has_endpoints = categorize(eps, uses_cluster, uses_local)

        internal_chain, has_internal = cluster_chain, has_endpoints
        if int_policy_local:
            internal_chain, has_internal = local_chain, bool(local_eps)
        external_policy_chain, has_external = cluster_chain, has_endpoints
        if ext_local:
            external_policy_chain, has_external = local_chain, bool(local_eps)
        uses_external_chain = has_endpoints and externally_accessible
        uses_firewall = has_endpoints and bool(lb_ips) and firewalled
        if not has_endpoints:
            internal_verdict = external_verdict = _REJECT_VERDICT
        else:
            internal_verdict = external_verdict = DROP

        # -- dispatch and no-endpoint elements
        if has_internal:
            element(SERVICE_IPS, (cluster_ip, proto, service_port), goto(internal_chain))
        else:
            element(NO_ENDPOINT_SERVICES, (cluster_ip, proto, service_port), internal_verdict, spn)
        for ip in external_ips:
            if has_endpoints:
                element(SERVICE_IPS, (ip, proto, service_port), goto(external_chain))
            if not has_external:
                element(NO_ENDPOINT_SERVICES, (ip, proto, service_port), external_verdict, spn)
        for ip in lb_ips:
            if has_endpoints:
                element(SERVICE_IPS, (ip, proto, service_port), goto(external_chain))
            if uses_firewall:
                element(FIREWALL_IPS, (ip, proto, service_port), goto(firewall_chain), spn)
            if not has_external:
                element(NO_ENDPOINT_SERVICES, (ip, proto, service_port), external_verdict, spn)
        if node_port:
            if has_endpoints:
                element(SERVICE_NODEPORTS, (proto, str(node_port)), goto(external_chain))
            if not has_external:
                element(NO_ENDPOINT_NODEPORTS, (proto, str(node_port)), external_verdict, spn)
        if not has_endpoints:
            continue

        # -- endpoint chains (and affinity sets)
        endpoint_chain: dict[str, tuple[str, str | None]] = {}
        for e in reachable:
            chain, aff_set, ep_rules = _endpoint(ns, name, proto, port.name, e.ip, e.port, affinity)
            endpoint_chain[e.addr] = (chain, aff_set)
            chains[chain] = ep_rules
            if aff_set:
                sets[aff_set] = SetDef(
                    aff_set, _addr_type(config), timeout=svc.session_affinity_timeout
                )

        # -- service-, local-: affinity, then a cascade of numgen choices
        for chain, chain_eps, used in (
            (cluster_chain, cluster_eps, uses_cluster),
            (local_chain, local_eps, uses_local),
        ):
            if not (used and chain_eps):
                continue
            rules: list[Rule] = []
            if chain == internal_chain and has_internal:
                if config.masquerade_all:
                    rules.append(
                        Rule((Addr("daddr", cluster_ip), Port(proto, port.port), _TO_MASQ))
                    )
                elif pod_cidr:
                    rules.append(
                        Rule(
                            (
                                Addr("daddr", cluster_ip),
                                Port(proto, port.port),
                                Addr("saddr", pod_cidr, negate=True),
                                _TO_MASQ,
                            )
                        )
                    )
            if affinity:
                for e in chain_eps:
                    target, aff_set = endpoint_chain[e.addr]
                    assert aff_set is not None
                    rules.append(Rule((InSet("saddr", aff_set), goto(target))))
            n = len(chain_eps)
            for i, e in enumerate(chain_eps):
                target = endpoint_chain[e.addr][0]
                if i < n - 1:
                    rules.append(Rule((Numgen(n - i), goto(target))))
                else:
                    rules.append(Rule((goto(target),)))
            chains[chain] = tuple(rules)

        # -- external-
        if uses_external_chain:
            ext: list[Rule] = []
            if not ext_local:
                ext.append(Rule((_TO_MASQ,)))
            else:
                if pod_cidr:
                    short_circuit = (Addr("saddr", pod_cidr), goto(cluster_chain))
                    ext.append(Rule(short_circuit, "short-circuit pod traffic"))
                ext.append(Rule((FibLocal("saddr"), _TO_MASQ), "masquerade local traffic"))
                ext.append(
                    Rule((FibLocal("saddr"), goto(cluster_chain)), "short-circuit local traffic")
                )
            if has_external:
                ext.append(Rule((goto(external_policy_chain),)))
            chains[external_chain] = tuple(ext)

        # -- firewall-: allowed sources return, the rest is dropped
        if uses_firewall:
            allowed = list(source_ranges)
            if allow_from_node:
                allowed.extend(lb_ips)
            chains[firewall_chain] = (
                *(Rule((Addr("saddr", src), RETURN)) for src in allowed),
                Rule((DROP,)),
            )

    return ServiceObjects(
        (ns, name),
        MappingProxyType(chains),
        MappingProxyType(sets),
        MappingProxyType({c: _unique(els) for c, els in elements.items()}),
    )


def _unique(elements: list[Element]) -> tuple[Element, ...]:
    """First element per key (several ports share the cluster IP's `cluster-ips` entry)."""
    seen: dict[tuple[str, ...], Element] = {}
    for e in elements:
        seen.setdefault(e.key, e)
    return tuple(seen.values())


# ---- assemble ------------------------------------------------------------------------------


def assemble(config: ProxyConfig, services: Iterable[ServiceObjects]) -> Ruleset:
    """The complete ruleset. Where two services claim the same element key (a duplicate IP
    and port), the first in (namespace, name) order wins, as the first rule does in the
    iptables backend."""
    fixed = base(config)
    chains = dict(fixed.chains)
    sets = dict(fixed.sets)
    elements: dict[str, dict[tuple[str, ...], Element]] = {name: {} for name in SHARED_SETS}
    for objects in sorted(services, key=_order):
        for name, rules in objects.chains.items():
            chains[name] = Chain(name, rules)
        sets.update(objects.sets)
        for container, els in objects.elements.items():
            bucket = elements[container]
            for e in els:
                bucket.setdefault(e.key, e)
    return Ruleset(fixed.family, fixed.table, fixed.comment, chains, sets, elements)


def _order(objects: ServiceObjects) -> tuple[int, ServiceKey]:
    return (0, objects.key) if objects.key is not None else (1, ("", ""))


def render_full(snapshot: Snapshot, config: ProxyConfig) -> Ruleset:
    with paused_gc():
        return assemble(
            config, (render_service(snapshot, key, config) for key in sorted(snapshot.services))
        )
