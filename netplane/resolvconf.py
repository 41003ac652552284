"""The resolv.conf kubelet writes for a pod (pkg/kubelet/network/dns), in one place for the
two that need it: `netplane dns resolv-conf` and the emulated cluster's kubelet.

Pure functions: kubelet's dnsPolicy rules (ClusterFirst, ClusterFirstWithHostNet, Default,
None), the dnsConfig merge and kubelet's limits. The order in which a stub resolver then
tries names is `netplane.dns.search`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from netplane.model import Pod, PodDNSConfig

log = logging.getLogger(__name__)
MAX_NAMESERVERS = 3  # glibc's MAXNS; kubelet drops the rest
MAX_SEARCH = 32  # kubelet's MaxDNSSearchPaths (glibc >= 2.26)
MAX_SEARCH_CHARS = 2048  # kubelet's MaxDNSSearchListChars
POLICIES = ("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None")


@dataclass(frozen=True, slots=True)
class ResolvConf:
    nameservers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[tuple[str, str | None], ...] = ()

    def render(self) -> str:
        lines = []
        if self.searches:
            lines.append("search " + " ".join(self.searches))
        lines += [f"nameserver {ns}" for ns in self.nameservers]
        if self.options:
            opts = (name if value is None else f"{name}:{value}" for name, value in self.options)
            lines.append("options " + " ".join(opts))
        return "\n".join(lines) + "\n"

    @property
    def ndots(self) -> int:
        value = dict(self.options).get("ndots")
        return int(value) if value and value.isdigit() else 1


def parse_resolv_conf(text: str) -> ResolvConf:
    """The parts of a resolv.conf kubelet carries over (later search/domain lines win)."""
    nameservers: list[str] = []
    searches: list[str] = []
    options: dict[str, str | None] = {}
    for line in text.splitlines():
        fields = line.split("#")[0].split(";")[0].split()
        if not fields:
            continue
        if fields[0] == "nameserver" and len(fields) > 1:
            nameservers.append(fields[1])
        elif fields[0] in ("search", "domain"):
            searches = [s.rstrip(".") for s in fields[1:]]
        elif fields[0] == "options":
            for opt in fields[1:]:
                name, _, value = opt.partition(":")
                options[name] = value if value else None
    return ResolvConf(tuple(nameservers), tuple(searches), tuple(options.items()))


def _limit(conf: ResolvConf) -> ResolvConf:
    """kubelet's limits: extra nameservers and search domains are dropped, with a warning."""
    nameservers, searches = conf.nameservers[:MAX_NAMESERVERS], list(conf.searches[:MAX_SEARCH])
    while searches and len(" ".join(searches)) > MAX_SEARCH_CHARS:
        searches.pop()
    if nameservers != conf.nameservers or len(searches) != len(conf.searches):
        log.warning("resolv.conf exceeds kubelet's limits; extra nameservers/searches dropped")
    return ResolvConf(nameservers, tuple(searches), conf.options)


def _merge(base: ResolvConf, extra: PodDNSConfig | None) -> ResolvConf:
    if extra is None:
        return base
    options = dict(base.options)
    options.update(extra.options)
    return ResolvConf(
        tuple(dict.fromkeys((*base.nameservers, *extra.nameservers))),
        tuple(dict.fromkeys((*base.searches, *(s.rstrip(".") for s in extra.searches)))),
        tuple(options.items()),
    )


def effective_policy(policy: str, host_network: bool = False) -> str:
    """The dnsPolicy kubelet applies: ClusterFirst on the host network is Default (the
    node's own resolv.conf) unless the pod asks for ClusterFirstWithHostNet."""
    if policy not in POLICIES:
        raise ValueError(f"dnsPolicy {policy!r}: must be one of {', '.join(POLICIES)}")
    return "Default" if policy == "ClusterFirst" and host_network else policy


def pod_resolv_conf(
    namespace: str,
    host: ResolvConf,
    cluster_dns: tuple[str, ...],
    policy: str = "ClusterFirst",
    dns_config: PodDNSConfig | None = None,
    host_network: bool = False,
    zone: str = "cluster.local",
) -> ResolvConf:
    """The resolv.conf kubelet writes for a pod (pkg/kubelet/network/dns semantics)."""
    policy = effective_policy(policy, host_network)
    if policy == "None":
        base = ResolvConf()
    elif policy == "Default":
        base = host
    elif not cluster_dns:
        log.warning("no cluster DNS IP given; using the node's resolv.conf (as kubelet does)")
        base = host
    else:
        own = (f"{namespace}.svc.{zone}", f"svc.{zone}", zone)
        searches = tuple(dict.fromkeys((*own, *host.searches)))
        base = ResolvConf(cluster_dns, searches, (("ndots", "5"),))
    return _limit(_merge(base, dns_config))


def for_pod(pod: Pod, host: ResolvConf, cluster_dns: tuple[str, ...], zone: str) -> ResolvConf:
    """The resolv.conf of one Pod object (its namespace, dnsPolicy, dnsConfig, hostNetwork)."""
    return pod_resolv_conf(
        pod.namespace, host, cluster_dns, pod.dns_policy, pod.dns_config, pod.host_network, zone
    )
