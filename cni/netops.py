"""Netlink side effects of the bridge plugin, through pyroute2 (no `ip` subprocesses).

Every function takes the IPRoute handle of the namespace it acts in; `in_netns` switches only
the calling thread, so the agent can serve several requests at once.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import ipaddress
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2.iproute.linux import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from netplane.cni.spec import CONTAINER_UNKNOWN, INTERNAL, CniError

_CLONE_NEWNET = 0x40000000
_IFF_UP = 0x1
_IFF_PROMISC = 0x100
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


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


@contextmanager
def in_netns(fd: int) -> Iterator[None]:
    """Run the block with this thread in netns `fd`, then come back (also on errors)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def ipr_in(fd: int) -> IPRoute:
    """A netlink socket bound to netns `fd` (a socket keeps the netns it was created in)."""
    with in_netns(fd):
        return IPRoute()


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


def get_link(ipr: IPRoute, name: str) -> Any | None:
    """One RTM_GETLINK by name (a link_lookup would dump every link: slow with many pods)."""
    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise


def lookup(ipr: IPRoute, name: str) -> int | None:
    link = get_link(ipr, name)
    return None if link is None else int(link["index"])


def link_info(ipr: IPRoute, index: int) -> Any:
    return ipr.get_links(index)[0]


def ensure_bridge(
    ipr: IPRoute, name: str, mtu: int, promisc: bool, vlan_filtering: bool
) -> tuple[int, bool]:
    """The bridge's index, creating it if needed; True when this call created it."""
    created = False
    link = get_link(ipr, name)
    if link is None:
        spec: dict[str, Any] = {"ifname": name, "kind": "bridge"}
        if mtu:
            spec["mtu"] = mtu
        if vlan_filtering:
            spec["br_vlan_filtering"] = 1
        try:
            ipr.link("add", **spec)
            created = True
        except NetlinkError as exc:
            if exc.code == errno.EOPNOTSUPP and vlan_filtering:
                raise CniError(
                    INTERNAL,
                    f'failed to create bridge "{name}": vlan needs kernel bridge VLAN filtering',
                    str(exc),
                ) from None
            if exc.code != errno.EEXIST:  # a concurrent ADD won the race: use its bridge
                raise
        link = get_link(ipr, name)
        if link is None:
            raise CniError(INTERNAL, f"could not create bridge {name!r}")
        if created:
            # Pin the MAC, or the bridge takes its lowest port's MAC and changes as pods churn.
            ipr.link("set", index=link["index"], address=link.get_attr("IFLA_ADDRESS"))
    index = int(link["index"])
    if link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") != "bridge":
        raise CniError(INTERNAL, f'"{name}" already exists but is not a bridge')
    if promisc and not link["flags"] & _IFF_PROMISC:
        ipr.link("set", index=index, flags=_IFF_PROMISC, change=_IFF_PROMISC)
    if not link["flags"] & _IFF_UP:
        ipr.link("set", index=index, state="up")
    return index, created


def create_veth(
    host: IPRoute,
    ctr: IPRoute,
    ctr_fd: int,
    names: tuple[str, str],
    bridge: int,
    mtu: int,
    mac: str,
) -> tuple[Any, Any]:
    """The pair, made from the host side in one request: host end up and already a port of
    `bridge`, the peer created directly in the sandbox. Returns both links' messages."""
    host_name, ifname = names
    peer: dict[str, Any] = {"ifname": ifname, "net_ns_fd": ctr_fd}
    spec: dict[str, Any] = {
        "ifname": host_name,
        "kind": "veth",
        "peer": peer,
        "master": bridge,
        "state": "up",
    }
    if mtu:
        spec["mtu"] = peer["mtu"] = mtu
    if mac:
        peer["address"] = mac
    try:
        host.link("add", **spec)
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            which = ifname if get_link(ctr, ifname) is not None else host_name
            raise CniError(
                INTERNAL, f"container veth name provided ({which}) already exists"
            ) from None
        raise
    host_link, ctr_link = get_link(host, host_name), get_link(ctr, ifname)
    if host_link is None or ctr_link is None:
        raise CniError(INTERNAL, f"veth {host_name}/{ifname} vanished after creation")
    return host_link, ctr_link


def port_options(
    ipr: IPRoute, port: int, hairpin: bool, isolated: bool, vlan: int, preserve_default_vlan: bool
) -> None:
    if hairpin or isolated:
        opts = {"mode": int(hairpin)} if hairpin else {}
        if isolated:
            opts["isolated"] = 1
        ipr.brport("set", index=port, **opts)
    if vlan:
        ipr.vlan_filter("add", index=port, vlan_info={"vid": vlan, "flags": 6})  # PVID|UNTAGGED
        if not preserve_default_vlan:
            ipr.vlan_filter("del", index=port, vlan_info={"vid": 1})


def mac_of(ipr: IPRoute, index: int) -> str:
    return str(link_info(ipr, index).get_attr("IFLA_ADDRESS"))


def addresses(
    ipr: IPRoute, index: int, version: int = 0
) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    """Global addresses of a link; `version` lets the kernel filter the dump by family (the
    bridge carries a link-local v6 address per port, parsing those costs ms at 50 pods)."""
    family = {4: socket.AF_INET, 6: socket.AF_INET6}.get(version)
    found = ipr.get_addr(index=index, family=family) if family else ipr.get_addr(index=index)
    return [
        ipaddress.ip_interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
        for a in found
        if a.get_attr("IFA_ADDRESS") and a["scope"] == 0
    ]


def ensure_gateway_addr(
    ipr: IPRoute,
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
            ipr.addr("del", index=bridge, address=str(have.ip), prefixlen=have.network.prefixlen)
    try:
        add_address(ipr, bridge, gw)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def add_address(
    ipr: IPRoute, index: int, iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface
) -> None:
    """With the broadcast address for v4, as netlink-based tools (and the reference) set it."""
    spec: dict[str, Any] = {"address": str(iface.ip), "prefixlen": iface.network.prefixlen}
    if iface.version == 4:
        spec["broadcast"] = str(iface.network.broadcast_address)
    ipr.addr("add", index=index, **spec)


def configure_container(
    ipr: IPRoute, index: int, ips: list[dict[str, Any]], routes: list[dict[str, Any]]
) -> None:
    """Addresses, link up, then routes (a route needs its link up), like ipam.ConfigureIface."""
    for ip in ips:
        add_address(ipr, index, ipaddress.ip_interface(ip["address"]))
    ipr.link("set", index=index, state="up")
    for route in routes:
        dst = ipaddress.ip_network(route["dst"], strict=False)
        # proto "boot", the netlink library default the reference gets (pyroute2 says "static").
        spec: dict[str, Any] = {"dst": str(dst), "oif": index, "proto": "boot"}
        gw = route.get("gw") or _default_gw(ips, dst.version)
        if gw:
            spec["gateway"] = gw
        try:
            ipr.route("add", **spec)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:  # a second interface in the same sandbox and subnet
                raise


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
        + b"\xff" * 6
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


def delete_link(ipr: IPRoute, name: str) -> bool:
    index = lookup(ipr, name)
    if index is None:
        return False
    try:
        ipr.link("del", index=index)
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise
    return True


def bridge_ports(ipr: IPRoute, bridge: int) -> list[str]:
    return [
        link.get_attr("IFLA_IFNAME")
        for link in ipr.get_links()
        if link.get_attr("IFLA_MASTER") == bridge
    ]
