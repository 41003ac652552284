"""Netlink side effects of the bridge plugin, through rtnl.py (no `ip` subprocesses).

Every function takes the Rtnl socket of the namespace it acts in; `in_netns` switches only
the calling thread, so the agent can serve several requests at once.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import os
import socket
import threading
from typing import Any

from netplane._setns import entered as in_netns
from netplane.cni.rtnl import IFF_PROMISC, IFF_UP, Link, Rtnl
from netplane.cni.spec import CONTAINER_UNKNOWN, INTERNAL, CniError, Env


def open_sandbox(env: Env) -> int:
    """An fd on the sandbox's netns: a dup of the one the caller passed to the agent, or the
    CNI_NETNS path opened here."""
    if env.netns_fd is None:
        return open_netns(env.netns)
    fd = os.dup(env.netns_fd)
    try:
        _setns_check(fd)
    except OSError as exc:
        os.close(fd)
        raise CniError(
            CONTAINER_UNKNOWN, f"{env.netns} is not a network namespace", str(exc)
        ) from None
    return fd


def open_netns(path: str) -> int:
    """An fd on the sandbox's netns; a missing or wrong path is the caller's error."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise CniError(CONTAINER_UNKNOWN, f'failed to open netns "{path}"', str(exc)) from None
    try:
        _setns_check(fd)
    except OSError as exc:
        os.close(fd)
        raise CniError(CONTAINER_UNKNOWN, f"{path} is not a network namespace", str(exc)) from None
    return fd


def _setns_check(fd: int) -> None:
    # setns(2) into the namespace we are already in is a cheap way to validate the fd's type.
    with in_netns(fd):
        pass


def ipr_in(fd: int) -> Rtnl:
    """A netlink socket bound to netns `fd` (a socket keeps the netns it was created in)."""
    with in_netns(fd):
        return Rtnl()


def write_sysctl(name: str, value: str) -> None:
    """Write /proc/sys/<name> in this thread's netns; the path is resolved at open time."""
    with open(f"/proc/sys/{name}", "w") as f:
        f.write(value)


def host_veth_name(container_id: str, ifname: str) -> str:
    """Derived, not random: a DEL without the netns can still find (and remove) the host end."""
    return "veth" + hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()[:11]


def is_our_veth(name: str) -> bool:
    """The reference names host ends veth + 8 hex; ours are veth + 11 hex."""
    return len(name) == 15 and name.startswith("veth")


def lookup(ipr: Rtnl, name: str) -> int | None:
    link = ipr.link(name)
    return None if link is None else link.index


def ensure_bridge(
    ipr: Rtnl, name: str, mtu: int, promisc: bool, vlan_filtering: bool
) -> tuple[int, bool]:
    """The bridge's index, creating it if needed; True when this call created it."""
    created = False
    link = ipr.link(name)
    if link is None:
        try:
            ipr.add_bridge(name, mtu, vlan_filtering)
            created = True
        except OSError as exc:
            if exc.errno == errno.EOPNOTSUPP and vlan_filtering:
                raise CniError(
                    INTERNAL,
                    f'failed to create bridge "{name}": vlan needs kernel bridge VLAN filtering',
                    str(exc),
                ) from None
            if exc.errno != errno.EEXIST:  # a concurrent ADD won the race: use its bridge
                raise
        link = ipr.link(name)
        if link is None:
            raise CniError(INTERNAL, f"could not create bridge {name!r}")
        if created:
            # Pin the MAC, or the bridge takes its lowest port's MAC and changes as pods churn.
            ipr.set_link(link.index, mac=link.mac)
    if link.kind != "bridge":
        raise CniError(INTERNAL, f'"{name}" already exists but is not a bridge')
    if promisc and not link.flags & IFF_PROMISC:
        ipr.set_link(link.index, promisc=True)
    if not link.flags & IFF_UP:
        ipr.set_link(link.index, up=True)
    return link.index, created


def create_veth(
    host: Rtnl,
    ctr: Rtnl,
    ctr_fd: int,
    names: tuple[str, str],
    bridge: int,
    mtu: int,
    mac: str,
) -> tuple[Link, Link]:
    """The pair, made from the host side in one request: host end up and already a port of
    `bridge`, the peer created directly in the sandbox. Returns both links."""
    host_name, ifname = names
    try:
        host.add_veth(host_name, ifname, ctr_fd, master=bridge, mtu=mtu, peer_mac=mac)
    except FileExistsError:
        which = ifname if ctr.link(ifname) is not None else host_name
        raise CniError(INTERNAL, f"container veth name provided ({which}) already exists") from None
    host_link, ctr_link = host.link(host_name), ctr.link(ifname)
    if host_link is None or ctr_link is None:
        raise CniError(INTERNAL, f"veth {host_name}/{ifname} vanished after creation")
    return host_link, ctr_link


def port_options(
    ipr: Rtnl, port: int, hairpin: bool, isolated: bool, vlan: int, preserve_default_vlan: bool
) -> None:
    if hairpin or isolated:
        ipr.set_port(port, hairpin, isolated)
    if vlan:
        ipr.port_vlan(port, vlan, 6, add=True)  # PVID|UNTAGGED
        if not preserve_default_vlan:
            ipr.port_vlan(port, 1, 0, add=False)


def mac_of(ipr: Rtnl, index: int) -> str:
    return ipr.link_by_index(index).mac


def addresses(
    ipr: Rtnl, index: int, version: int = 0
) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    """Global addresses of a link; `version` lets the kernel filter the dump by family (the
    bridge carries a link-local v6 address per port, parsing those costs ms at 50 pods)."""
    return [a for a, scope in ipr.addresses(index, version) if scope == 0]


def ensure_gateway_addr(
    ipr: Rtnl,
    bridge: int,
    bridge_name: str,
    gw: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
    force: bool,
) -> None:
    """The reference's ensureAddr: one v4 address per bridge, v6 ones must not overlap."""
    for have in addresses(ipr, bridge, gw.version):
        if have == gw:
            return
        if gw.version == 4 or gw.ip in have.network or have.ip in gw.network:
            if not force:
                raise CniError(
                    INTERNAL, f'"{bridge_name}" already has an IP address different from {gw}'
                )
            ipr.del_address(bridge, have)
    with contextlib.suppress(FileExistsError):
        ipr.add_address(bridge, gw)


def configure_container(
    ipr: Rtnl, index: int, ips: list[dict[str, Any]], routes: list[dict[str, Any]]
) -> None:
    """Addresses, link up, then routes (a route needs its link up), like ipam.ConfigureIface."""
    for ip in ips:
        ipr.add_address(index, ipaddress.ip_interface(ip["address"]))
    ipr.set_link(index, up=True)
    for route in routes:
        dst = ipaddress.ip_network(route["dst"], strict=False)
        gw = route.get("gw") or _default_gw(ips, dst.version)
        # proto "boot", the Go netlink library's default that the reference gets
        with contextlib.suppress(FileExistsError):  # a second interface in the same subnet
            ipr.add_route(str(dst), index, gw or "")


def _default_gw(ips: list[dict[str, Any]], version: int) -> str:
    for ip in ips:
        gw = ip.get("gateway")
        if gw and ipaddress.ip_address(gw).version == version:
            return str(gw)
    return ""


def gratuitous_arp(ifname: str, mac: str, ip: str) -> None:
    """Announce `ip` at `mac` on `ifname` (this thread's netns), as the reference does after
    ADD, so neighbours drop a stale entry left by a previous holder of the address."""
    hw = bytes.fromhex(mac.replace(":", ""))
    addr = socket.inet_aton(ip)
    frame = (
        b"\xff" * 6
        + hw
        + b"\x08\x06"  # Ethernet: broadcast, from us, ARP
        + b"\x00\x01\x08\x00\x06\x04\x00\x01"  # Ethernet/IPv4, request
        + hw
        + addr
        + b"\x00" * 6  # target hardware address: zero, as the reference sends (RFC 5227)
        + addr  # sender = target = the new address
    )
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        sock.bind((ifname, 0))
        sock.send(frame)
    finally:
        # Closing a packet socket waits for an RCU grace period (10-14 ms measured): do it
        # off the request's path.
        threading.Thread(target=sock.close, daemon=True).start()


def delete_link(ipr: Rtnl, name: str) -> bool:
    link = ipr.link(name)
    if link is None:
        return False
    try:
        ipr.del_link(link.index)
    except OSError as exc:
        if exc.errno != errno.ENODEV:
            raise
    return True


def bridge_ports(ipr: Rtnl, bridge: int) -> list[str]:
    return [link.name for link in ipr.links() if link.master == bridge]
