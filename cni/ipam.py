"""netplane-ipam: a host-local compatible IP allocator (same config keys, same store, same order).

The bridge runs it in-process when ipam.type is "netplane-ipam"; `main` makes it a CNI plugin too.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from netplane.cni.spec import (
    INTERNAL,
    INVALID_CONFIG,
    INVALID_ENV,
    IO_FAILURE,
    PLUGIN_NOT_AVAILABLE,
    CniError,
    Env,
)
from netplane.cni.store import Store

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Range:
    subnet: IPNetwork
    start: IPAddr
    end: IPAddr
    gateway: IPAddr

    def __contains__(self, ip: IPAddr) -> bool:
        if ip.version != self.start.version:
            return False
        return self.start <= ip <= self.end  # type: ignore[operator]  # one family: checked


@dataclass(frozen=True)
class IpamConf:
    network: str
    rangesets: tuple[tuple[Range, ...], ...]
    routes: tuple[dict[str, str], ...]
    data_dir: str
    resolv_conf: str
    # addresses asked for (CNI_ARGS IP=, args.cni.ips, runtimeConfig.ips), in that order
    requested: tuple[IPAddr, ...] = ()


def _bad(msg: str) -> CniError:
    return CniError(INVALID_CONFIG, msg)


def parse_range(entry: dict[str, Any]) -> Range:
    """Canonicalise one range exactly as host-local does (defaults and checks)."""
    try:
        subnet = ipaddress.ip_network(str(entry.get("subnet", "")), strict=True)
    except ValueError as exc:
        raise _bad(f"invalid subnet {entry.get('subnet')!r}: {exc}") from None
    if subnet.prefixlen > subnet.max_prefixlen - 2:
        raise _bad(f"Network {subnet} too small to allocate from")
    last = subnet.broadcast_address - 1 if subnet.version == 4 else subnet.broadcast_address

    def addr(key: str, default: IPAddr) -> IPAddr:
        raw = entry.get(key)
        if not raw:
            return default
        try:
            value = ipaddress.ip_address(str(raw))
        except ValueError:
            raise _bad(f"{key} {raw!r} is not an IP address") from None
        if value not in subnet:
            raise _bad(f"{key} {value} not in network {subnet}")
        return value

    start = addr("rangeStart", subnet.network_address + 1)
    end = addr("rangeEnd", last)
    if start > end:  # type: ignore[operator]
        raise _bad(f"rangeStart {start} is after rangeEnd {end}")
    return Range(subnet, start, end, addr("gateway", subnet.network_address + 1))


def parse_conf(conf: dict[str, Any], args: dict[str, str] | None = None) -> IpamConf:
    """The IPAM section of CONF as host-local reads it, with what the runtime adds: range sets
    from `runtimeConfig.ipRanges` (the `ipRanges` capability) go first, and the addresses
    asked for, from CNI_ARGS `IP=` (ARGS), `args.cni.ips` and `runtimeConfig.ips` (the `ips`
    capability)."""
    ipam = conf.get("ipam") or {}
    runtime = conf.get("runtimeConfig") or {}
    raw_sets = ipam.get("ranges")
    if not raw_sets and ipam.get("subnet"):
        raw_sets = [
            [{k: ipam[k] for k in ("subnet", "rangeStart", "rangeEnd", "gateway") if k in ipam}]
        ]
    if raw_sets and not isinstance(raw_sets, list):
        raise _bad("ipam.ranges must be a list of range sets")
    raw_sets = [*_list(runtime, "ipRanges", "runtimeConfig"), *(raw_sets or [])]
    if not raw_sets:
        raise _bad("no IP ranges specified")
    rangesets: list[tuple[Range, ...]] = []
    for rs in raw_sets:
        if not isinstance(rs, list) or not rs:
            raise _bad("empty range set")
        ranges = tuple(parse_range(r) for r in rs)
        if len({r.start.version for r in ranges}) != 1:
            raise _bad("mixed address families in one range set")
        for i, a in enumerate(ranges):
            for b in ranges[i + 1 :]:
                if _overlap(a, b):
                    raise _bad(f"range set has overlapping ranges {a.subnet} and {b.subnet}")
        for i, other in enumerate(rangesets):
            if any(_overlap(a, b) for a in other for b in ranges):
                raise _bad(f"range set {i} overlaps with {len(rangesets)}")
        rangesets.append(ranges)
    routes = ipam.get("routes") or []
    for r in routes:
        try:
            ipaddress.ip_network(r["dst"], strict=False)
        except (KeyError, TypeError, ValueError):
            raise _bad(f"invalid route {r!r}") from None
    return IpamConf(
        network=str(conf.get("name", "")),
        rangesets=tuple(rangesets),
        routes=tuple(routes),
        data_dir=str(ipam.get("dataDir", "")),
        resolv_conf=str(ipam.get("resolvConf", "")),
        requested=_requested(conf, runtime, args or {}),
    )


def _overlap(a: Range, b: Range) -> bool:
    if a.start.version != b.start.version:
        return False
    return a.start <= b.end and b.start <= a.end  # type: ignore[operator]  # one family


def _list(section: dict[str, Any], key: str, where: str) -> list[Any]:
    value = section.get(key) or []
    if not isinstance(value, list):
        raise _bad(f"{where}.{key} must be a list, not {type(value).__name__}")
    return value


def _address(text: Any, where: str, code: int = INVALID_CONFIG) -> IPAddr:
    """An address as CNI's ip.IP reads it: with or without a prefix length."""
    try:
        return ipaddress.ip_interface(str(text)).ip
    except ValueError:
        raise CniError(code, f"{where}: invalid IP address {text!r}") from None


def _requested(conf: dict[str, Any], runtime: dict[str, Any],
               args: dict[str, str]) -> tuple[IPAddr, ...]:  # fmt: skip
    found: list[IPAddr] = []
    if args.get("IP"):
        found.append(_address(args["IP"], "CNI_ARGS IP", INVALID_ENV))
    cni_args = (conf.get("args") or {}).get("cni") or {}
    found += [_address(ip, "args.cni.ips") for ip in _list(cni_args, "ips", "args.cni")]
    found += [_address(ip, "runtimeConfig.ips") for ip in _list(runtime, "ips", "runtimeConfig")]
    return tuple(dict.fromkeys(found))  # one request per address, first order kept


def _candidates(ranges: tuple[Range, ...], last: str) -> Iterator[IPAddr]:
    """host-local's RangeIter: start after the last reserved IP (if in this set), wrap once."""
    start_idx, start_ip = 0, ranges[0].start
    try:
        last_ip = ipaddress.ip_address(last) if last else None
    except ValueError:
        last_ip = None
    for idx, r in enumerate(ranges):
        if last_ip is not None and last_ip in r:
            start_idx, start_ip = idx, last_ip + 1
            if last_ip == r.end:
                start_idx = (idx + 1) % len(ranges)
                start_ip = ranges[start_idx].start
            break
    for n in range(len(ranges) + 1):
        r = ranges[(start_idx + n) % len(ranges)]
        lo = start_ip if n == 0 else r.start
        hi = start_ip - 1 if n == len(ranges) else r.end
        yield from _span(r, lo, hi)


def _span(r: Range, lo: IPAddr, hi: IPAddr) -> Iterator[IPAddr]:
    ip = lo
    while r.start <= ip <= hi:  # type: ignore[operator]
        if ip != r.gateway:
            yield ip
        ip += 1


def allocate(conf: IpamConf, env: Env) -> dict[str, Any]:
    """ADD: one address per range set (the one asked for, if any lies in it), all or nothing."""
    dns = resolv_dns(conf.resolv_conf)  # before reserving: a failure here must not leak an IP
    store = Store(conf.network, conf.data_dir)
    ips: list[dict[str, str]] = []
    wanted = list(conf.requested)
    with store.locked():
        held = [ipaddress.ip_address(ip) for ip in store.owned_by(env.container_id, env.ifname)]
        try:
            for idx, ranges in enumerate(conf.rangesets):
                asked = next((ip for ip in wanted if any(ip in r for r in ranges)), None)
                try:
                    if asked is not None:
                        wanted.remove(asked)
                        ip = _reserve_asked(store, ranges, idx, env, asked)
                    else:
                        ip = _reserve_one(store, ranges, idx, env, held)
                except CniError as e:
                    raise CniError(e.code, f"failed to allocate for range {idx}: {e.msg}") from None
                r = next(r for r in ranges if ip in r)
                ips.append({"address": f"{ip}/{r.subnet.prefixlen}", "gateway": str(r.gateway)})
            if wanted:
                raise CniError(
                    INTERNAL, "failed to allocate all requested IPs: " + " ".join(map(str, wanted))
                )
        except BaseException:
            for ip_json in ips:
                store.release(ip_json["address"].split("/")[0])
            raise
    result: dict[str, Any] = {"ips": ips, "routes": [dict(r) for r in conf.routes]}
    if dns:
        result["dns"] = dns
    return result


def _describe(ranges: tuple[Range, ...]) -> str:
    return ",".join(f"{r.start}-{r.end}" for r in ranges)


def _reserve_asked(store: Store, ranges: tuple[Range, ...], idx: int, env: Env,
                   ip: IPAddr) -> IPAddr:  # fmt: skip
    """The address asked for; as in host-local, no duplicate check for the attachment."""
    if any(ip in r and ip == r.gateway for r in ranges):
        raise CniError(INTERNAL, f"requested ip {ip} is subnet's gateway")
    if not store.reserve(env.container_id, env.ifname, str(ip), idx):
        raise CniError(
            INTERNAL,
            f"requested IP address {ip} is not available in range set {_describe(ranges)}",
        )
    return ip


def _reserve_one(store: Store, ranges: tuple[Range, ...], idx: int, env: Env,
                 held: list[IPAddr]) -> IPAddr:  # fmt: skip
    dup = [ip for ip in held if any(ip in r for r in ranges)]
    if dup:
        owner = env.container_id
        raise CniError(INTERNAL, f"{dup[0]} has been allocated to {owner}, "
                                 "duplicate allocation is not allowed")  # fmt: skip
    for ip in _candidates(ranges, store.last_reserved(idx)):
        if store.reserve(env.container_id, env.ifname, str(ip), idx):
            return ip
    raise CniError(INTERNAL, f"no IP addresses available in range set: {_describe(ranges)}")


def release(conf: IpamConf, env: Env) -> None:
    """DEL: release whatever (containerID, ifname) holds; nothing held is fine."""
    store = Store(conf.network, conf.data_dir)
    with store.locked():
        store.release_by_id(env.container_id, env.ifname)


def check(conf: IpamConf, env: Env) -> None:
    store = Store(conf.network, conf.data_dir)
    with store.locked():
        if not store.owned_by(env.container_id, env.ifname):
            raise CniError(
                INTERNAL,
                f"host-local: Failed to find address added by container {env.container_id}",
            )


def gc(conf: IpamConf, valid: list[dict[str, Any]]) -> list[str]:
    """GC: drop every reservation whose (containerID, ifname) is not a valid attachment."""
    keep = {(a.get("containerID", ""), a.get("ifname", "")) for a in valid}
    keep_ids = {cid for cid, _ in keep}
    store = Store(conf.network, conf.data_dir)
    released = []
    with store.locked():
        for ip, cid, ifname in list(store.allocations()):
            alive = (cid, ifname) in keep if ifname else cid in keep_ids
            if not alive:
                store.release(ip)
                released.append(ip)
    return released


def status(conf: IpamConf) -> None:
    store = Store(conf.network, conf.data_dir)
    try:
        with store.locked():
            pass
    except OSError as exc:
        raise CniError(
            PLUGIN_NOT_AVAILABLE, f"IPAM store {store.dir} is not usable", str(exc)
        ) from None


def resolv_dns(path: str) -> dict[str, Any]:
    """The `dns` result section from a resolv.conf, as host-local's resolvConf does."""
    if not path:
        return {}
    dns: dict[str, Any] = {}
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot read resolvConf {path}", str(exc)) from None
    for line in lines:
        fields = line.split()
        if len(fields) < 2 or fields[0].startswith(("#", ";")):
            continue
        key = {"nameserver": "nameservers", "search": "search", "options": "options"}.get(fields[0])
        if key == "nameservers":
            dns.setdefault(key, []).append(fields[1])
        elif key:
            dns.setdefault(key, []).extend(fields[1:])
        elif fields[0] == "domain":
            dns["domain"] = fields[1]
    return dns


def run(command: str, conf: dict[str, Any], env: Env) -> dict[str, Any] | None:
    """One IPAM command on a full network config; the bridge calls this in-process."""
    ipam_conf = parse_conf(conf, env.args)
    if command == "ADD":
        return allocate(ipam_conf, env)
    if command == "DEL":
        release(ipam_conf, env)
    elif command == "CHECK":
        check(ipam_conf, env)
    elif command == "GC":
        gc(ipam_conf, conf.get("cni.dev/valid-attachments") or [])
    elif command == "STATUS":
        status(ipam_conf)
    return None


def main() -> None:
    from netplane.cni.plugin import serve

    def handler(env: Env, conf: dict[str, Any], _environ: object) -> dict[str, Any] | None:
        return run(env.command, conf, env)

    sys.exit(serve(handler, os.environ, sys.stdin.buffer.read(), sys.stdout))
