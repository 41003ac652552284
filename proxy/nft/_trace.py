"""Packet tracer for the nftables objects: where a packet goes, every branch explored.

Same questions and the same answers (`netplane.proxy._trace.Packet` / `Trace`) as the
iptables tracer, over our tables (`Ruleset`s: the renderer's). Hooks in the order the
kernel runs our base chains (equal priorities: in the order of the tables given):

    arriving:  prerouting (filter -110, nat -100) -> input | forward (filter 0)
               -> postrouting (nat 100)
    local:     output (filter -110, nat -100, filter 0) -> postrouting (nat 100)

`numgen` and affinity set lookups go both ways (the result lists every endpoint a packet
can reach); nat statements end their hook (accept) as in the kernel. Only the statements
of `_model` are understood.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from netplane.proxy._trace import Outcome, Packet, Trace, TraceError
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
    Statement,
    Update,
    Verdict,
    VMap,
)

_MAX_DEPTH = 64
_ORDER = ("prerouting", "input", "forward", "output", "postrouting")


@dataclass(frozen=True, slots=True)
class _State:
    dst: str
    dport: int
    mark: int = 0
    dnat: str | None = None


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
                if chain.hook is not None:
                    entry = (chain.hook.priority, chain.hook.type, table, chain)
                    self.hooks[chain.hook.hook].append(entry)
        for entries in self.hooks.values():
            entries.sort(key=lambda e: e[0])  # stable: tables keep their order

    def is_local(self, ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        return any(addr in net for net in self.local)

    def trace(self, packet: Packet) -> Trace:
        src_local = packet.src_local if packet.src_local is not None else self.is_local(packet.src)
        outcomes: set[Outcome] = set()
        first = "output" if packet.output else "prerouting"
        start = _State(packet.dst, packet.dport)
        for st, verdict in self._hook(first, packet, src_local, start):
            if verdict in ("drop", "reject"):
                outcomes.add(Outcome(verdict.upper()))
                continue
            if not packet.output:
                dst_local = self._dst_local(packet, st)
                for st2, v in self._hook(
                    "input" if dst_local else "forward", packet, src_local, st
                ):
                    if v in ("drop", "reject"):
                        outcomes.add(Outcome(v.upper(), st2.dnat))
                    else:
                        outcomes.add(self._postrouting(packet, src_local, st2))
            else:
                outcomes.add(self._postrouting(packet, src_local, st))
        return Trace(frozenset(outcomes))

    def _postrouting(self, packet: Packet, src_local: bool, st: _State) -> Outcome:
        masq = {v == "masquerade" for _, v in self._hook("postrouting", packet, src_local, st)}
        if len(masq) > 1:
            raise TraceError("masquerading depends on a random branch")
        return Outcome("DNAT" if st.dnat else "NO_MATCH", st.dnat, masq.pop() if masq else False)

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
                    if v in ("drop", "reject") or v == "masquerade":
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
        yield from self._rules(table, chain.rules, 0, packet, src_local, st, depth)

    def _rules(
        self,
        table: Ruleset,
        rules: tuple[Rule, ...],
        i: int,
        packet: Packet,
        src_local: bool,
        st: _State,
        depth: int,
    ) -> Iterator[Ending]:
        while i < len(rules):
            outcomes = list(self._rule(table, rules[i].stmts, 0, packet, src_local, st, depth))
            for st2, v in outcomes:
                if v == "next":
                    yield from self._rules(table, rules, i + 1, packet, src_local, st2, depth)
                else:
                    yield st2, v
            return
        yield st, None

    def _rule(
        self,
        table: Ruleset,
        stmts: tuple[Statement, ...],
        j: int,
        packet: Packet,
        src_local: bool,
        st: _State,
        depth: int,
    ) -> Iterator[Ending]:
        """Evaluate statements J.. of a rule: (state, verdict), verdict "next" = go on with
        the next rule, None = this chain returned, else a final verdict."""
        while j < len(stmts):
            s = stmts[j]
            if isinstance(s, Verdict):
                yield from self._verdict(table, s, packet, src_local, st, depth)
                return
            if isinstance(s, VMap):
                target = self._vmap(table, s, packet, st)
                if target is None:
                    yield st, "next"
                else:
                    yield from self._verdict(table, target, packet, src_local, st, depth)
                return
            if isinstance(s, Numgen):
                if s.mod > 1:  # not taken: the next rule
                    yield st, "next"
                j += 1
                continue
            if isinstance(s, InSet) and s.set.startswith("affinity-"):
                yield st, "next"  # no earlier connection remembered: the next rule
                j += 1
                continue
            if isinstance(s, Dnat):
                yield replace(st, dnat=_join(s.ip, s.port), dst=s.ip, dport=s.port), "accept"
                return
            if isinstance(s, Keyword) and s.text == "masquerade fully-random":
                yield st, "masquerade"
                return
            if isinstance(s, Keyword) and s.text == "reject":
                yield st, "reject"
                return
            if isinstance(s, Mark) and s.op != "unset":
                mark = st.mark | s.mark if s.op == "or" else st.mark ^ s.mark
                st = replace(st, mark=mark)
                j += 1
                continue
            if isinstance(s, Update):
                j += 1
                continue
            if not self._match(table, s, packet, src_local, st):
                yield st, "next"
                return
            j += 1
        yield st, "next"

    def _verdict(
        self, table: Ruleset, v: Verdict, packet: Packet, src_local: bool, st: _State, depth: int
    ) -> Iterator[Ending]:
        if v.kind in ("accept", "drop"):
            yield st, v.kind
        elif v.kind == "return":
            yield st, None
        else:
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

    def _vmap(self, table: Ruleset, s: VMap, packet: Packet, st: _State) -> Verdict | None:
        proto = packet.proto
        if s.key == DISPATCH_IP:
            key: tuple[str, ...] = (str(ipaddress.ip_address(st.dst)), proto, str(st.dport))
        else:
            key = (proto, str(st.dport))
        element = table.elements.get(s.map, {}).get(key)
        return element.verdict if element is not None else None

    def _match(
        self, table: Ruleset, s: Statement, packet: Packet, src_local: bool, st: _State
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
        raise TraceError(f"statement not modelled: {s!r}")


def _join(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
