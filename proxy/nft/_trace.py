"""Packet tracer for the nftables backend's tables: where a packet goes, every branch
explored.

The same result model as the iptables reader (`netplane.proxy._trace`: `Trace` of `Path`s
with their `Step`s, probabilities and affinity conditions), over our tables (`Ruleset`s:
the renderer's, or read from `nft list ruleset` by `_parse`). Hooks in the order the kernel
runs our base chains (equal priorities: in the order of the tables given):

    arriving:  prerouting (filter -110, nat -100) -> input | forward (filter 0)
               -> postrouting (nat 100)
    local:     output (filter -110, nat -100, filter 0) -> postrouting (nat 100)

A `numgen` rule is taken with its probability and skipped with the rest; an affinity set
lookup is taken only by a client that connected before (a condition on the path); nat
statements end their hook (accept) as in the kernel, and the first NAT binding of a
connection is the only one. Rules not understood (`Unparsed`) are reported and assumed
not to match.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from netplane.proxy._trace import Outcome, Packet, Path, Step, Trace, TraceError
from netplane.proxy.nft._model import (
    DISPATCH_IP,
    Addr,
    Chain,
    Dnat,
    FibLocal,
    InSet,
    Keyword,
    Mark,
    Numgen,
    Port,
    Proto,
    Rule,
    Ruleset,
    Unparsed,
    Update,
    Verdict,
    VMap,
)
from netplane.proxy.nft._text import format_rule

_MAX_DEPTH = 64
_ORDER = ("prerouting", "input", "forward", "output", "postrouting")


@dataclass(frozen=True, slots=True)
class _State:
    """One branch's packet and history so far."""

    dst: str
    dport: int
    mark: int = 0
    dnat: str | None = None
    probability: float = 1.0
    conditions: tuple[str, ...] = ()
    steps: tuple[Step, ...] = ()
    warnings: tuple[str, ...] = ()

    def passed(self, table: Ruleset, chain: Chain, rule: Rule, note: str = "") -> _State:
        text = format_rule(rule, table.family)
        step = Step(table.table, chain.name, text, note)
        return replace(self, steps=(*self.steps, step))


Ending = tuple[_State, str | None]  # a walk's end: the state and its verdict


class NftTracer:
    def __init__(self, tables: Sequence[Ruleset], local_ips: Sequence[str] = ()) -> None:
        self.tables = tuple(tables)
        self.local = [
            ipaddress.ip_network(x, strict=False) for x in (*local_ips, "127.0.0.0/8", "::1/128")
        ]
        # base chains per hook, lowest priority first: (priority, type, table, chain)
        self.hooks: dict[str, list[tuple[int, str, Ruleset, Chain]]] = {h: [] for h in _ORDER}
        for table in self.tables:
            for chain in table.chains.values():
                if chain.hook is not None and chain.hook.hook in self.hooks:
                    entry = (chain.hook.priority, chain.hook.type, table, chain)
                    self.hooks[chain.hook.hook].append(entry)
        for entries in self.hooks.values():
            entries.sort(key=lambda e: e[0])  # stable: tables keep their order

    def is_local(self, ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        return any(addr in net for net in self.local)

    def trace(self, packet: Packet) -> Trace:
        src_local = packet.src_local if packet.src_local is not None else self.is_local(packet.src)
        paths: list[Path] = []
        first = "output" if packet.output else "prerouting"
        for st, verdict in self._hook(first, packet, src_local, _State(packet.dst, packet.dport)):
            if verdict in ("drop", "reject"):
                paths.append(_path(st, verdict.upper()))
                continue
            if packet.output:
                paths.append(self._postrouting(packet, src_local, st))
                continue
            hook = "input" if self._dst_local(packet, st) else "forward"
            for st2, v in self._hook(hook, packet, src_local, st):
                if v in ("drop", "reject"):
                    paths.append(_path(st2, v.upper()))
                else:
                    paths.append(self._postrouting(packet, src_local, st2))
        return Trace(frozenset(p.outcome for p in paths), tuple(paths))

    def _postrouting(self, packet: Packet, src_local: bool, st: _State) -> Path:
        ends = list(self._hook("postrouting", packet, src_local, st))
        if len(ends) != 1:
            raise TraceError("masquerading depends on a random branch")
        st2, v = ends[0]
        return _path(st2, "DNAT" if st2.dnat else "NO_MATCH", v == "masquerade")

    def _dst_local(self, packet: Packet, st: _State) -> bool:
        if st.dst == packet.dst and packet.dst_local is not None:
            return packet.dst_local
        return self.is_local(st.dst)

    def _hook(self, hook: str, packet: Packet, src_local: bool, st: _State) -> Iterator[Ending]:
        """Every (state, verdict) the base chains of HOOK can end in (verdict: accept when
        the packet goes on, drop/reject, or masquerade at postrouting)."""
        states = [st]
        for _, kind, table, chain in self.hooks[hook]:
            next_states: list[_State] = []
            for s in states:
                if kind == "nat" and s.dnat is not None and hook in ("prerouting", "output"):
                    next_states.append(s)  # the NAT binding is made once
                    continue
                for s2, v in self._chain(table, chain, packet, src_local, s, 0):
                    if v in ("drop", "reject", "masquerade"):
                        yield s2, v
                    else:
                        next_states.append(s2)
            states = next_states
        for s in states:
            yield s, "accept"

    def _chain(
        self,
        table: Ruleset,
        chain: Chain,
        packet: Packet,
        src_local: bool,
        st: _State,
        depth: int,
    ) -> Iterator[Ending]:
        """(state, verdict) endings of CHAIN; verdict None = fell off its end (return)."""
        if depth > _MAX_DEPTH:
            raise TraceError(f"jump depth over {_MAX_DEPTH} at {chain.name}: a loop?")
        yield from self._rules(table, chain, 0, packet, src_local, st, depth)

    def _rules(
        self,
        table: Ruleset,
        chain: Chain,
        i: int,
        packet: Packet,
        src_local: bool,
        st: _State,
        depth: int,
    ) -> Iterator[Ending]:
        rules = chain.rules
        while i < len(rules):
            rule = rules[i]
            ends = list(self._rule(table, chain, rule, 0, packet, src_local, st, depth))
            for st2, v in ends:
                if v == "next":
                    yield from self._rules(table, chain, i + 1, packet, src_local, st2, depth)
                else:
                    yield st2, v
            return
        yield st, None

    def _rule(
        self,
        table: Ruleset,
        chain: Chain,
        rule: Rule,
        j: int,
        packet: Packet,
        src_local: bool,
        st: _State,
        depth: int,
    ) -> Iterator[Ending]:
        """Statements J.. of RULE: (state, verdict), verdict "next" = go on with the next
        rule, None = the chain returned, else a final verdict."""
        stmts = rule.stmts
        while j < len(stmts):
            s = stmts[j]
            if isinstance(s, Unparsed):
                note = "not understood: assumed not to match"
                yield (
                    replace(st.passed(table, chain, rule, note), warnings=(*st.warnings, s.text)),
                    "next",
                )
                return
            if isinstance(s, Numgen) and s.mod > 1:  # random: both ways
                p = 1 / s.mod
                skipped = st.passed(table, chain, rule, f"skipped ({1 - p:.1%})")
                yield replace(skipped, probability=st.probability * (1 - p)), "next"
                st = replace(
                    st.passed(table, chain, rule, f"taken ({p:.1%})"),
                    probability=st.probability * p,
                )
                j += 1
                continue
            if isinstance(s, InSet) and s.set.startswith("affinity-"):  # earlier connections
                condition = f"source in set {s.set} (an earlier connection)"
                yield st.passed(table, chain, rule, f"skipped: source not in {s.set}"), "next"
                st = st.passed(table, chain, rule, f"taken: {condition}")
                st = replace(st, conditions=(*st.conditions, condition))
                j += 1
                continue
            if isinstance(s, Verdict):
                yield from self._verdict(table, chain, rule, s, packet, src_local, st, depth)
                return
            if isinstance(s, VMap):
                key, target = self._vmap(table, s, packet, st)
                if target is None:
                    yield st, "next"
                    return
                note = f"{' . '.join(key)} : {target.kind} {target.chain or ''}".rstrip()
                st = st.passed(table, chain, rule, note)
                yield from self._jump(table, target, packet, src_local, st, depth)
                return
            if isinstance(s, Dnat):
                st = _once(st, table, chain, rule)
                endpoint = f"[{s.ip}]:{s.port}" if ":" in s.ip else f"{s.ip}:{s.port}"
                yield replace(st, dnat=endpoint, dst=s.ip, dport=s.port), "accept"
                return
            if isinstance(s, Keyword) and s.text in ("masquerade fully-random", "reject"):
                yield _once(st, table, chain, rule), s.text.split()[0]
                return
            if isinstance(s, Mark) and s.op != "unset":
                mark = st.mark | s.mark if s.op == "or" else st.mark ^ s.mark
                st = replace(_once(st, table, chain, rule), mark=mark)
                j += 1
                continue
            if isinstance(s, Update):
                st = _once(st, table, chain, rule)
                j += 1
                continue
            if not self._match(table, s, packet, src_local, st):
                yield st, "next"
                return
            j += 1
        yield _once(st, table, chain, rule), "next"

    def _verdict(
        self,
        table: Ruleset,
        chain: Chain,
        rule: Rule,
        v: Verdict,
        packet: Packet,
        src_local: bool,
        st: _State,
        depth: int,
    ) -> Iterator[Ending]:
        st = _once(st, table, chain, rule)
        if v.kind in ("accept", "drop"):
            yield st, v.kind
        elif v.kind == "return":
            yield st, None
        else:
            yield from self._jump(table, v, packet, src_local, st, depth)

    def _jump(
        self, table: Ruleset, v: Verdict, packet: Packet, src_local: bool, st: _State, depth: int
    ) -> Iterator[Ending]:
        if v.kind in ("accept", "drop", "return"):
            yield st, None if v.kind == "return" else v.kind
            return
        chain = table.chains.get(v.chain or "")
        if chain is None:
            raise TraceError(f"{v.kind} to unknown chain {table.table} {v.chain}")
        for st2, v2 in self._chain(table, chain, packet, src_local, st, depth + 1):
            if v2 is None:
                # returned: after a jump the calling rule's chain goes on; a goto
                # returns to whoever called the chain that went to it
                yield st2, "next" if v.kind == "jump" else None
            else:
                yield st2, v2

    def _vmap(
        self, table: Ruleset, s: VMap, packet: Packet, st: _State
    ) -> tuple[tuple[str, ...], Verdict | None]:
        if s.key == DISPATCH_IP:
            key: tuple[str, ...] = (str(ipaddress.ip_address(st.dst)), packet.proto, str(st.dport))
        else:
            key = (packet.proto, str(st.dport))
        element = table.elements.get(s.map, {}).get(key)
        return key, (element.verdict if element is not None else None)

    def _match(
        self, table: Ruleset, s: object, packet: Packet, src_local: bool, st: _State
    ) -> bool:
        if isinstance(s, Addr):
            addr = ipaddress.ip_address(packet.src if s.field == "saddr" else st.dst)
            net = ipaddress.ip_network(s.value, strict=False)
            return ((addr.version == net.version and addr in net) != s.negate) is True
        if isinstance(s, Port):
            return packet.proto == s.proto and st.dport == s.port
        if isinstance(s, Proto):
            return packet.proto == s.proto
        if isinstance(s, FibLocal):
            return src_local if s.field == "saddr" else self._dst_local(packet, st)
        if isinstance(s, Keyword) and s.text == "ct state new":
            return packet.ctstate == "NEW"
        if isinstance(s, Mark):  # unset
            return st.mark & s.mark == 0
        if isinstance(s, InSet):
            where = packet.src if s.field == "saddr" else st.dst
            return (str(ipaddress.ip_address(where)),) in table.elements.get(s.set, {})
        if isinstance(s, Numgen):  # mod 1: always
            return True
        raise TraceError(f"statement not modelled: {s!r}")


def _once(st: _State, table: Ruleset, chain: Chain, rule: Rule) -> _State:
    """ST with RULE among its steps (once: a rule with a branch already has its step)."""
    last = st.steps[-1] if st.steps else None
    if (
        last is not None
        and (last.table, last.chain) == (table.table, chain.name)
        and last.rule == format_rule(rule, table.family)
    ):
        return st
    return st.passed(table, chain, rule)


def _path(st: _State, verdict: str, masquerade: bool = False) -> Path:
    outcome = Outcome(verdict, st.dnat, masquerade if verdict in ("DNAT", "NO_MATCH") else False)
    return Path(outcome, st.probability, st.conditions, st.steps, st.warnings)
