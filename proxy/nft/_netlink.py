"""nf_tables over netlink: one batch per transaction, dumps for the read-back.

`Batch` collects the messages of one transaction (tables, chains, rules, sets, elements);
`Netlink.commit(batch)` sends it in one `sendmsg` and raises `NftError` naming the first
message the kernel refused (nothing is applied then: a batch is atomic). The kernel works
through a batch inside that `sendmsg`, so its answers are already queued when the call
returns. Only errors are answered (no per-message ACK), so a 20 MB full load costs one
system call and one read.

Why not libnftables (Debian's python3-nftables) or pyroute2: libnftables re-reads the whole
ruleset into its cache on every call after the ruleset changed (measured: 0.5-2 s for one
element at 10k services); pyroute2's nftables messages cost ~0.5 ms each to encode (a full
load at 10k services is ~200k messages). proxy/README.md has the figures.
"""

from __future__ import annotations

import bisect
import errno
import os
import select
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from netplane.proxy.nft._exprs import (
    NFPROTO,
    attr,
    element,
    key_type,
    string,
    u32,
    udata_comment,
)
from netplane.proxy.nft._model import Element, Hook, SetDef

NETLINK_NETFILTER = 12
_SUBSYS = 10 << 8  # NFNL_SUBSYS_NFTABLES
NEWTABLE, GETTABLE, DELTABLE = 0, 1, 2
NEWCHAIN, GETCHAIN, DELCHAIN = 3, 4, 5
NEWRULE, GETRULE, DELRULE = 6, 7, 8
NEWSET, GETSET, DELSET = 9, 10, 11
NEWSETELEM, GETSETELEM, DELSETELEM = 12, 13, 14
NEWGEN, GETGEN = 15, 16
_BATCH_BEGIN, _BATCH_END = 0x10, 0x11
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_F_REQUEST, _F_ACK, _F_ECHO, _F_DUMP = 0x1, 0x4, 0x8, 0x300
_F_CREATE, _F_APPEND = 0x400, 0x800
_SOL_NETLINK, _NETLINK_CAP_ACK, _NETLINK_EXT_ACK = 270, 10, 11

_NEW_GENERATION = -1  # not an errno: marks the echoed NEWGEN among the answers
_HOOKS = {"prerouting": 0, "input": 1, "forward": 2, "output": 3, "postrouting": 4}
_NLHDR = struct.Struct("=IHHII")
_HEAD = struct.Struct("=IHHIIBBH")  # netlink header + nfgenmsg (version 0, res_id 0)
_HDR4 = struct.Struct("=HH")
_NFGEN = struct.Struct("=BBH")
_MAX_LIST = 60000  # bytes of elements per NEWSETELEM message


class NftError(RuntimeError):
    """The kernel refused a batch (nothing of it was applied) or a request."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.errno = code


@dataclass(frozen=True, slots=True)
class Dumped:
    """One object of a dump: its attributes by type (nested ones left as bytes)."""

    attrs: dict[int, bytes]

    def str(self, kind: int) -> str:
        return self.attrs[kind].rstrip(b"\0").decode()


def parse_attrs(data: bytes | memoryview, offset: int = 0, end: int | None = None) -> dict:
    """{type: payload} of a run of netlink attributes (the nested flag masked off)."""
    out = {}
    end = len(data) if end is None else end
    unpack = struct.unpack_from
    while offset + 4 <= end:
        size, kind = unpack("=HH", data, offset)
        if size < 4:
            break
        out[kind & 0x3FFF] = bytes(data[offset + 4 : offset + size])
        offset += (size + 3) & ~3
    return out


def list_elems(data: bytes) -> list[bytes]:
    """The NFTA_LIST_ELEM payloads of a list attribute, in order."""
    out = []
    offset, unpack = 0, struct.unpack_from
    while offset + 4 <= len(data):
        size, _ = unpack("=HH", data, offset)
        if size < 4:
            break
        out.append(data[offset + 4 : offset + size])
        offset += (size + 3) & ~3
    return out


class Batch:
    """The messages of one transaction, in order. Methods mirror nft commands."""

    def __init__(self, family: str, table: str) -> None:
        self.family = family
        self._nfproto = NFPROTO[family]
        self._buf = bytearray()  # the messages, back to back (no list of 200k parts)
        self._what: list[tuple[str, str]] = []  # per message (shared by a chain's rules)
        self._tables: list[tuple[int, str]] = []  # (first message, table) for error reports
        self.bytes = 0
        self.use(table)

    def use(self, table: str) -> None:
        """The table the next messages are about (a transaction may span tables)."""
        self.table = table
        self._tables.append((len(self._what), table))
        self._table_attr = string(1, table)  # NFTA_*_TABLE is attribute 1 everywhere

    def __len__(self) -> int:
        return len(self._what)

    def _add(self, kind: int, flags: int, body: bytes, what: tuple[str, str]) -> None:
        # message i carries sequence number i + 1 (the batch's begin is 0): answers name
        # the message they are about by it
        seq = len(self._what) + 1
        if seq == 1:
            flags |= _F_ECHO  # the kernel then tells us the generation it made (it reads the
            # flag off the first message after the batch's begin)
        size = 20 + len(body)
        self._buf += _HEAD.pack(
            size, _SUBSYS | kind, _F_REQUEST | flags, seq, 0, self._nfproto, 0, 0
        )
        self._buf += body
        self._what.append(what)
        self.bytes += size

    # -- tables
    def add_table(self, comment: str | None = None) -> None:
        body = string(1, self.table) + u32(2, 0)
        if comment is not None:
            body += attr(6, udata_comment(comment))
        self._add(NEWTABLE, _F_CREATE, body, ("add table", self.table))

    def delete_table(self) -> None:
        self._add(DELTABLE, 0, string(1, self.table), ("delete table", self.table))

    # -- chains
    def add_chain(self, name: str, hook: Hook | None = None, comment: str | None = None) -> None:
        body = self._table_attr + string(3, name)
        if hook is not None:
            body += attr(4, u32(1, _HOOKS[hook.hook]) + _int32(2, hook.priority))
            body += u32(5, 1) + string(7, hook.type)  # policy accept
        if comment is not None:
            body += attr(12, udata_comment(comment))
        self._add(NEWCHAIN, _F_CREATE, body, ("add chain", name))

    def flush_chain(self, name: str) -> None:
        self._add(DELRULE, 0, self._table_attr + string(2, name), ("flush chain", name))

    def delete_chain(self, name: str) -> None:
        self._add(DELCHAIN, 0, self._table_attr + string(3, name), ("delete chain", name))

    def add_rule(self, chain: str, exprs: bytes, comment: str | None = None) -> None:
        self.add_rules(chain, [(exprs, comment)])

    def add_rules(self, chain: str, rules: list[tuple[bytes, str | None]]) -> None:
        """Rules appended to CHAIN: (NFTA_RULE_EXPRESSIONS payload, comment) each."""
        head = self._table_attr + string(2, chain)
        what = ("add rule", chain)
        for exprs, comment in rules:
            body = head + _HDR4.pack(4 + len(exprs), 4) + exprs  # exprs: 4-byte aligned
            if comment is not None:
                body += attr(7, udata_comment(comment))
            self._add(NEWRULE, _F_CREATE | _F_APPEND, body, what)

    # -- sets and maps
    def add_set(self, s: SetDef) -> None:
        type_id, key_len = key_type(s.key)
        flags = (0x8 if s.map else 0) | (0x30 if s.timeout else 0)  # MAP; TIMEOUT|EVAL
        body = self._table_attr + string(2, s.name)
        if flags:
            body += u32(3, flags)
        body += u32(4, type_id) + u32(5, key_len)
        if s.map:
            body += u32(6, 0xFFFFFF00) + u32(7, 16)  # NFT_DATA_VERDICT
        if s.timeout:
            body += attr(11, struct.pack(">Q", s.timeout * 1000))
            body += attr(9, u32(1, 65535))  # NFTA_SET_DESC_SIZE, as nft sets for dynamic sets
        body += attr(13, set_udata(s))
        body += u32(10, len(self._what) + 1)  # NFTA_SET_ID: the kernel wants one, any
        self._add(NEWSET, _F_CREATE, body, ("add set", s.name))

    def delete_set(self, name: str) -> None:
        self._add(DELSET, 0, self._table_attr + string(2, name), ("delete set", name))

    def add_elements(self, set_name: str, elements: list[Element]) -> None:
        self.add_encoded_elements(set_name, [element(e) for e in elements])

    def add_encoded_elements(self, set_name: str, encoded: list[bytes]) -> None:
        """Elements already encoded (`_exprs.element`)."""
        self._elements(NEWSETELEM, _F_CREATE, set_name, encoded, "add element")

    def delete_elements(self, set_name: str, elements: list[Element]) -> None:
        encoded = [element(e, with_data=False) for e in elements]
        self._elements(DELSETELEM, 0, set_name, encoded, "delete element")

    def _elements(
        self, kind: int, flags: int, set_name: str, elements: list[bytes], verb: str
    ) -> None:
        head = self._table_attr + string(2, set_name)
        what = (verb, set_name)
        chunk: list[bytes] = []
        size = 0
        for encoded in elements:
            if size + len(encoded) > _MAX_LIST:  # an attribute's length is 16 bits
                self._add(kind, flags, head + attr(3, b"".join(chunk)), what)
                chunk, size = [], 0
            chunk.append(encoded)
            size += len(encoded)
        if chunk:
            self._add(kind, flags, head + attr(3, b"".join(chunk)), what)

    def framed(self, genid: int = 0) -> list[bytes | bytearray]:
        """The batch as sent (one buffer each): begin, our messages (numbered 1..n), end.
        GENID (not 0): the kernel refuses the batch with ERESTART unless the ruleset is
        still at that generation (nobody committed since we last looked)."""
        begin = _batch_marker(_BATCH_BEGIN, 0)
        if genid:
            check = u32(1, genid)  # NFNL_BATCH_GENID
            begin = struct.pack("=I", 20 + len(check)) + begin[4:] + check
        return [begin, self._buf, _batch_marker(_BATCH_END, len(self._what) + 1)]

    def describe(self, index: int) -> str:
        verb, name = self._what[index]
        i = bisect.bisect_right(self._tables, (index, "\U0010ffff")) - 1
        table = self._tables[i][1]
        return f"{verb} {self.family} {table} {name}"


_SET_UDATA = bytes.fromhex("000402000000")
_MAP_UDATA = bytes.fromhex("000400000000010400000000030800040d0000000100060400000000")


def set_udata(s: SetDef) -> bytes:
    """NFTA_SET_USERDATA as nft 1.0.6 writes it: key (and data) byte order, comment."""
    # maps: key and data byte order and the concatenation info; sets: key byte order (big)
    out = _MAP_UDATA if s.map else _SET_UDATA
    if s.comment is not None:
        raw = s.comment.encode() + b"\0"
        out += bytes((7, len(raw))) + raw  # NFTNL_UDATA_SET_COMMENT
    return out


def _int32(kind: int, value: int) -> bytes:
    return struct.pack("=HH", 8, kind) + struct.pack(">i", value)


def _batch_marker(kind: int, seq: int, flags: int = 0) -> bytes:
    return _NLHDR.pack(20, kind, _F_REQUEST | flags, seq, 0) + _NFGEN.pack(0, 0, _SUBSYS >> 8)


class Netlink:
    """A NETLINK_NETFILTER socket, made in namespace NETNS (None: this thread's)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        if netns:
            from netplane.netns import entered

            with entered(netns):
                self._sock = self._open()
        else:
            self._sock = self._open()
        self._seq = 1 << 30  # requests; a batch numbers its own messages 1..n
        self._buf = bytearray(1 << 16)  # a dump part is at most 32 KB
        self._view = memoryview(self._buf)

    @staticmethod
    def _open() -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        sock.bind((0, 0))
        sock.setsockopt(_SOL_NETLINK, _NETLINK_CAP_ACK, 1)  # errors without our message
        sock.setsockopt(_SOL_NETLINK, _NETLINK_EXT_ACK, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        return sock

    def close(self) -> None:
        self._sock.close()

    def commit(self, batch: Batch, genid: int = 0) -> int | None:
        """Send BATCH as one transaction; raise NftError for the first refused message
        (errno ERESTART: the ruleset is no longer at generation GENID). Returns the
        generation our commit made, or None when it changed nothing (the kernel commits
        nothing then, so the generation stays)."""
        if not len(batch):
            return None
        parts = batch.framed(genid)
        size = sum(map(len, parts))
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, 32, size + (1 << 16))  # SO_SNDBUFFORCE
        except OSError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size + (1 << 16))
        self._drain()
        self._sock.sendmsg(parts)  # one message for the kernel, from three buffers
        failed = None
        made = None
        for seq, code, message in self._answers():
            if code == _NEW_GENERATION:
                made = int(message)
            elif code and (failed is None or seq < failed[0]):
                failed = (seq, code, message)
        if failed is not None:
            seq, code, message = failed
            index = seq - 1
            what = batch.describe(index) if 0 <= index < len(batch) else "transaction"
            if code == errno.ERESTART:
                what = "transaction (the ruleset changed since we read it)"
            detail = f" ({message})" if message else ""
            raise NftError(f"{what}: {os.strerror(code)}{detail}", code)
        return made

    def _drain(self) -> None:
        """Drop anything left from an earlier request (late answers)."""
        while select.select([self._sock], [], [], 0)[0]:
            self._sock.recv(1 << 16)

    def _answers(self) -> Iterator[tuple[int, int, str]]:
        """(seq, errno, extack message) of every error queued for us; the echoed new
        generation as (seq, _NEW_GENERATION, its number)."""
        while True:
            try:
                data = self._sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            offset = 0
            while offset + 16 <= len(data):
                size, kind, flags, seq, _ = _NLHDR.unpack_from(data, offset)
                if kind == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, offset + 16)[0]
                    yield seq, code, _extack(data, offset, size, flags)
                elif kind == _SUBSYS | NEWGEN:
                    attrs = parse_attrs(data, offset + 20, offset + size)
                    yield seq, _NEW_GENERATION, str(struct.unpack(">I", attrs[1])[0])
                offset += (size + 3) & ~3

    def request(self, kind: int, family: str, body: bytes = b"", dump: bool = True) -> list[bytes]:
        """A GET request (a dump by default); the payloads after the nfgenmsg header."""
        seq = self._seq
        self._seq += 1
        flags = _F_REQUEST | (_F_DUMP if dump else _F_ACK)
        header = _NLHDR.pack(20 + len(body), _SUBSYS | kind, flags, seq, 0)
        self._drain()
        self._sock.send(header + _NFGEN.pack(NFPROTO.get(family, 0), 0, 0) + body)
        out: list[bytes] = []
        buf, view = self._buf, self._view
        while True:
            n = self._sock.recv_into(buf)
            offset = 0
            while offset + 16 <= n:
                size, kind_, _, seq_, _ = _NLHDR.unpack_from(buf, offset)
                if seq_ == seq:
                    if kind_ == _NLMSG_DONE:
                        return out
                    if kind_ == _NLMSG_ERROR:
                        code = -struct.unpack_from("=i", buf, offset + 16)[0]
                        if code == 0:
                            return out
                        raise NftError(os.strerror(code), code)
                    out.append(bytes(view[offset + 20 : offset + size]))
                    if not dump:
                        return out
                offset += (size + 3) & ~3

    def genid(self) -> int:
        """The ruleset generation: it changes with every committed transaction, anyone's."""
        [payload] = self.request(GETGEN, "", dump=False)
        return struct.unpack(">I", parse_attrs(payload)[1])[0]

    # -- dumps of one table
    def tables(self, family: str) -> set[str]:
        return {parse_attrs(m)[1].rstrip(b"\0").decode() for m in self.request(GETTABLE, family)}

    def chains(self, family: str) -> list[dict]:
        """Every chain of FAMILY, all tables (the kernel dumps them all anyway)."""
        return [parse_attrs(m) for m in self.request(GETCHAIN, family)]

    def has_chain(self, family: str, table: str, chain: str) -> bool:
        """One chain looked up by name (not a dump: the table's other chains stay put)."""
        try:
            return bool(self.request(GETCHAIN, family, string(1, table) + string(3, chain), False))
        except NftError as e:
            if e.errno == errno.ENOENT:
                return False
            raise

    def rules(self, family: str, table: str) -> list[dict]:
        return self._dump(GETRULE, family, table)

    def sets(self, family: str, table: str) -> list[dict]:
        return self._dump(GETSET, family, table)

    def elements(self, family: str, table: str, set_name: str) -> list[bytes]:
        """The NFTA_LIST_ELEM payloads of SET."""
        out = []
        body = string(1, table) + string(2, set_name)
        for message in self.request(GETSETELEM, family, body):
            out.extend(list_elems(parse_attrs(message).get(3, b"")))
        return out

    def _dump(self, kind: int, family: str, table: str) -> list[dict]:
        """The objects of TABLE (the kernel filters some dumps by table, not chains: so
        filter here too)."""
        try:
            messages = self.request(kind, family, string(1, table))
        except NftError as e:
            if e.errno == errno.ENOENT:
                return []
            raise
        name = table.encode() + b"\0"
        return [a for a in map(parse_attrs, messages) if a.get(1) == name]


def _extack(data: bytes, offset: int, size: int, flags: int) -> str:
    """The kernel's extended-ack message (NLMSGERR_ATTR_MSG), if it sent one."""
    if not flags & 0x200:  # NLM_F_ACK_TLVS
        return ""
    attrs = parse_attrs(data, offset + 36, offset + size)  # after nlmsgerr (cap_ack)
    return attrs.get(1, b"").rstrip(b"\0").decode(errors="replace")
