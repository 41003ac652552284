"""The side-effecting half of the nftables backend: ops -> a batch, and the read-back.

`write(netlink, ruleset info, ops)` turns planned operations into one netlink batch and
commits it; `read(netlink, ...)` reads our table back into a `_plan.Kernel` (chain contents
as digests of the kernel's own dump, which for our rules is byte for byte what we send).
Rules are read chain by chain: the kernel restarts a whole-table rule dump from its first
rule for every 32 KB it returns, which makes one dump of 160k rules take ~30 s, while 60k
per-chain dumps take ~1-2 s.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable

from netplane.proxy.nft._exprs import element, encoder, key_bytes, string, udata_comment
from netplane.proxy.nft._model import Chain, Element, Hook
from netplane.proxy.nft._netlink import GETRULE, Batch, Netlink, parse_attrs
from netplane.proxy.nft._plan import ChainState, Kernel, Op

_HOOK_NAMES = {0: "prerouting", 1: "input", 2: "forward", 3: "output", 4: "postrouting"}


class Interrupted(Exception):
    """The stop event was set during a read-back."""


def chain_digest(chain: Chain, family: str) -> int:
    enc = encoder(family)
    return hash(
        tuple(
            (enc.rule(r), udata_comment(r.comment) if r.comment is not None else None)
            for r in chain.rules
        )
    )


def element_digest(e: Element) -> int:
    """Digest of an element's encoding (key, verdict, comment) as the kernel dumps it."""
    return hash(element(e)[4:])


def build(batch: Batch, ops: Iterable[Op]) -> dict[object, int]:
    """Add OPS to BATCH; returns the digests of what it writes: chains by name, elements
    by (set name, key)."""
    enc = encoder(batch.family)
    digests: dict[object, int] = {}
    for verb, arg in ops:
        if verb == "add_rules":
            rules = [(enc.rule(r), r.comment) for r in arg.rules]
            batch.add_rules(arg.name, rules)
            digests[arg.name] = hash(
                tuple((e, udata_comment(c) if c is not None else None) for e, c in rules)
            )
        elif verb == "add_chain":
            batch.add_chain(arg.name, arg.hook, arg.comment)
        elif verb == "flush_chain":
            batch.flush_chain(arg)
        elif verb == "delete_chain":
            batch.delete_chain(arg)
        elif verb == "add_elements":
            set_name, elements = arg
            encoded = [element(e) for e in elements]
            batch.add_encoded_elements(set_name, encoded)
            for e, data in zip(elements, encoded, strict=True):
                digests[set_name, key_bytes(e.key)] = hash(data[4:])
        elif verb == "delete_elements":
            batch.delete_elements(*arg)
        elif verb == "add_set":
            batch.add_set(arg)
        elif verb == "delete_set":
            batch.delete_set(arg)
        elif verb == "add_table":
            batch.add_table(arg)
        elif verb != "stale":
            raise ValueError(f"unknown operation {verb}")
    return digests


def read(
    netlink: Netlink,
    family: str,
    tables: dict[str, Iterable[str]],
    stop: threading.Event | None = None,
) -> tuple[dict[str, Kernel], int]:
    """Our TABLES (name -> the shared sets whose elements to read) as the kernel holds
    them, and the bytes read to learn it. Tables that do not exist are left out."""
    present = netlink.tables(family)
    kernels = {t: Kernel(table=True) for t in tables if t in present}
    if not kernels:
        return {}, 0
    size = 0
    for attrs in netlink.chains(family):  # every table's: the kernel does not filter
        table = attrs[1].rstrip(b"\0").decode()
        kernel = kernels.get(table)
        if kernel is None:
            continue
        name = attrs[3].rstrip(b"\0").decode()
        hook = None
        if 4 in attrs:
            h = parse_attrs(attrs[4])
            hook = Hook(
                attrs[7].rstrip(b"\0").decode(),
                _HOOK_NAMES.get(struct.unpack(">I", h[1])[0], "?"),
                struct.unpack(">i", h[2])[0],
            )
        if stop is not None and stop.is_set():
            raise Interrupted("stopped while reading the rules back")
        rules = []
        for message in netlink.request(GETRULE, family, string(1, table) + string(2, name)):
            size += len(message)
            r = parse_attrs(message)
            rules.append((r.get(4, b""), r.get(7)))
        kernel.chains[name] = ChainState(hook, None, hash(tuple(rules)), len(rules))
    for table, kernel in kernels.items():
        for attrs in netlink.sets(family, table):
            flags = struct.unpack(">I", attrs[3])[0] if 3 in attrs else 0
            if flags & 0x1:  # anonymous: belongs to a rule, goes with it
                continue
            name = attrs[2].rstrip(b"\0").decode()
            key = (struct.unpack(">I", attrs[4])[0], struct.unpack(">I", attrs[5])[0])
            timeout = struct.unpack(">Q", attrs[11])[0] // 1000 if 11 in attrs else 0
            kernel.sets[name] = (key, bool(flags & 0x8), timeout)
        for name in tables[table]:
            if name in kernel.sets:
                elements = netlink.elements(family, table, name)
                size += sum(map(len, elements))
                kernel.elements[name] = {
                    parse_attrs(parse_attrs(e)[1])[1]: hash(e) for e in elements
                }
    return kernels, size
