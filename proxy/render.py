"""Pure renderer: (cluster snapshot, node config) -> iptables rules, kube-proxy compatible.

CONTRACT (shared by the renderer and the syncer; keep it exact):

- `ProxyConfig`: the node-level settings.
- `render_service(snapshot, key, config) -> ServiceRules`: everything one Service (all its
  ports) contributes for one IP family. Rule lines are complete `iptables-restore` lines
  starting with `-A <CHAIN> `. Per-service chains (KUBE-SVC-/SVL-/EXT-/FW-/SEP-) are owned by
  exactly one service; lines for shared top-level chains are returned separately so that the
  syncer can assemble those chains from every service's contribution.
- `assemble(config, rules) -> Tables`: the complete desired state, i.e.
  {table: {chain: lines}} for "nat" and "filter", with the top-level chains
  (KUBE-SERVICES with the KUBE-NODEPORTS jump last, KUBE-NODEPORTS, KUBE-POSTROUTING,
  KUBE-MARK-MASQ, filter KUBE-SERVICES / KUBE-EXTERNAL-SERVICES / KUBE-NODEPORTS /
  KUBE-FORWARD / KUBE-PROXY-FIREWALL, KUBE-PROXY-CANARY) and every service chain.
- `format_restore(tables, deleted=...) -> str`: iptables-restore input (`*table`, `:CHAIN -
  [0:0]` declarations, rules, `-X` for deleted chains, `COMMIT`), for `--noflush`.
- `render_full(snapshot, config) -> str`: format_restore(assemble(...)) of everything.
Jumps from the built-in chains (PREROUTING/OUTPUT -> KUBE-SERVICES, POSTROUTING ->
KUBE-POSTROUTING, ...) are not in the restore input: the syncer ensures them.

ADDITIONS (optional, backwards compatible):
- `ProxyConfig.node_ips`: this node's IPs. Only used for loadBalancerSourceRanges: when a
  range contains a node IP, the LB IPs themselves are allowed as sources (kube-proxy's
  "allowFromNode"). Empty: the InternalIPs of the Node object named `node_name`, if any.
- `ProxyConfig.localhost_nodeports` (default False): NodePorts also answer on 127.0.0.0/8
  (IPv4 only; needs sysctl net.ipv4.conf.all.route_localnet=1, which the syncer would have
  to set). False adds `! -d 127.0.0.0/8` to the KUBE-NODEPORTS jump (IPv6 always gets
  `! -d ::1/128`), as kube-proxy does with --iptables-localhost-nodeports=false.
- `ProxyConfig.cluster_cidr` may hold one CIDR per family, comma-separated
  ("10.0.0.0/8,fd00::/48"); the one of `family` is used. None of that family: no local
  detector (no `! -s` masquerade rule, no EXT pod short-cut), like kube-proxy.
- `ServiceRules.key`: the service's (namespace, name); `assemble` orders services by it,
  so the output does not depend on the order the syncer passes them in.
- `EMPTY_RULES`: the ServiceRules of a service with no rules (headless, ExternalName,
  no cluster IP of this family, deleted).
- `BUILTIN_JUMPS`: the jumps from the built-in chains, in kube-proxy's order (first = first
  rule of the built-in chain), for the syncer to ensure and for the tracer to follow.
- `TOP_LEVEL_CHAINS`: {table: chains assemble() always writes, in output order}.
- `mark_value(config)`: the masquerade mark as written in rules ("0x4000").
- `paused_gc()`: context manager pausing the cyclic GC around bulk rendering (render_full
  uses it; a syncer rendering many services itself may too).

Chain names and comments use kube-proxy's svcPortName: `ns/name:port`, and `ns/name` for
an unnamed port (no trailing colon, as kube-proxy's ServicePortName.String()).

`render_service` results are memoized by the identity of their inputs (the Service object,
its slice tuple, the node IPs, the config) and shared: their mappings are read-only
(MappingProxyType); never mutate them.

Rule text is in iptables-save's canonical option order (`-s`, `-d`, `-p`, then matches in
order, then `-j`), addresses with an explicit prefix length (/32, /128), so most lines read
exactly as `iptables-save` prints them back (exceptions: `--or-mark`/`--xor-mark` print as
`--set-xmark`, `-m recent` and REJECT gain their default options, and the statistic
probability has 10 decimals like kube-proxy where iptables-save prints 11).
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain as _chain_iter
from types import MappingProxyType
from typing import TypeVar

from netplane.model import EndpointSlice, Service
from netplane.proxy._chains import endpoint_chain_name, port_hash, service_port_name
from netplane.proxy._endpoints import categorize, port_endpoints
from netplane.proxy.backend import SyncInterrupted
from netplane.state import ServiceKey, Snapshot

Tables = dict[str, dict[str, tuple[str, ...]]]  # table -> chain -> rule lines


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    node_name: str
    family: str = "ipv4"  # ipv4 | ipv6
    cluster_cidr: str | None = None  # local detector: sources inside are pods (not masqueraded)
    masquerade_all: bool = False
    masquerade_bit: int = 14
    # additions (see the module docstring)
    node_ips: tuple[str, ...] = ()
    localhost_nodeports: bool = False


@dataclass(frozen=True, slots=True)
class ServiceRules:
    """One Service's contribution (all its ports) for one IP family."""

    # chains this service owns: KUBE-SVC-*, KUBE-SVL-*, KUBE-EXT-*, KUBE-FW-*, KUBE-SEP-*
    nat_chains: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # its lines in shared chains, keyed (table, chain): ("nat", "KUBE-SERVICES"),
    # ("nat", "KUBE-NODEPORTS"), ("filter", "KUBE-SERVICES"), ("filter", "KUBE-NODEPORTS"),
    # ("filter", "KUBE-EXTERNAL-SERVICES"), ("filter", "KUBE-PROXY-FIREWALL"), ...
    shared: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    # addition: the service this is for, (namespace, name); None when unknown
    key: ServiceKey | None = None


EMPTY_RULES = ServiceRules(MappingProxyType({}), MappingProxyType({}))

TOP_LEVEL_CHAINS: dict[str, tuple[str, ...]] = {
    "filter": (
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL",
        "KUBE-PROXY-CANARY",
    ),
    "nat": (
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
        "KUBE-PROXY-CANARY",
    ),
}

# (table, built-in chain, match arguments, target): kube-proxy's jumps, listed in the order
# they must appear at the top of each built-in chain.
_FIREWALL = "kubernetes load balancer firewall"
_PORTALS = "kubernetes service portals"
_EXTERNAL = "kubernetes externally-visible service portals"
_NEW = "-m conntrack --ctstate NEW"
# (table, built-in chain, match, target, comment), with kube-proxy's comments
BUILTIN_JUMPS: tuple[tuple[str, str, str, str, str], ...] = (
    ("filter", "INPUT", _NEW, "KUBE-PROXY-FIREWALL", _FIREWALL),
    ("filter", "INPUT", "", "KUBE-NODEPORTS", "kubernetes health check service ports"),
    ("filter", "INPUT", _NEW, "KUBE-EXTERNAL-SERVICES", _EXTERNAL),
    ("filter", "FORWARD", _NEW, "KUBE-PROXY-FIREWALL", _FIREWALL),
    ("filter", "FORWARD", "", "KUBE-FORWARD", "kubernetes forwarding rules"),
    ("filter", "FORWARD", _NEW, "KUBE-SERVICES", _PORTALS),
    ("filter", "FORWARD", _NEW, "KUBE-EXTERNAL-SERVICES", _EXTERNAL),
    ("filter", "OUTPUT", _NEW, "KUBE-PROXY-FIREWALL", _FIREWALL),
    ("filter", "OUTPUT", _NEW, "KUBE-SERVICES", _PORTALS),
    ("nat", "PREROUTING", "", "KUBE-SERVICES", _PORTALS),
    ("nat", "OUTPUT", "", "KUBE-SERVICES", _PORTALS),
    ("nat", "POSTROUTING", "", "KUBE-POSTROUTING", "kubernetes postrouting rules"),
)

_NODEPORTS_COMMENT = "kubernetes service nodeports; NOTE: this must be the last rule in this chain"


def mark_value(config: ProxyConfig) -> str:
    return hex(1 << config.masquerade_bit)


@lru_cache(maxsize=64)
def cluster_pod_cidr(cluster_cidr: str | None, family: str) -> str | None:
    """The pod CIDR of `family` from the configured cluster CIDR(s), normalized."""
    if not cluster_cidr:
        return None
    version = 6 if family == "ipv6" else 4
    for part in cluster_cidr.split(","):
        part = part.strip()
        if not part:
            continue
        net = ipaddress.ip_network(part, strict=False)
        if net.version == version:
            return str(net)
    return None


@lru_cache(maxsize=1024)
def _probability(n: int) -> str:
    return f"{1.0 / n:0.10f}"


@lru_cache(maxsize=1 << 17)
def _endpoint(
    spn: str, proto: str, addr: str, ip: str, plen: str, affinity: bool
) -> tuple[str, tuple[str, ...]]:
    """(KUBE-SEP chain, its two rules) of one endpoint. Cached: an endpoint's chain does not
    change when other endpoints of its service come and go."""
    sep = endpoint_chain_name(spn, proto, addr)  # uncached: this function is the cache
    recent = f" -m recent --name {sep} --set" if affinity else ""
    return sep, (
        f'-A {sep} -s {ip}{plen} -m comment --comment "{spn}" -j KUBE-MARK-MASQ',
        f'-A {sep} -p {proto} -m comment --comment "{spn}"{recent} -m {proto}'
        f" -j DNAT --to-destination {addr}",
    )


def in_ranges(ip: str, ranges: Iterable[str]) -> bool:
    addr = ipaddress.ip_address(ip)
    return any(addr in ipaddress.ip_network(r, strict=False) for r in ranges)


# What both backends' renderers read from a Service, for one family: (load-balancer IPs of
# this family, loadBalancerSourceRanges of this family, firewalled: ranges given (none of
# this family: the family is closed; kube-proxy leaves it open), allow_from_node: a node IP
# is inside the ranges, node_port_type: NodePort or LoadBalancer, ext_policy_local:
# externalTrafficPolicy Local on an externally reachable service, int_policy_local). A plain
# tuple: a NamedTuple costs 0.35 us more per cold render.
Policy = tuple[list[str], list[str], bool, bool, bool, bool, bool]


def service_policy(svc: Service, v6: bool, node_ips: tuple[str, ...]) -> Policy:
    source_ranges = [r for r in svc.load_balancer_source_ranges if (":" in r) == v6]
    node_port_type = svc.type in ("NodePort", "LoadBalancer")
    return (
        [ip for ip in svc.load_balancer_ips if (":" in ip) == v6],
        source_ranges,
        bool(svc.load_balancer_source_ranges),
        bool(source_ranges)
        and any((":" in ip) == v6 and in_ranges(ip, source_ranges) for ip in node_ips),
        node_port_type,
        svc.external_traffic_policy == "Local" and (node_port_type or bool(svc.external_ips)),
        svc.internal_traffic_policy == "Local",
    )


# ---- render_service ----------------------------------------------------------------------

_R = TypeVar("_R")  # a backend's result for one service

# identity memo: (key, config) -> (service, slices, node ips, result). Snapshots share the
# unchanged Service / slice-tuple objects, so a re-render of an unchanged service is a dict
# lookup and three `is` checks.
_memo: dict[tuple[ServiceKey, ProxyConfig], tuple[object, object, object, ServiceRules]] = {}


def _node_ips(snapshot: Snapshot, config: ProxyConfig) -> tuple[str, ...]:
    if config.node_ips:
        return config.node_ips
    node = snapshot.nodes.get(config.node_name)
    return node.internal_ips if node is not None else ()


def memoized_render(
    render: Callable[[Service, tuple[EndpointSlice, ...], ProxyConfig, tuple[str, ...]], _R],
    empty: _R,
    memo: dict[tuple[ServiceKey, ProxyConfig], tuple[object, object, object, _R]],
) -> Callable[[Snapshot, ServiceKey, ProxyConfig], _R]:
    """`render_service` of a backend: RENDER (service, slices, config, node ips) behind the
    identity memo MEMO; EMPTY for a service the snapshot does not hold. Both backends'."""

    def render_service(snapshot: Snapshot, key: ServiceKey, config: ProxyConfig) -> _R:
        svc = snapshot.services.get(key)
        if svc is None:
            return empty
        slices = snapshot.slices.get(key, ())
        node_ips = _node_ips(snapshot, config)
        memo_key = (key, config)
        hit = memo.get(memo_key)
        if hit is not None and hit[0] is svc and hit[1] is slices and hit[2] == node_ips:
            return hit[3]
        out = render(svc, slices, config, node_ips)
        if len(memo) > 4 * len(snapshot.services) + 1024:
            memo.clear()
        memo[memo_key] = (svc, slices, node_ips, out)
        return out

    return render_service


def _render(
    svc: Service, slices: Sequence[EndpointSlice], config: ProxyConfig, node_ips: tuple[str, ...]
) -> ServiceRules:
    if svc.type == "ExternalName" or svc.headless or not svc.ports:
        return EMPTY_RULES
    v6 = config.family == "ipv6"
    cluster_ip = None
    for ip in svc.cluster_ips:
        if (":" in ip) == v6:
            cluster_ip = ip
            break
    if cluster_ip is None:
        return EMPTY_RULES

    plen = "/128" if v6 else "/32"
    address_type = "IPv6" if v6 else "IPv4"
    pod_cidr = cluster_pod_cidr(config.cluster_cidr, config.family)
    masq_all = config.masquerade_all
    ns, name = svc.namespace, svc.name
    cip = cluster_ip + plen
    external_ips = [ip + plen for ip in svc.external_ips if (":" in ip) == v6]
    (
        lb_ips,
        source_ranges,
        firewalled,
        allow_from_node,
        node_port_type,
        ext_policy_local,
        int_policy_local,
    ) = service_policy(svc, v6, node_ips)
    health_check = (
        svc.health_check_node_port
        if svc.type == "LoadBalancer" and svc.external_traffic_policy == "Local"
        else 0
    )

    nat: dict[str, tuple[str, ...]] = {}
    kube_services: list[str] = []  # nat KUBE-SERVICES
    kube_nodeports: list[str] = []  # nat KUBE-NODEPORTS
    f_services: list[str] = []  # filter KUBE-SERVICES
    f_external: list[str] = []  # filter KUBE-EXTERNAL-SERVICES
    f_nodeports: list[str] = []  # filter KUBE-NODEPORTS
    f_firewall: list[str] = []  # filter KUBE-PROXY-FIREWALL

    for port in svc.ports:
        proto = port.protocol.lower()
        spn = service_port_name(ns, name, port.name)
        h = port_hash(spn, proto)
        svc_chain = "KUBE-SVC-" + h
        svl_chain = "KUBE-SVL-" + h
        ext_chain = "KUBE-EXT-" + h
        fw_chain = "KUBE-FW-" + h
        node_port = port.node_port if node_port_type else 0
        pc = f"-p {proto} -m comment --comment"  # protocol + comment prefix
        match_port = f"-m {proto} --dport {port.port}"

        externally_accessible = bool(node_port or lb_ips or external_ips)
        ext_local = ext_policy_local and externally_accessible
        uses_cluster = not int_policy_local or externally_accessible
        uses_local = int_policy_local or ext_local
        eps = port_endpoints(slices, port, address_type, config.node_name)
        cluster_eps, local_eps, reachable, has_endpoints = categorize(eps, uses_cluster, uses_local)

        internal_chain = svc_chain
        has_internal = has_endpoints
        if int_policy_local:
            internal_chain = svl_chain
            has_internal = bool(local_eps)
        external_policy_chain = svc_chain
        has_external = has_endpoints
        if ext_local:
            external_policy_chain = svl_chain
            has_external = bool(local_eps)
        uses_ext_chain = has_endpoints and externally_accessible
        uses_fw = has_endpoints and bool(lb_ips) and firewalled
        lb_chain = fw_chain if uses_fw else ext_chain

        if not has_endpoints:
            int_target = ext_target = "REJECT"
            int_comment = ext_comment = f"{spn} has no endpoints"
        else:
            int_target = ext_target = "DROP"
            int_comment = ext_comment = f"{spn} has no local endpoints"

        # -- cluster IP
        if has_internal:
            kube_services.append(
                f'-A KUBE-SERVICES -d {cip} {pc} "{spn} cluster IP" {match_port}'
                f" -j {internal_chain}"
            )
        else:
            f_services.append(
                f'-A KUBE-SERVICES -d {cip} {pc} "{int_comment}" {match_port} -j {int_target}'
            )
        # -- external IPs
        for eip in external_ips:
            if has_endpoints:
                kube_services.append(
                    f'-A KUBE-SERVICES -d {eip} {pc} "{spn} external IP" {match_port}'
                    f" -j {ext_chain}"
                )
            if not has_external:
                f_external.append(
                    f'-A KUBE-EXTERNAL-SERVICES -d {eip} {pc} "{ext_comment}" {match_port}'
                    f" -j {ext_target}"
                )
        # -- load balancer IPs
        for lb in lb_ips:
            if has_endpoints:
                kube_services.append(
                    f'-A KUBE-SERVICES -d {lb}{plen} {pc} "{spn} loadbalancer IP"'
                    f" {match_port} -j {lb_chain}"
                )
            if uses_fw:
                f_firewall.append(
                    f"-A KUBE-PROXY-FIREWALL -d {lb}{plen} {pc}"
                    f' "{spn} traffic not accepted by {fw_chain}" {match_port} -j DROP'
                )
        if not has_external:
            for lb in lb_ips:
                f_external.append(
                    f'-A KUBE-EXTERNAL-SERVICES -d {lb}{plen} {pc} "{ext_comment}"'
                    f" {match_port} -j {ext_target}"
                )
        # -- node port
        if node_port:
            if has_endpoints:
                kube_nodeports.append(
                    f'-A KUBE-NODEPORTS {pc} "{spn}" -m {proto} --dport {node_port} -j {ext_chain}'
                )
            if not has_external:
                f_external.append(
                    f'-A KUBE-EXTERNAL-SERVICES {pc} "{ext_comment}" -m addrtype'
                    f" --dst-type LOCAL -m {proto} --dport {node_port} -j {ext_target}"
                )
        if health_check:
            f_nodeports.append(
                f'-A KUBE-NODEPORTS -p tcp -m comment --comment "{spn} health check node port"'
                f" -m tcp --dport {health_check} -j ACCEPT"
            )

        if not has_endpoints:
            continue  # no nat chains at all: only the filter rules above

        # -- per-service chains, in a fixed order: EXT, FW, SVC, SVL, SEPs
        internal_masq = None
        if has_internal:
            if masq_all:
                internal_masq = (
                    f'-A {internal_chain} -d {cip} {pc} "{spn} cluster IP" {match_port}'
                    " -j KUBE-MARK-MASQ"
                )
            elif pod_cidr:
                internal_masq = (
                    f"-A {internal_chain} ! -s {pod_cidr} -d {cip} {pc}"
                    f' "{spn} cluster IP" {match_port} -j KUBE-MARK-MASQ'
                )
        if uses_ext_chain:
            ext: list[str] = []
            if not ext_local:
                ext.append(
                    f"-A {ext_chain} -m comment --comment"
                    f' "masquerade traffic for {spn} external destinations" -j KUBE-MARK-MASQ'
                )
            else:
                if pod_cidr:
                    ext.append(
                        f"-A {ext_chain} -s {pod_cidr} -m comment --comment"
                        f' "pod traffic for {spn} external destinations" -j {svc_chain}'
                    )
                ext.append(
                    f"-A {ext_chain} -m comment --comment"
                    f' "masquerade LOCAL traffic for {spn} external destinations"'
                    " -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"
                )
                ext.append(
                    f"-A {ext_chain} -m comment --comment"
                    f' "route LOCAL traffic for {spn} external destinations"'
                    f" -m addrtype --src-type LOCAL -j {svc_chain}"
                )
            if has_external:
                ext.append(f"-A {ext_chain} -j {external_policy_chain}")
            nat[ext_chain] = tuple(ext)
        if uses_fw:
            fw = [
                f'-A {fw_chain} -s {r} -m comment --comment "{spn} loadbalancer IP" -j {ext_chain}'
                for r in source_ranges
            ]
            if allow_from_node:
                fw.extend(
                    f'-A {fw_chain} -s {lb}{plen} -m comment --comment "{spn} loadbalancer IP"'
                    f" -j {ext_chain}"
                    for lb in lb_ips
                )
            fw.append(
                f"-A {fw_chain} -m comment --comment"
                f' "other traffic to {spn} will be dropped by KUBE-PROXY-FIREWALL"'
            )
            nat[fw_chain] = tuple(fw)

        affinity = svc.session_affinity == "ClientIP"
        timeout = svc.session_affinity_timeout
        for chain, chain_eps, uses in (
            (svc_chain, cluster_eps, uses_cluster),
            (svl_chain, local_eps, uses_local),
        ):
            if not (uses and chain_eps):
                continue
            lines: list[str] = []
            if internal_masq is not None and chain == internal_chain:
                lines.append(internal_masq)
            n = len(chain_eps)
            if affinity:
                for e in chain_eps:
                    sep = _endpoint(spn, proto, e.addr, e.ip, plen, True)[0]
                    lines.append(
                        f'-A {chain} -m comment --comment "{spn} -> {e.addr}" -m recent'
                        f" --name {sep} --rcheck --seconds {timeout} --reap -j {sep}"
                    )
            last = n - 1
            for i, e in enumerate(chain_eps):
                sep = _endpoint(spn, proto, e.addr, e.ip, plen, affinity)[0]
                if i < last:
                    lines.append(
                        f'-A {chain} -m comment --comment "{spn} -> {e.addr}" -m statistic'
                        f" --mode random --probability {_probability(n - i)} -j {sep}"
                    )
                else:
                    lines.append(f'-A {chain} -m comment --comment "{spn} -> {e.addr}" -j {sep}')
            nat[chain] = tuple(lines)

        for e in reachable:
            sep, sep_lines = _endpoint(spn, proto, e.addr, e.ip, plen, affinity)
            nat[sep] = sep_lines

    shared: dict[tuple[str, str], tuple[str, ...]] = {}
    for table_chain, lines in (
        (("nat", "KUBE-SERVICES"), kube_services),
        (("nat", "KUBE-NODEPORTS"), kube_nodeports),
        (("filter", "KUBE-SERVICES"), f_services),
        (("filter", "KUBE-EXTERNAL-SERVICES"), f_external),
        (("filter", "KUBE-NODEPORTS"), f_nodeports),
        (("filter", "KUBE-PROXY-FIREWALL"), f_firewall),
    ):
        if lines:
            shared[table_chain] = tuple(lines)
    return ServiceRules(MappingProxyType(nat), MappingProxyType(shared), (ns, name))


render_service = memoized_render(_render, EMPTY_RULES, _memo)


def rerender(
    snapshot: Snapshot,
    keys: Iterable[ServiceKey],
    config: ProxyConfig,
    render: Callable[[Snapshot, ServiceKey, ProxyConfig], _R],
    stored: Mapping[ServiceKey, _R],
    empty: _R,
    log: logging.Logger,
    stop: threading.Event | None = None,
) -> list[tuple[ServiceKey, _R, _R]]:
    """(key, old, new) of the services among KEYS whose RENDER changed from what is STORED
    (EMPTY: none; the memo returns the very same object when unchanged). A service that
    cannot be rendered is logged to LOG and left as it is; STOP is looked at every 512
    services (raises SyncInterrupted)."""
    rendered: list[tuple[ServiceKey, _R, _R]] = []
    for n, key in enumerate(keys, 1):
        if stop is not None and n % 512 == 0 and stop.is_set():
            raise SyncInterrupted(f"stopped while rendering ({n} services)")
        old = stored.get(key, empty)
        new = empty
        if key in snapshot.services:
            try:
                new = render(snapshot, key, config)
            except (ValueError, KeyError) as e:  # one bad service must not stop the rest
                log.error("service %s/%s: cannot program it: %s", *key, e)
                continue
        if new is not old:
            rendered.append((key, old, new))
    return rendered


# ---- assemble / format -------------------------------------------------------------------


def _sort_key(r: ServiceRules) -> tuple[int, ServiceKey]:
    return (0, r.key) if r.key is not None else (1, ("", ""))


def assemble(config: ProxyConfig, rules: Iterable[ServiceRules]) -> Tables:
    mark = mark_value(config)
    ordered = sorted(rules, key=_sort_key)  # stable: keyless ones keep their order, last
    shared: dict[tuple[str, str], list[str]] = {}
    for r in ordered:
        for table_chain, lines in r.shared.items():
            bucket = shared.get(table_chain)
            if bucket is None:
                shared[table_chain] = list(lines)
            else:
                bucket.extend(lines)

    v6 = config.family == "ipv6"
    if v6:
        nodeports_dst = "! -d ::1/128 "
    elif not config.localhost_nodeports:
        nodeports_dst = "! -d 127.0.0.0/8 "
    else:
        nodeports_dst = ""
    kube_services = shared.pop(("nat", "KUBE-SERVICES"), [])
    kube_services.append(
        f'-A KUBE-SERVICES {nodeports_dst}-m comment --comment "{_NODEPORTS_COMMENT}"'
        " -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    )
    nat: dict[str, tuple[str, ...]] = {
        "KUBE-SERVICES": tuple(kube_services),
        "KUBE-NODEPORTS": tuple(shared.pop(("nat", "KUBE-NODEPORTS"), ())),
        "KUBE-POSTROUTING": (
            f"-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN",
            f"-A KUBE-POSTROUTING -j MARK --xor-mark {mark}",
            '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT"'
            " -j MASQUERADE --random-fully",
        ),
        "KUBE-MARK-MASQ": (f"-A KUBE-MARK-MASQ -j MARK --or-mark {mark}",),
        "KUBE-PROXY-CANARY": (),
    }
    filt: dict[str, tuple[str, ...]] = {
        "KUBE-SERVICES": tuple(shared.pop(("filter", "KUBE-SERVICES"), ())),
        "KUBE-EXTERNAL-SERVICES": tuple(shared.pop(("filter", "KUBE-EXTERNAL-SERVICES"), ())),
        "KUBE-FORWARD": (
            "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
            '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules"'
            f" -m mark --mark {mark}/{mark} -j ACCEPT",
            '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule"'
            " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        ),
        "KUBE-NODEPORTS": tuple(shared.pop(("filter", "KUBE-NODEPORTS"), ())),
        "KUBE-PROXY-FIREWALL": tuple(shared.pop(("filter", "KUBE-PROXY-FIREWALL"), ())),
        "KUBE-PROXY-CANARY": (),
    }
    tables: Tables = {"filter": filt, "nat": nat}
    for (table, chain), unknown in sorted(shared.items()):  # shared chains we do not know
        tables.setdefault(table, {})[chain] = tuple(unknown)
    for r in ordered:
        nat.update(r.nat_chains)
    return tables


_TABLE_ORDER = {"filter": 0, "nat": 1}


def format_restore(tables: Tables, deleted: Mapping[str, Iterable[str]] | None = None) -> str:
    deleted = deleted or {}
    out: list[str] = []
    names = sorted(set(tables) | set(deleted), key=lambda t: (_TABLE_ORDER.get(t, 2), t))
    for table in names:
        chains = tables.get(table, {})
        gone = [c for c in deleted.get(table, ()) if c not in chains]
        out.append(f"*{table}")
        out.extend(map(":{} - [0:0]".format, chains))
        out.extend(map(":{} - [0:0]".format, gone))
        out.extend(_chain_iter.from_iterable(chains.values()))
        out.extend(map("-X {}".format, gone))
        out.append("COMMIT")
    out.append("")
    return "\n".join(out)


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector around a bulk render: rendering allocates a few
    hundred thousand acyclic objects, and the collections they trigger cost ~30% of a full
    render at 10k services. Nesting and threads are fine (it only re-enables what it paused)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def render_full(snapshot: Snapshot, config: ProxyConfig) -> str:
    with paused_gc():
        rules = [render_service(snapshot, key, config) for key in sorted(snapshot.services)]
        return format_restore(assemble(config, rules))
