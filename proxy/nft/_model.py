"""The nftables objects the renderer produces and every other module consumes.

One small vocabulary of statements, each a NamedTuple (hashable, cheap, comparable): the
renderer builds rules from them, `_text` prints them the way `nft list ruleset` does,
`_netlink` encodes them into exactly the expressions the kernel dumps back, and the tracer
evaluates them. A rule is a tuple of statements plus an optional comment; the address
family (ip / ip6) is the table's, statements carry addresses that say it too.

Statements are compared as tuples (that is what makes a changed rule visible), so no two
kinds may ever hold equal values: kinds of the same shape have disjoint values (a verdict's
kind is never an address field, a port's protocol never an address...), and the flag-like
ones share one class, `Keyword`, told apart by their text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

# ---- matches -------------------------------------------------------------------------------


class Addr(NamedTuple):
    """`ip saddr 10.0.0.0/8`, `ip daddr != 127.0.0.0/8`, `ip6 saddr fd00::1`."""

    field: str  # "saddr" | "daddr"
    value: str  # an address or a CIDR
    negate: bool = False


class Proto(NamedTuple):
    """`meta l4proto tcp`."""

    proto: str  # tcp | udp | sctp


class Port(NamedTuple):
    """`tcp dport 80` (the kernel also checks the protocol, as nft makes it do)."""

    proto: str
    port: int


class FibLocal(NamedTuple):
    """`fib saddr type local` / `fib daddr type local`: the address is one of the node's."""

    field: str  # "saddr" | "daddr"


class Numgen(NamedTuple):
    """`numgen random mod MOD VALUE`: true with probability 1/MOD."""

    mod: int
    value: int = 0


class InSet(NamedTuple):
    """`ip saddr @affinity-...` / `ip daddr @cluster-ips`."""

    field: str
    set: str


# ---- dispatch (lookups whose result is the verdict) ----------------------------------------

DISPATCH_IP = "daddr . l4proto . dport"  # ip daddr . meta l4proto . th dport
DISPATCH_PORT = "l4proto . dport"  # meta l4proto . th dport


class VMap(NamedTuple):
    """`<key> vmap @MAP`: the verdict stored with the packet's key, if any."""

    key: str  # DISPATCH_IP | DISPATCH_PORT
    map: str


# ---- statements ----------------------------------------------------------------------------


class Mark(NamedTuple):
    """`meta mark set meta mark | MARK` (op "or"), `... ^ MARK` ("xor"), and the match
    `meta mark & MARK == 0` ("unset")."""

    op: str  # or | xor | unset
    mark: int


class Keyword(NamedTuple):
    """A statement without arguments: `ct state new`, `masquerade fully-random`, `reject`
    (ICMP(v6) port unreachable, TCP included: nft's default)."""

    text: str


CT_NEW = Keyword("ct state new")
MASQUERADE = Keyword("masquerade fully-random")
REJECT = Keyword("reject")


class Dnat(NamedTuple):
    """`dnat to IP:PORT` (kube-proxy precedes it with `meta l4proto <proto>`)."""

    ip: str
    port: int


class Update(NamedTuple):
    """`update @SET { ip saddr }`: remember the source (affinity), the set's timeout."""

    set: str
    field: str = "saddr"


class Unparsed(NamedTuple):
    """A rule the reader of `nft list` text did not understand (another program's rule on
    a live node): the tracer reports it and assumes it does not match. Never rendered."""

    text: str


class Verdict(NamedTuple):
    """`jump X`, `goto X`, `return`, `drop`, `accept`."""

    kind: str
    chain: str | None = None


RETURN = Verdict("return")
DROP = Verdict("drop")


def jump(chain: str) -> Verdict:
    return Verdict("jump", chain)


def goto(chain: str) -> Verdict:
    return Verdict("goto", chain)


Statement = (
    Addr
    | Proto
    | Port
    | FibLocal
    | Numgen
    | InSet
    | VMap
    | Mark
    | Keyword
    | Dnat
    | Update
    | Verdict
    | Unparsed
)


class Rule(NamedTuple):
    stmts: tuple[Statement, ...]
    comment: str | None = None


# ---- containers ----------------------------------------------------------------------------


class Hook(NamedTuple):
    """What makes a chain a base chain."""

    type: str  # filter | nat
    hook: str  # prerouting | input | forward | output | postrouting
    priority: int


@dataclass(frozen=True, slots=True)
class Chain:
    name: str
    rules: tuple[Rule, ...] = ()
    hook: Hook | None = None
    comment: str | None = None


class SetDef(NamedTuple):
    """A named set or verdict map (kube-proxy's: `cluster-ips`, `service-ips`, affinity
    sets). KEY is nft's type expression, e.g. `ipv4_addr . inet_proto . inet_service`."""

    name: str
    key: str
    map: bool = False  # a verdict map
    timeout: int = 0  # seconds; > 0 makes a dynamic set with timeouts (affinity)
    comment: str | None = None


class Element(NamedTuple):
    """One element: its key fields (`("172.30.0.41", "tcp", "80")`), the verdict for
    maps, and a comment."""

    key: tuple[str, ...]
    verdict: Verdict | None = None
    comment: str | None = None


_EMPTY: Mapping = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Ruleset:
    """Everything in one table: what a full sync makes the kernel hold."""

    family: str  # "ip" | "ip6"
    table: str
    comment: str | None = None
    chains: Mapping[str, Chain] = field(default_factory=dict)
    sets: Mapping[str, SetDef] = field(default_factory=dict)
    elements: Mapping[str, Mapping[tuple[str, ...], Element]] = field(default_factory=dict)
