"""Pure renderer: (cluster snapshot, node config) -> nftables objects, laid out as
kube-proxy's nftables mode lays them out.

- `render_service(snapshot, key, config) -> ServiceObjects`: one Service (all its ports, one
  family): the chains and affinity sets it owns, and its elements in the shared maps/sets
  (`service-ips`, `service-nodeports`, `no-endpoint-services`, `no-endpoint-nodeports`,
  `firewall-ips`, `cluster-ips`). Memoized by the identity of its inputs, like the iptables
  renderer: an unchanged service costs a dict lookup.
- `render_full(snapshot, config) -> (Ruleset, ...)`: every table, complete (the tables'
  fixed objects and how services are spread over them: `_tables`).

Same Service semantics as the iptables renderer (`proxy/render.py`; endpoint selection is
shared: `_endpoints`); the deliberate differences from kube-proxy are listed in
proxy/README.md ("nftables backend").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType

from netplane.model import EndpointSlice, Service
from netplane.proxy._chains import service_port_name
from netplane.proxy._endpoints import categorize, port_endpoints
from netplane.proxy.nft import _names
from netplane.proxy.nft._model import (
    DROP,
    RETURN,
    Addr,
    Dnat,
    Element,
    FibLocal,
    InSet,
    Numgen,
    Port,
    Proto,
    Rule,
    Ruleset,
    SetDef,
    Update,
    Verdict,
    goto,
    jump,
)
from netplane.proxy.nft._tables import (
    CLUSTER_IPS,
    FIREWALL_IPS,
    MARK_MASQ,
    NO_ENDPOINT_NODEPORTS,
    NO_ENDPOINT_SERVICES,
    REJECT_CHAIN,
    SERVICE_IPS,
    SERVICE_NODEPORTS,
    addr_type,
    assemble,
    shard_count,
)
from netplane.proxy.render import (
    ProxyConfig,
    cluster_pod_cidr,
    memoized_render,
    paused_gc,
    service_policy,
)
from netplane.state import ServiceKey, Snapshot

_TO_MASQ = jump(MARK_MASQ)
_REJECT_VERDICT = goto(REJECT_CHAIN)
# statements that recur in every service, made once (the rendered objects of every service
# stay in memory: ~9 KB a service at 5 endpoints)
_proto = lru_cache(maxsize=8)(Proto)
_numgen = lru_cache(maxsize=256)(Numgen)


@dataclass(frozen=True, slots=True)
class ServiceObjects:
    """One Service's nftables objects for one family."""

    key: ServiceKey | None = None
    chains: Mapping[str, tuple[Rule, ...]] = field(default_factory=dict)  # owned by it
    sets: Mapping[str, SetDef] = field(default_factory=dict)  # its affinity sets
    # its elements in the shared maps and sets: {set name: elements}
    elements: Mapping[str, tuple[Element, ...]] = field(default_factory=dict)


EMPTY = ServiceObjects(None, MappingProxyType({}), MappingProxyType({}), MappingProxyType({}))


# ---- render_service ------------------------------------------------------------------------

_memo: dict[tuple[ServiceKey, ProxyConfig], tuple[object, object, object, ServiceObjects]] = {}


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
    rules.append(Rule((_proto(proto), Dnat(ip, port))))
    return chain, affinity_set, tuple(rules)


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
    pod_cidr = cluster_pod_cidr(config.cluster_cidr, config.family)
    ns, name = svc.namespace, svc.name
    external_ips = [ip for ip in svc.external_ips if (":" in ip) == v6]
    (
        lb_ips,
        source_ranges,
        firewalled,
        allow_from_node,
        node_port_type,
        ext_policy_local,
        int_policy_local,
    ) = service_policy(svc, v6, node_ips)
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
                    aff_set, addr_type(config), timeout=svc.session_affinity_timeout
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
                    rules.append(Rule((_numgen(n - i), goto(target))))
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


render_service = memoized_render(_render, EMPTY, _memo)


# ---- everything ----------------------------------------------------------------------------


def render_full(
    snapshot: Snapshot, config: ProxyConfig, shards: int | None = None
) -> tuple[Ruleset, ...]:
    """Every table for SNAPSHOT (SHARDS: as many as the proxy would use)."""
    with paused_gc():
        services = [render_service(snapshot, key, config) for key in sorted(snapshot.services)]
        return assemble(config, services, shards or shard_count(len(services)))
