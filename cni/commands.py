"""The bridge plugin's commands as plain functions, like containernetworking/plugins' bridge.go.

Each takes the validated environment, the raw network config and the caller's environ (passed
on to a delegated IPAM plugin), and returns the result (ADD) or None.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Callable, Mapping
from typing import Any

from netplane.cni import delegate, inflight, masq, netops, spoofcheck
from netplane.cni.config import BridgeConf, parse
from netplane.cni.rtnl import Rtnl
from netplane.cni.spec import INTERNAL, INVALID_CONFIG, CniError, Env


def cmd_add(env: Env, raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    conf = parse(raw, env)
    with inflight.pending(conf.name, env.container_id, env.ifname) as interrupted:
        if interrupted:  # a killed ADD's leftovers: roll them back, then add afresh
            _teardown(conf, env, raw, environ)
        return _add_undoing(conf, env, raw, environ)


def _add_undoing(
    conf: BridgeConf, env: Env, raw: dict[str, Any], environ: Mapping[str, str]
) -> dict[str, Any]:
    undo: list[Callable[[], object]] = []
    with contextlib.ExitStack() as stack:
        ctr_fd = netops.open_sandbox(env)
        stack.callback(os.close, ctr_fd)
        host = stack.enter_context(Rtnl())
        ctr = stack.enter_context(netops.ipr_in(ctr_fd))
        try:
            return _add(conf, env, raw, environ, host, ctr, ctr_fd, undo)
        except BaseException:
            for action in reversed(undo):
                with contextlib.suppress(Exception):  # best effort: keep undoing the rest
                    action()
            raise


def _add(
    conf: BridgeConf,
    env: Env,
    raw: dict[str, Any],
    environ: Mapping[str, str],
    host: Rtnl,
    ctr: Rtnl,
    ctr_fd: int,
    undo: list[Callable[[], object]],
) -> dict[str, Any]:
    """The reference's order: bridge, veth pair, IPAM, container config, gateway, masquerade.
    Every step that creates something registers its undo first."""
    br, created = netops.ensure_bridge(
        host, conf.bridge, conf.mtu, conf.promisc_mode, conf.vlan != 0
    )
    if created:
        undo.append(lambda: _drop_bridge_if_unused(host, br))
    host_name = netops.host_veth_name(env.container_id, env.ifname)
    port, ctr_link = netops.create_veth(
        host, ctr, ctr_fd, (host_name, env.ifname), br, conf.mtu, conf.mac
    )
    undo.append(lambda: netops.delete_link(host, host_name))
    netops.port_options(
        host,
        port.index,
        conf.hairpin_mode,
        conf.port_isolation,
        conf.vlan,
        conf.preserve_default_vlan,
    )
    if conf.mac_spoof_check:
        ref = spoofcheck.ref_id(env.container_id, env.ifname)
        undo.append(lambda: spoofcheck.teardown(ref))
        spoofcheck.setup(host_name, ctr_link.mac, ref)
    ctr_index = ctr_link.index
    result: dict[str, Any] = {
        "interfaces": [
            {"name": conf.bridge, "mac": ""},
            {"name": host_name, "mac": port.mac},
            {
                "name": env.ifname,
                "mac": ctr_link.mac,
                "sandbox": env.netns,
            },
        ],
    }
    if conf.ipam_type:
        ipam_result = delegate.run("ADD", raw, env, environ) or {}
        undo.append(lambda: delegate.run("DEL", raw, env, environ))
        result.update(_layer3(conf, ipam_result))
        _configure_l3(conf, env, host, ctr, ctr_fd, br, ctr_index, result, undo)
    elif not conf.disable_container_interface:
        ctr.set_link(ctr_index, up=True)
    result["interfaces"][0]["mac"] = netops.mac_of(host, br)  # final: ports may move it
    if conf.dns:
        result["dns"] = conf.dns
    return result


def _layer3(conf: BridgeConf, ipam_result: dict[str, Any]) -> dict[str, Any]:
    """The reference's calcGateways: fill in gateways and the default routes per family."""
    ips = [dict(ip) for ip in ipam_result.get("ips", [])]
    if not ips:
        raise CniError(INTERNAL, "IPAM plugin returned missing IP config")
    routes = [dict(r) for r in ipam_result.get("routes", [])]
    default_done: set[int] = set()
    for ip in ips:
        ip.pop("version", None)
        iface = ipaddress.ip_interface(ip["address"])
        ip["interface"] = 2
        if not ip.get("gateway") and conf.is_gateway:
            ip["gateway"] = str(iface.network.network_address + 1)
        if conf.is_default_gateway and iface.version not in default_done:
            default = "0.0.0.0/0" if iface.version == 4 else "::/0"
            if not any(r.get("gw") and _same_net(r["dst"], default) for r in routes):
                routes.append({"dst": default, "gw": ip.get("gateway")})
            default_done.add(iface.version)
    out: dict[str, Any] = {"ips": ips, "routes": routes}
    if ipam_result.get("dns"):
        out["dns"] = ipam_result["dns"]
    return out


def _same_net(a: str, b: str) -> bool:
    return ipaddress.ip_network(a, strict=False) == ipaddress.ip_network(b, strict=False)


def _configure_l3(
    conf: BridgeConf,
    env: Env,
    host: Rtnl,
    ctr: Rtnl,
    ctr_fd: int,
    br: int,
    ctr_index: int,
    result: dict[str, Any],
    undo: list[Callable[[], object]],
) -> None:
    if any(":" in ip["address"] for ip in result["ips"]) and not conf.enable_dad:
        with netops.in_netns(ctr_fd):
            for knob in ("enhanced_dad", "accept_dad"):
                # older kernels have no enhanced_dad; the reference ignores that too
                with contextlib.suppress(OSError):
                    netops.write_sysctl(f"net/ipv6/conf/{env.ifname}/{knob}", "0")
    netops.configure_container(ctr, ctr_index, result["ips"], result["routes"])
    if conf.is_gateway:
        families = set()
        for ip in result["ips"]:
            iface = ipaddress.ip_interface(ip["address"])
            gw = ipaddress.ip_interface(f"{ip['gateway']}/{iface.network.prefixlen}")
            netops.ensure_gateway_addr(host, br, conf.bridge, gw, conf.force_address)
            families.add(iface.version)
        for family in families:
            netops.write_sysctl(
                "net/ipv4/ip_forward" if family == 4 else "net/ipv6/conf/all/forwarding", "1"
            )
    if conf.ip_masq:
        chain = masq.chain_name(conf.name, env.container_id)
        undo.append(lambda: masq.teardown({chain}))
        masq.setup(conf.name, env.container_id, [ip["address"] for ip in result["ips"]])
    # Last, once the address is usable: tell neighbours (the reference does it too).
    addrs = [ipaddress.ip_interface(ip["address"]) for ip in result["ips"]]
    with netops.in_netns(ctr_fd):
        for addr in (str(a.ip) for a in addrs if a.version == 4):
            with contextlib.suppress(OSError):  # an announcement is best effort
                netops.gratuitous_arp(env.ifname, result["interfaces"][2]["mac"], addr)


def _drop_bridge_if_unused(host: Rtnl, br: int) -> None:
    if not netops.bridge_ports(host, br):
        host.del_link(br)


def cmd_del(env: Env, raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Best effort and idempotent: no netns, a gone netns, or nothing left are all fine."""
    conf = parse(raw, env)
    inflight.forget(conf.name, env.container_id, env.ifname)
    _teardown(conf, env, raw, environ)


def _teardown(conf: BridgeConf, env: Env, raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    host = Rtnl()
    try:
        had = _delete_container_link(env) if _sandbox_present(env) else []
        # The host end too: after kill -9 mid-ADD or a DEL without netns it may be all that is left.
        netops.delete_link(host, netops.host_veth_name(env.container_id, env.ifname))
    finally:
        host.close()
    if conf.ipam_type:
        delegate.run("DEL", raw, env, environ)
    if conf.mac_spoof_check:
        spoofcheck.teardown(spoofcheck.ref_id(env.container_id, env.ifname))
    if conf.ip_masq:
        if had:
            masq.teardown_known(conf.name, env.container_id, had)
        else:
            chain = masq.chain_name(conf.name, env.container_id)
            masq.teardown({chain}, _families(conf.prev_result))


def _sandbox_present(env: Env) -> bool:
    return env.netns_fd is not None or bool(env.netns and os.path.exists(env.netns))


def _delete_container_link(env: Env) -> list[str]:
    """Delete the sandbox end; return the global addresses it had (CIDR strings)."""
    try:
        ctr_fd = netops.open_sandbox(env)
    except CniError:
        return []
    try:
        with netops.ipr_in(ctr_fd) as ctr:
            index = netops.lookup(ctr, env.ifname)
            if index is None:
                return []
            had = [str(a) for a in netops.addresses(ctr, index)]
            netops.delete_link(ctr, env.ifname)
            return had
    finally:
        os.close(ctr_fd)


def _families(prev: dict[str, Any] | None) -> tuple[int, ...]:
    """IP families to clean: those of prevResult when the runtime sent one, else both."""
    ips = (prev or {}).get("ips") or []
    found = tuple(sorted({ipaddress.ip_interface(ip["address"]).version for ip in ips}))
    return found or (4, 6)


def cmd_check(env: Env, raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    conf = parse(raw, env)
    prev = conf.prev_result
    if not prev:
        raise CniError(INVALID_CONFIG, "Required prevResult missing")
    if conf.ipam_type:
        delegate.run("CHECK", raw, env, environ)
    ctr_fd = netops.open_sandbox(env)
    host = Rtnl()
    try:
        with netops.ipr_in(ctr_fd) as ctr:
            _check_container(ctr, env, prev)
        br = netops.lookup(host, conf.bridge)
        if br is None:
            raise CniError(INTERNAL, f'bridge "{conf.bridge}" not found')
        host_name = netops.host_veth_name(env.container_id, env.ifname)
        port = netops.lookup(host, host_name)
        if port is None or host.link_by_index(port).master != br:
            raise CniError(INTERNAL, f"host veth {host_name} is not a port of {conf.bridge}")
    finally:
        host.close()
        os.close(ctr_fd)


def _check_container(ctr: Rtnl, env: Env, prev: dict[str, Any]) -> None:
    index = netops.lookup(ctr, env.ifname)
    if index is None:
        raise CniError(INTERNAL, f"container interface {env.ifname} not found")
    wanted = [i for i in prev.get("interfaces", []) if i.get("sandbox") and i["name"] == env.ifname]
    if wanted and wanted[0].get("mac") and wanted[0]["mac"] != netops.mac_of(ctr, index):
        raise CniError(INTERNAL, f"interface {env.ifname} MAC differs from prevResult")
    have = {str(a) for a in netops.addresses(ctr, index)}
    for ip in prev.get("ips", []):
        if str(ipaddress.ip_interface(ip["address"])) not in have:
            raise CniError(INTERNAL, f"address {ip['address']} missing on {env.ifname}")


def cmd_gc(env: Env, raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Release what no valid attachment owns: IPAM reservations and masquerade chains."""
    conf = parse(raw, env)
    if conf.ipam_type:
        delegate.run("GC", raw, env, environ)
    valid = {a.get("containerID") for a in raw.get("cni.dev/valid-attachments") or []}
    stale: set[str] = set()
    for version in (4, 6):
        try:
            saved = masq.save(version)
        except CniError:
            continue
        stale |= {
            c for c, cid in masq.chains_of_network(saved, conf.name).items() if cid not in valid
        }
    if stale:
        masq.teardown(stale)
    _gc_veths(conf, raw.get("cni.dev/valid-attachments") or [])


def _gc_veths(conf: BridgeConf, valid: list[dict[str, Any]]) -> None:
    """Host ends left by a killed ADD: our derived names only, never someone else's port."""
    keep = {netops.host_veth_name(a.get("containerID", ""), a.get("ifname", "")) for a in valid}
    with Rtnl() as host:
        br = netops.lookup(host, conf.bridge)
        if br is None:
            return
        for name in netops.bridge_ports(host, br):
            if netops.is_our_veth(name) and name not in keep:
                netops.delete_link(host, name)


def cmd_status(env: Env, raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    conf = parse(raw, env)
    if conf.ipam_type:
        delegate.run("STATUS", raw, env, environ)


COMMANDS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "GC": cmd_gc, "STATUS": cmd_status}


def handle(env: Env, raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any] | None:
    return COMMANDS[env.command](env, raw, environ)
