"""O(1) answers to "did anybody write to the packet filter since I last looked?".

Reading the rules back (`iptables-save`) costs seconds at 10k services, too much to do
every second; these ask the kernel for a number that changes with every write instead:
- nf_tables (the nft variant): the ruleset generation, which every committed transaction
  in the namespace increments (NFT_MSG_GETGEN over netlink, ~0.1 ms);
- x_tables (the legacy variant): each table's rule count and blob size
  (IPT_SO_GET_INFO / IP6T_SO_GET_INFO). A foreign edit that keeps both equal (one rule
  replaced by another of the same size) goes unseen until the periodic read-back.
The sockets are opened once, inside the namespace they watch.
"""

from __future__ import annotations

import contextlib
import ctypes
import socket
import struct
from collections.abc import Hashable

from netplane.netns import entered

_NETLINK_NETFILTER = 12
_NFNL_SUBSYS_NFTABLES = 10
_NFT_MSG_GETGEN = 16
_NFTA_GEN_ID = 1
_NLMSG_ERROR = 2
_SO_GET_INFO = 64  # IPT_SO_GET_INFO == IP6T_SO_GET_INFO
_GETINFO = struct.Struct("32s13I")  # name, valid_hooks, hook_entry[5], underflow[5], entries, size
_TABLES = ("nat", "filter", "mangle")
_libc = ctypes.CDLL(None, use_errno=True)


class Fingerprint:
    """`read()` -> a value that changes when the variant's tables change (None: unknown)."""

    def __init__(self, variant: str, family: str, netns: str | None = None) -> None:
        self.variant = variant
        self.family = family
        self.netns = netns
        self._sock: socket.socket | None = None
        self._seq = 0

    def read(self) -> Hashable | None:
        try:
            if self._sock is None:
                with entered(self.netns) if self.netns else contextlib.nullcontext():
                    self._sock = self._open()
            return self._nft_generation() if self.variant == "nft" else self._xt_info()
        except OSError:
            self.close()
            return None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _open(self) -> socket.socket:
        if self.variant == "nft":
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER)
            sock.bind((0, 0))
            sock.settimeout(2)
            return sock
        af = socket.AF_INET6 if self.family == "ipv6" else socket.AF_INET
        return socket.socket(af, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def _nft_generation(self) -> int:
        assert self._sock is not None
        self._seq += 1
        payload = struct.pack("BBH", socket.AF_UNSPEC, 0, 0)
        msg_type = (_NFNL_SUBSYS_NFTABLES << 8) | _NFT_MSG_GETGEN
        self._sock.send(struct.pack("=IHHII", 16 + len(payload), msg_type, 1, self._seq, 0)
                        + payload)  # fmt: skip
        data = self._sock.recv(65536)
        length, kind = struct.unpack_from("=IH", data)
        if kind == _NLMSG_ERROR:
            raise OSError(-struct.unpack_from("=i", data, 16)[0], "NFT_MSG_GETGEN failed")
        offset = 20  # nlmsghdr + nfgenmsg
        while offset + 4 <= length:
            size, attr = struct.unpack_from("=HH", data, offset)
            if attr & 0x3FFF == _NFTA_GEN_ID:
                return struct.unpack_from(">I", data, offset + 4)[0]
            offset += (size + 3) & ~3
        raise OSError(0, "NFT_MSG_GETGEN: no generation in the answer")

    def _xt_info(self) -> tuple[tuple[int, int] | None, ...]:
        assert self._sock is not None
        level = socket.IPPROTO_IPV6 if self.family == "ipv6" else socket.IPPROTO_IP
        out: list[tuple[int, int] | None] = []
        for table in _TABLES:
            buf = ctypes.create_string_buffer(table.encode().ljust(_GETINFO.size, b"\0"))
            size = ctypes.c_uint32(_GETINFO.size)
            if _libc.getsockopt(self._sock.fileno(), level, _SO_GET_INFO, buf,
                                ctypes.byref(size)) != 0:  # fmt: skip
                out.append(None)  # no such table (yet)
                continue
            fields = _GETINFO.unpack(buf.raw[: _GETINFO.size])
            out.append((fields[-2], fields[-1]))
        return tuple(out)
