"""Statements -> nf_tables expressions, in exactly the bytes the kernel dumps back.

Each rule becomes the payload of NFTA_RULE_EXPRESSIONS the way `nft` would build it (same
expressions, registers and attribute order as `nft --debug=netlink` shows), so `nft list`
prints our rules as if nft had added them, and verifying a rule is a bytes comparison with
the kernel's dump (tests load the same rule both ways and compare).

Values: addresses and ports in network order, marks, numgen results, ct states and fib
results in host order, as the kernel registers hold them.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from netplane.proxy.nft._model import (
    DISPATCH_IP,
    Addr,
    Dnat,
    Element,
    FibLocal,
    InSet,
    Keyword,
    Mark,
    Numgen,
    Port,
    Proto,
    Rule,
    Statement,
    Update,
    Verdict,
    VMap,
)

NFPROTO = {"ip": 2, "ip6": 10}
PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}
VERDICTS = {"drop": 0, "accept": 1, "jump": -3, "goto": -4, "return": -5}

_HDR = struct.Struct("=HH")
_BE32 = struct.Struct(">I")
_BE32S = struct.Struct(">i")
_HOST32 = struct.Struct("=I")
_BE16 = struct.Struct(">H")


def attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return _HDR.pack(size, kind) + payload + b"\0" * (-size % 4)


def u32(kind: int, value: int) -> bytes:
    return _HDR.pack(8, kind) + _BE32.pack(value)


def string(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def udata_comment(comment: str) -> bytes:
    """nft's comment TLV (type 0: NFTNL_UDATA_*_COMMENT), NUL included."""
    raw = comment.encode() + b"\0"
    if len(raw) > 255:  # nft's limit (a one-byte length)
        raw = raw[:254] + b"\0"
    return bytes((0, len(raw))) + raw


# ---- expressions (kernel dump form) --------------------------------------------------------

_LIST_ELEM = 1
_EXPR_NAME, _EXPR_DATA = 1, 2


def _expr(name: str, *attrs: bytes) -> bytes:
    return attr(_LIST_ELEM, string(_EXPR_NAME, name) + attr(_EXPR_DATA, b"".join(attrs)))


def _value(kind: int, data: bytes) -> bytes:
    return attr(kind, attr(1, data))  # NFTA_DATA_VALUE inside


@lru_cache(maxsize=256)
def payload(base: int, offset: int, length: int, dreg: int = 1) -> bytes:
    return _expr("payload", u32(1, dreg), u32(2, base), u32(3, offset), u32(4, length))


def cmp(data: bytes, negate: bool = False, sreg: int = 1) -> bytes:
    return _expr("cmp", u32(1, sreg), u32(2, 1 if negate else 0), _value(3, data))


@lru_cache(maxsize=64)
def meta_load(key: int, dreg: int = 1) -> bytes:
    return _expr("meta", u32(2, key), u32(1, dreg))


def bitwise(mask: bytes, xor: bytes, reg: int = 1) -> bytes:
    return _expr(
        "bitwise",
        u32(1, reg),
        u32(2, reg),
        u32(3, len(mask)),
        u32(6, 0),
        _value(4, mask),
        _value(5, xor),
    )


def lookup(set_name: str, sreg: int = 1, dreg: int | None = None, invert: bool = False) -> bytes:
    attrs = [string(1, set_name), u32(2, sreg)]
    if dreg is not None:
        attrs.append(u32(3, dreg))
    attrs.append(u32(5, 1 if invert else 0))
    return _expr("lookup", *attrs)


def verdict_data(kind: str, chain: str | None) -> bytes:
    """NFTA_DATA_VERDICT's content (also the data of a verdict map element)."""
    inner = _BE32S.pack(VERDICTS[kind])
    body = _HDR.pack(8, 1) + inner
    if chain:
        body += string(2, chain)
    return attr(2, body)


@lru_cache(maxsize=1 << 16)
def verdict(kind: str, chain: str | None = None) -> bytes:
    return _expr("immediate", u32(1, 0), attr(2, verdict_data(kind, chain)))


def immediate(dreg: int, data: bytes) -> bytes:
    return _expr("immediate", u32(1, dreg), _value(2, data))


_META_MARK, _META_L4PROTO = 3, 16
_BASE_NETWORK, _BASE_TRANSPORT = 1, 2
_CMP_RTN_LOCAL = _HOST32.pack(2)
_FIB_SADDR, _FIB_DADDR, _FIB_ADDRTYPE = 1, 2, 3
_CT_STATE_NEW = 8
_ALL_ONES = b"\xff\xff\xff\xff"


@lru_cache(maxsize=8)
def _l4proto(proto: str) -> bytes:
    return meta_load(_META_L4PROTO) + cmp(bytes((PROTOCOLS[proto],)))


@lru_cache(maxsize=8)
def _fib(field: str) -> bytes:
    flags = _FIB_SADDR if field == "saddr" else _FIB_DADDR
    return _expr("fib", u32(1, 1), u32(2, _FIB_ADDRTYPE), u32(3, flags)) + cmp(_CMP_RTN_LOCAL)


_CT_NEW = (
    _expr("ct", u32(1, 1), u32(2, 0))
    + bitwise(_HOST32.pack(_CT_STATE_NEW), _HOST32.pack(0))
    + cmp(_HOST32.pack(0), negate=True)
)
_MASQ = _expr("masq", u32(1, 0x10))  # NF_NAT_RANGE_PROTO_RANDOM_FULLY
_DISPATCH_IP_KEY = {  # ip daddr . meta l4proto . th dport -> registers 1, 9, 10
    4: payload(_BASE_NETWORK, 16, 4)
    + meta_load(_META_L4PROTO, 9)
    + payload(_BASE_TRANSPORT, 2, 2, 10),
    16: payload(_BASE_NETWORK, 24, 16)  # ip6 daddr: registers 1 (16 bytes), 2, 13
    + meta_load(_META_L4PROTO, 2)
    + payload(_BASE_TRANSPORT, 2, 2, 13),
}
_DISPATCH_PORT_KEY = meta_load(_META_L4PROTO) + payload(_BASE_TRANSPORT, 2, 2, 9)


@lru_cache(maxsize=1 << 12)
def _addr_match(field: str, value: str, negate: bool) -> bytes:
    """`ip saddr 10.0.0.0/8` as nft builds it: a byte-aligned prefix loads only its bytes;
    any other loads the whole address and masks it."""
    net = ipaddress.ip_network(value, strict=False)
    size = 4 if net.version == 4 else 16
    offset = (12 if field == "saddr" else 16) if size == 4 else (8 if field == "saddr" else 24)
    plen = net.prefixlen
    if plen % 8 == 0:
        nbytes = plen // 8
        return payload(_BASE_NETWORK, offset, nbytes) + cmp(
            net.network_address.packed[:nbytes], negate
        )
    return (
        payload(_BASE_NETWORK, offset, size)
        + bitwise(net.netmask.packed, bytes(size))
        + cmp(net.network_address.packed, negate)
    )


def _dnat_template(family: str) -> tuple[bytes, bytes, bytes]:
    """`dnat to IP:PORT` as (before the address, between address and port, after the port)."""
    size = 16 if family == "ip6" else 4
    marker_ip, marker_port = b"\xa5" * size, b"\x5a\x5a"
    whole = (
        immediate(1, marker_ip)
        + immediate(2, marker_port)
        + _expr(
            "nat",
            u32(1, 1),  # NFT_NAT_DNAT
            u32(2, NFPROTO[family]),
            u32(3, 1),
            u32(4, 1),
            u32(5, 2),
            u32(6, 2),
            u32(7, 3),  # NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED
        )
    )
    a = whole.index(marker_ip)
    b = whole.index(marker_port, a + size)
    return whole[:a], whole[a + size : b], whole[b + 2 :]


def _exact_template(field: str, family: str) -> tuple[bytes, bytes]:
    """`ip saddr ADDR` (a whole address) as (before the address, after it)."""
    size = 16 if family == "ip6" else 4
    marker = b"\xa5" * size
    whole = _addr_load(field, family) + cmp(marker)
    at = whole.index(marker)
    return whole[:at], whole[at + size :]


@lru_cache(maxsize=4)
def _addr_load(field: str, family: str) -> bytes:
    if family == "ip6":
        return payload(_BASE_NETWORK, 8 if field == "saddr" else 24, 16)
    return payload(_BASE_NETWORK, 12 if field == "saddr" else 16, 4)


_VERDICT_HEADS = {kind: verdict(kind) for kind in VERDICTS}


def _verdict(s: Verdict) -> bytes:
    chain = s.chain
    if chain is None:
        return _VERDICT_HEADS[s.kind]
    # the most frequent expression (a goto to every endpoint chain): everything before the
    # chain's name depends only on the verdict and the name's length
    name = chain.encode()
    head = _verdict_head(s.kind, len(name))
    return head + name + _PADS[len(name) % 4]


_PADS = [b"\0" * (4 - n % 4) if n % 4 else b"\0\0\0\0" for n in range(4)]  # NUL + align


@lru_cache(maxsize=1024)
def _verdict_head(kind: str, length: int) -> bytes:
    """immediate { DREG 0, DATA { VERDICT { CODE, CHAIN header } } } for a chain name of
    LENGTH bytes (then comes the name, its NUL and padding)."""
    chain_attr = 4 + length + 1
    padded = (chain_attr + 3) & ~3
    verdict_len = 4 + 8 + padded
    data_len = 4 + verdict_len
    expr_data_len = 4 + 8 + data_len
    return (
        _IMM_HEAD.pack(20 + expr_data_len, 1, 14, 1)
        + b"immediate\0\0\0"
        + _IMM_BODY.pack(expr_data_len, 2, 8, 1, 0, data_len, 2, verdict_len, 2, 8, 1)
        + _BE32S.pack(VERDICTS[kind])
        + _HDR.pack(chain_attr, 2)
    )


_IMM_HEAD = struct.Struct("=HHHH")  # list elem, expr name attr
_IMM_BODY = struct.Struct("=HHHHIHHHHHH")  # expr data, dreg, data, verdict, code header


class _Encoder:
    """Statement -> expression bytes for one family; the repeating statements are cached."""

    def __init__(self, family: str) -> None:
        self.family = family
        self.inet = socket.AF_INET6 if family == "ip6" else socket.AF_INET
        self.dnat = _dnat_template(family)
        self.exact = {f: _exact_template(f, family) for f in ("saddr", "daddr")}
        self.size = 16 if family == "ip6" else 4
        self.cached: dict[tuple[type, Statement], bytes] = {}
        self.by_type: dict[type, Callable[[Any], bytes]] = {
            Verdict: _verdict,
            Addr: self.addr,
            Dnat: self.dnat_to,
            Proto: self.memo,
            Port: self.memo,
            Numgen: self.memo,
            VMap: self.memo,
            InSet: self.memo,
            Update: self.memo,
            FibLocal: self.memo,
            Mark: self.memo,
            Keyword: self.memo,
        }

    def rule(self, rule: Rule) -> bytes:
        by_type = self.by_type
        return b"".join([by_type[type(s)](s) for s in rule.stmts])

    def addr(self, s: Addr) -> bytes:
        value = s.value
        if "/" in value or s.negate:
            return _addr_match(s.field, value, s.negate)
        before, after = self.exact[s.field]
        return before + socket.inet_pton(self.inet, value) + after

    def dnat_to(self, s: Dnat) -> bytes:
        before, between, after = self.dnat
        return before + socket.inet_pton(self.inet, s.ip) + between + _BE16.pack(s.port) + after

    def memo(self, s: Statement) -> bytes:
        key = (type(s), s)
        hit = self.cached.get(key)
        if hit is None:
            if len(self.cached) > 4096:
                self.cached.clear()
            hit = self.cached[key] = _generic(s, self.family)
        return hit


def _generic(s: Statement, family: str) -> bytes:
    if isinstance(s, Numgen):
        return _expr("numgen", u32(1, 1), u32(2, s.mod), u32(3, 1), u32(4, 0)) + cmp(
            _HOST32.pack(s.value)
        )
    if isinstance(s, Port):
        return _l4proto(s.proto) + payload(_BASE_TRANSPORT, 2, 2) + cmp(_BE16.pack(s.port))
    if isinstance(s, Proto):
        return _l4proto(s.proto)
    if isinstance(s, VMap):
        if s.key == DISPATCH_IP:
            return _DISPATCH_IP_KEY[16 if family == "ip6" else 4] + lookup(s.map, 1, 0)
        return _DISPATCH_PORT_KEY + lookup(s.map, 1, 0)
    if isinstance(s, InSet):
        return _addr_load(s.field, family) + lookup(s.set)
    if isinstance(s, Update):
        return _addr_load(s.field, family) + _expr(
            "dynset", u32(4, 1), u32(3, 1), string(1, s.set), attr(6, bytes(8)), u32(9, 0)
        )
    if isinstance(s, FibLocal):
        return _fib(s.field)
    if isinstance(s, Mark):
        return _MARK[s.op](s.mark)
    if isinstance(s, Keyword):
        if s.text == "ct state new":
            return _CT_NEW
        if s.text == "masquerade fully-random":
            return _MASQ
        if s.text == "reject":
            # ICMP port unreachable (3) / ICMPv6 port unreachable (4)
            return _expr("reject", u32(1, 0), attr(2, bytes((4 if family == "ip6" else 3,))))
    raise TypeError(f"not an nftables statement: {s!r}")


_SET_MARK = _expr("meta", u32(2, _META_MARK), u32(3, 1))
_MARK: dict[str, Callable[[int], bytes]] = {
    "or": lambda m: (
        meta_load(_META_MARK) + bitwise(_HOST32.pack(~m & 0xFFFFFFFF), _HOST32.pack(m)) + _SET_MARK
    ),
    "xor": lambda m: meta_load(_META_MARK) + bitwise(_ALL_ONES, _HOST32.pack(m)) + _SET_MARK,
    "unset": lambda m: (
        meta_load(_META_MARK) + bitwise(_HOST32.pack(m), _HOST32.pack(0)) + cmp(_HOST32.pack(0))
    ),
}

_ENCODERS: dict[str, _Encoder] = {}


def encoder(family: str) -> _Encoder:
    enc = _ENCODERS.get(family)
    if enc is None:
        enc = _ENCODERS[family] = _Encoder(family)
    return enc


def rule_exprs(rule: Rule, family: str) -> bytes:
    """The NFTA_RULE_EXPRESSIONS payload of RULE."""
    return encoder(family).rule(rule)


# ---- set keys and elements -----------------------------------------------------------------

# nft's type ids and sizes (the key's fields are padded to 4 bytes each)
_TYPES = {"verdict": 1, "ipv4_addr": 7, "ipv6_addr": 8, "inet_proto": 12, "inet_service": 13}
_SIZES = {"ipv4_addr": 4, "ipv6_addr": 16, "inet_proto": 4, "inet_service": 4}


def key_type(key: str) -> tuple[int, int]:
    """(NFTA_SET_KEY_TYPE, NFTA_SET_KEY_LEN) of nft's type expression KEY."""
    type_id = length = 0
    for part in key.split(" . "):
        type_id = (type_id << 6) | _TYPES[part]
        length += _SIZES[part]
    return type_id, length


def key_bytes(fields: tuple[str, ...] | bytes) -> bytes:
    """An element key: addresses, protocols (`tcp`) and ports, each padded to 4 bytes
    (bytes: a key as the kernel dumped it)."""
    if isinstance(fields, bytes):
        return fields
    return _key_bytes(fields)


@lru_cache(maxsize=1 << 17)
def _key_bytes(fields: tuple[str, ...]) -> bytes:
    out = b""
    for f in fields:
        if f in PROTOCOLS:
            out += bytes((PROTOCOLS[f], 0, 0, 0))
        elif f.isdigit():
            out += _BE16.pack(int(f)) + b"\0\0"
        else:
            out += socket.inet_pton(socket.AF_INET6 if ":" in f else socket.AF_INET, f)
    return out


def element(e: Element, with_data: bool = True) -> bytes:
    """One NFTA_LIST_ELEM of NFTA_SET_ELEM_LIST_ELEMENTS (KEY, DATA, USERDATA)."""
    key = key_bytes(e.key)
    body = _HDR.pack(8 + len(key), 1) + _HDR.pack(4 + len(key), 1) + key  # keys: 4n bytes
    if with_data and e.verdict is not None:
        body += attr(2, verdict_data(e.verdict.kind, e.verdict.chain))
    if with_data and e.comment is not None:
        body += attr(6, udata_comment(e.comment))
    return _HDR.pack(4 + len(body), _LIST_ELEM) + body
