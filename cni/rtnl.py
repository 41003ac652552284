"""A small synchronous rtnetlink client: the dozen requests the bridge plugin makes.

Why not pyroute2 here: measured on this machine, pyroute2 0.9's asyncio core costs
250-400 us of Python per request (an event loop turn per call) where the kernel answers in
10-20 us, and importing it costs ~110 ms; an ADD makes ~17 requests. This module packs the
messages with `struct` and does one `send` + `recv` per request, so the plugin's ADD is
dominated by the kernel's own work, and a plugin run without the agent starts in
milliseconds. Nothing else in netplane needed pyroute2 either, so it is not a dependency
(cni/README.md, "Speed").

A socket acts in the network namespace its creator was in when it was made (`in_netns`).
Errors are `OSError` with the kernel's errno (EEXIST gives FileExistsError, and so on).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

# message types and flags (linux/rtnetlink.h, linux/netlink.h)
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE = 24
NLMSG_ERROR, NLMSG_DONE = 2, 3
F_REQUEST, F_MULTI, F_ACK, F_DUMP = 0x1, 0x2, 0x4, 0x300
F_EXCL, F_CREATE = 0x200, 0x400
NLA_F_NESTED = 0x8000
SOL_NETLINK, NETLINK_GET_STRICT_CHK = 270, 12
# attributes
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER = 1, 3, 4, 10
IFLA_PROTINFO, IFLA_LINKINFO, IFLA_AF_SPEC, IFLA_NET_NS_FD = 12, 18, 26, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFLA_BR_VLAN_FILTERING = 7
IFLA_BRPORT_MODE, IFLA_BRPORT_ISOLATED = 4, 33
IFLA_BRIDGE_VLAN_INFO = 2
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST = 1, 2, 4
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
RT_TABLE_MAIN, RTN_UNICAST, RT_SCOPE_UNIVERSE = 254, 1, 0
RTPROT_BOOT = 3
IFF_UP, IFF_PROMISC = 0x1, 0x100
AF_BRIDGE = 7

_HDR = struct.Struct("=IHHII")  # nlmsghdr
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg
_IFADDR = struct.Struct("=BBBBi")  # ifaddrmsg
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg
_ATTR = struct.Struct("=HH")

Addr = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def attr(kind: int, data: bytes) -> bytes:
    size = _ATTR.size + len(data)
    return _ATTR.pack(size, kind) + data + b"\0" * (-size % 4)


def nested(kind: int, *attrs: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def u8(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=B", value))


def u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def string(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def parse_attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """type -> payload of each attribute (the nested flag masked off)."""
    out = {}
    while offset + _ATTR.size <= len(data):
        size, kind = _ATTR.unpack_from(data, offset)
        if size < _ATTR.size:
            break
        out[kind & 0x3FFF] = data[offset + _ATTR.size : offset + size]
        offset += (size + 3) & ~3
    return out


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


@dataclass(frozen=True, slots=True)
class Link:
    index: int
    name: str
    flags: int
    mac: str
    master: int
    kind: str


def _link(body: bytes) -> Link:
    _family, _type, index, flags, _change = _IFINFO.unpack_from(body)
    attrs = parse_attrs(body, _IFINFO.size)
    info = parse_attrs(attrs.get(IFLA_LINKINFO, b""))
    return Link(
        index=index,
        name=attrs.get(IFLA_IFNAME, b"\0").rstrip(b"\0").decode(),
        flags=flags,
        mac=mac_text(attrs.get(IFLA_ADDRESS, b"")),
        master=struct.unpack("=I", attrs[IFLA_MASTER])[0] if IFLA_MASTER in attrs else 0,
        kind=info.get(IFLA_INFO_KIND, b"").rstrip(b"\0").decode(),
    )


def _ifinfo(
    index: int = 0, family: int = socket.AF_UNSPEC, flags: int = 0, change: int = 0
) -> bytes:
    return _IFINFO.pack(family, 0, index, flags, change)


class Rtnl:
    """One NETLINK_ROUTE socket in the caller's current network namespace."""

    def __init__(self) -> None:
        self.sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
        )
        try:
            self.sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)  # filtered dumps
            self.sock.bind((0, 0))
        except BaseException:
            self.sock.close()
            raise
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, kind: int, flags: int, payload: bytes) -> list[bytes]:
        """Send one request; the bodies of the answers (a dump's many, an ACK's none)."""
        self.seq += 1
        seq = self.seq
        flags |= F_REQUEST | (0 if flags & F_DUMP == F_DUMP else F_ACK)
        self.sock.send(_HDR.pack(_HDR.size + len(payload), kind, flags, seq, 0) + payload)
        bodies: list[bytes] = []
        while True:
            data = self.sock.recv(1 << 20)
            offset = 0
            while offset + _HDR.size <= len(data):
                size, mtype, mflags, mseq, _pid = _HDR.unpack_from(data, offset)
                body = data[offset + _HDR.size : offset + size]
                offset += (size + 3) & ~3
                if mseq != seq:
                    continue  # a late answer to an earlier request
                if mtype == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", body)[0]
                    if code:
                        raise OSError(code, f"netlink: {os.strerror(code)}")
                    return bodies
                if mtype == NLMSG_DONE:
                    return bodies
                bodies.append(body)
                if not mflags & F_MULTI:
                    return bodies

    # -- links --------------------------------------------------------------------------
    def link(self, name: str) -> Link | None:
        """One RTM_GETLINK by name (a dump of every link would be slow with many pods)."""
        try:
            (body,) = self.request(RTM_GETLINK, 0, _ifinfo() + string(IFLA_IFNAME, name))
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                return None
            raise
        return _link(body)

    def link_by_index(self, index: int) -> Link:
        (body,) = self.request(RTM_GETLINK, 0, _ifinfo(index))
        return _link(body)

    def links(self) -> list[Link]:
        return [_link(b) for b in self.request(RTM_GETLINK, F_DUMP, _ifinfo())]

    def add_bridge(self, name: str, mtu: int = 0, vlan_filtering: bool = False) -> None:
        info = [string(IFLA_INFO_KIND, "bridge")]
        if vlan_filtering:
            info.append(nested(IFLA_INFO_DATA, u8(IFLA_BR_VLAN_FILTERING, 1)))
        attrs = string(IFLA_IFNAME, name) + nested(IFLA_LINKINFO, *info)
        if mtu:
            attrs += u32(IFLA_MTU, mtu)
        self.request(RTM_NEWLINK, F_CREATE | F_EXCL, _ifinfo() + attrs)

    def add_veth(
        self,
        name: str,
        peer: str,
        peer_netns_fd: int,
        master: int = 0,
        mtu: int = 0,
        peer_mac: str = "",
    ) -> None:
        """The pair in one request: this end up (and a port of `master`), the peer created
        directly in the namespace open as `peer_netns_fd`."""
        peer_attrs = string(IFLA_IFNAME, peer) + u32(IFLA_NET_NS_FD, peer_netns_fd)
        attrs = string(IFLA_IFNAME, name)
        if mtu:
            peer_attrs += u32(IFLA_MTU, mtu)
            attrs += u32(IFLA_MTU, mtu)
        if peer_mac:
            peer_attrs += attr(IFLA_ADDRESS, mac_bytes(peer_mac))
        if master:
            attrs += u32(IFLA_MASTER, master)
        peer_info = nested(VETH_INFO_PEER, _ifinfo() + peer_attrs)
        attrs += nested(
            IFLA_LINKINFO, string(IFLA_INFO_KIND, "veth"), nested(IFLA_INFO_DATA, peer_info)
        )
        self.request(RTM_NEWLINK, F_CREATE | F_EXCL, _ifinfo(flags=IFF_UP, change=IFF_UP) + attrs)

    def set_link(
        self, index: int, *, up: bool = False, promisc: bool = False, mac: str = ""
    ) -> None:
        flags = (IFF_UP if up else 0) | (IFF_PROMISC if promisc else 0)
        attrs = attr(IFLA_ADDRESS, mac_bytes(mac)) if mac else b""
        self.request(RTM_NEWLINK, 0, _ifinfo(index, flags=flags, change=flags) + attrs)

    def del_link(self, index: int) -> None:
        self.request(RTM_DELLINK, 0, _ifinfo(index))

    def set_port(self, index: int, hairpin: bool, isolated: bool) -> None:
        """Bridge port flags (IFLA_PROTINFO of an AF_BRIDGE RTM_SETLINK, as `bridge link`)."""
        opts = u8(IFLA_BRPORT_MODE, 1) if hairpin else b""
        if isolated:
            opts += u8(IFLA_BRPORT_ISOLATED, 1)
        self.request(RTM_SETLINK, 0, _ifinfo(index, AF_BRIDGE) + nested(IFLA_PROTINFO, opts))

    def port_vlan(self, index: int, vid: int, flags: int, add: bool) -> None:
        info = attr(IFLA_BRIDGE_VLAN_INFO, struct.pack("=HH", flags, vid))
        kind = RTM_SETLINK if add else RTM_DELLINK
        self.request(kind, 0, _ifinfo(index, AF_BRIDGE) + nested(IFLA_AF_SPEC, info))

    # -- addresses and routes -----------------------------------------------------------
    def addresses(self, index: int, version: int = 0) -> list[tuple[Addr, int]]:
        """(address, scope) of the link's addresses; `version` 4 or 6 filters in the kernel."""
        family = {4: socket.AF_INET, 6: socket.AF_INET6}.get(version, socket.AF_UNSPEC)
        found = []
        for body in self.request(RTM_GETADDR, F_DUMP, _IFADDR.pack(family, 0, 0, 0, index)):
            _fam, prefixlen, _flags, scope, ifindex = _IFADDR.unpack_from(body)
            attrs = parse_attrs(body, _IFADDR.size)
            raw = attrs.get(IFA_ADDRESS) or attrs.get(IFA_LOCAL)
            if ifindex != index or raw is None:
                continue  # an old kernel ignoring the filter
            ip = ipaddress.ip_address(raw)
            found.append((ipaddress.ip_interface(f"{ip}/{prefixlen}"), scope))
        return found

    def add_address(self, index: int, addr: Addr) -> None:
        """With the broadcast address for v4, as netlink-based tools set it."""
        family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
        packed = addr.ip.packed
        attrs = attr(IFA_LOCAL, packed) + attr(IFA_ADDRESS, packed)
        if addr.version == 4:
            attrs += attr(IFA_BROADCAST, addr.network.broadcast_address.packed)
        head = _IFADDR.pack(family, addr.network.prefixlen, 0, 0, index)
        self.request(RTM_NEWADDR, F_CREATE | F_EXCL, head + attrs)

    def del_address(self, index: int, addr: Addr) -> None:
        family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
        head = _IFADDR.pack(family, addr.network.prefixlen, 0, 0, index)
        self.request(RTM_DELADDR, 0, head + attr(IFA_LOCAL, addr.ip.packed))

    def add_route(self, dst: str, oif: int, gateway: str = "", proto: int = RTPROT_BOOT) -> None:
        net = ipaddress.ip_network(dst, strict=False)
        family = socket.AF_INET if net.version == 4 else socket.AF_INET6
        # scope universe with or without a gateway, as the Go netlink library (the reference)
        head = _RTMSG.pack(
            family, net.prefixlen, 0, 0, RT_TABLE_MAIN, proto, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0
        )
        attrs = u32(RTA_OIF, oif)
        if net.prefixlen:
            attrs += attr(RTA_DST, net.network_address.packed)
        if gateway:
            attrs += attr(RTA_GATEWAY, ipaddress.ip_address(gateway).packed)
        self.request(RTM_NEWROUTE, F_CREATE | F_EXCL, head + attrs)
