"""Packet tracer: follow a packet through iptables-restore text the way the kernel would,
exploring every branch a random or stateful match could take.

Input: restore text (ours, or `iptables-save` output of the same rules) or `Tables`.
Path (as kube-proxy wires the built-in chains, see `render.BUILTIN_JUMPS`; when the input
already has rules in a built-in chain those are used instead):

    arriving on an interface:  nat PREROUTING -> filter INPUT (local dst) | FORWARD
                               -> nat POSTROUTING
    locally generated:         nat OUTPUT -> filter OUTPUT -> nat POSTROUTING
                               (-> filter INPUT when the final destination is local)

`-m statistic` and `-m recent --rcheck` are both taken and not taken, so the result lists
every endpoint a packet can reach. Only the matches and targets the renderer emits are
understood (plus the default options iptables-save adds to them); anything else raises
`TraceError` rather than being guessed.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

from netplane.proxy.render import BUILTIN_JUMPS

_BUILTIN = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
}
_TERMINAL = ("ACCEPT", "DROP", "REJECT", "DNAT", "MASQUERADE")
_MAX_DEPTH = 64


class TraceError(ValueError):
    """The rules use something the tracer does not model, or are malformed."""


# ---- parsing -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    chain: str
    text: str
    src: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, bool] | None = None
    dst: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, bool] | None = None
    proto: str | None = None
    matches: tuple[tuple, ...] = ()
    target: str | None = None
    target_args: tuple[tuple[str, str], ...] = ()

    def arg(self, name: str) -> str | None:
        for k, v in self.target_args:
            if k == name:
                return v
        return None


ParsedTables = dict[str, dict[str, list[Rule]]]

_MODULE_OPTIONS = {
    "comment": {"--comment": 1},
    "tcp": {"--dport": 1},
    "udp": {"--dport": 1},
    "sctp": {"--dport": 1},
    "addrtype": {"--src-type": 1, "--dst-type": 1},
    "statistic": {"--mode": 1, "--probability": 1},
    "recent": {
        "--name": 1,
        "--rcheck": 0,
        "--set": 0,
        "--seconds": 1,
        "--reap": 0,
        "--mask": 1,
        "--rsource": 0,
    },
    "mark": {"--mark": 1},
    "conntrack": {"--ctstate": 1},
}
_TARGET_OPTIONS = {
    "DNAT": {"--to-destination": 1},
    "MARK": {"--or-mark": 1, "--xor-mark": 1, "--set-xmark": 1},
    "MASQUERADE": {"--random-fully": 0},
    "REJECT": {"--reject-with": 1},
}


def _network(text: str, line: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise TraceError(f"bad address {text!r} in: {line}") from None


def _mark(text: str) -> tuple[int, int]:
    value, _, mask = text.partition("/")
    return int(value, 0), int(mask, 0) if mask else 0xFFFFFFFF


def parse_rule(line: str) -> Rule:
    """One `-A CHAIN ...` line -> Rule; TraceError for anything not modelled."""
    try:
        toks = shlex.split(line)
    except ValueError as e:
        raise TraceError(f"cannot split {line!r}: {e}") from None
    if len(toks) < 2 or toks[0] != "-A":
        raise TraceError(f"not an -A rule: {line}")
    chain = toks[1]
    src = dst = None
    proto = None
    loaded: list[tuple[str, dict[str, tuple[str | None, bool]]]] = []  # (-m module, options)
    target = None
    target_args: list[tuple[str, str]] = []
    i, n = 2, len(toks)
    negate = False
    while i < n:
        t = toks[i]
        if t == "!":
            negate = True
            i += 1
            continue
        if t in ("-s", "--source", "-d", "--destination"):
            if i + 1 >= n:
                raise TraceError(f"{t} without a value: {line}")
            net = (_network(toks[i + 1], line), negate)
            if t in ("-s", "--source"):
                src = net
            else:
                dst = net
            negate = False
            i += 2
        elif t in ("-p", "--protocol"):
            if negate:
                raise TraceError(f"negated protocol not modelled: {line}")
            proto = toks[i + 1].lower()
            i += 2
        elif t in ("-m", "--match"):
            if negate:
                raise TraceError(f"misplaced '!': {line}")
            module = toks[i + 1]
            if module not in _MODULE_OPTIONS:
                raise TraceError(f"match -m {module} not modelled: {line}")
            loaded.append((module, {}))
            i += 2
        elif t.startswith("--"):
            # a match option; iptables accepts it anywhere after its -m (kube-proxy writes
            # `-m tcp -p tcp --dport 80`): it belongs to the latest module that knows it
            owner = next((m for m in reversed(loaded) if t in _MODULE_OPTIONS[m[0]]), None)
            if owner is None:
                raise TraceError(f"option {t} not modelled: {line}")
            arity = _MODULE_OPTIONS[owner[0]][t]
            opts = owner[1]
            if i + arity >= n:
                raise TraceError(f"{t} without a value: {line}")
            opts[t] = (toks[i + 1] if arity else None, negate)
            negate = False
            i += 1 + arity
        elif t in ("-j", "--jump"):
            if negate:
                raise TraceError(f"misplaced '!': {line}")
            target = toks[i + 1]
            i += 2
            options = _TARGET_OPTIONS.get(target, {})
            while i < n and toks[i].startswith("--"):
                opt = toks[i]
                if opt not in options:
                    raise TraceError(f"option {opt} of -j {target} not modelled: {line}")
                value = toks[i + 1] if options[opt] else ""
                target_args.append((opt, value))
                i += 1 + options[opt]
            if i < n:
                raise TraceError(f"unexpected {toks[i]!r} after the target: {line}")
        else:
            raise TraceError(f"option {t!r} not modelled: {line}")
    if negate:
        raise TraceError(f"dangling '!': {line}")
    matches = [_compile_match(module, opts, line) for module, opts in loaded]
    for m in matches:
        if m[0] == "port" and proto != m[2]:
            raise TraceError(f"-m {m[2]} needs -p {m[2]}: {line}")
    return Rule(chain, line, src, dst, proto, tuple(matches), target, tuple(target_args))


def _compile_match(module: str, opts: dict, line: str) -> tuple:
    def value(opt: str) -> str:
        v, neg = opts[opt]
        if neg:
            raise TraceError(f"negated {opt} not modelled: {line}")
        return v

    if module == "comment":
        return ("comment",)
    if module in ("tcp", "udp", "sctp"):
        port = int(value("--dport")) if "--dport" in opts else None
        return ("port", port, module)  # -p is checked once the whole rule is read
    if module == "addrtype":
        if len(opts) != 1:
            raise TraceError(f"one addrtype option per match is modelled: {line}")
        ((opt, (v, neg)),) = opts.items()
        if v != "LOCAL":
            raise TraceError(f"addrtype {v} not modelled: {line}")
        return ("addrtype", "src" if opt == "--src-type" else "dst", neg)
    if module == "statistic":
        if value("--mode") != "random":
            raise TraceError(f"statistic mode not modelled: {line}")
        return ("statistic", float(value("--probability")))
    if module == "recent":
        name = value("--name") if "--name" in opts else "DEFAULT"
        if "--rcheck" in opts:
            return ("recent-check", name)
        if "--set" in opts:
            return ("recent-set", name)
        raise TraceError(f"recent needs --rcheck or --set: {line}")
    if module == "mark":
        v, neg = opts["--mark"]
        return ("mark", *_mark(v), neg)
    if module == "conntrack":
        v, neg = opts["--ctstate"]
        return ("ctstate", frozenset(v.split(",")), neg)
    raise TraceError(f"match -m {module} not modelled: {line}")  # pragma: no cover


def parse_restore(text: str) -> ParsedTables:
    """iptables-restore / iptables-save text -> {table: {chain: [Rule]}}."""
    tables: ParsedTables = {}
    table: dict[str, list[Rule]] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table = tables.setdefault(line[1:], {})
            continue
        if table is None:
            raise TraceError(f"line {number}: outside a table: {line}")
        if line == "COMMIT":
            table = None
        elif line.startswith(":"):
            table.setdefault(line[1:].split()[0], [])
        elif line.startswith("-X"):
            table.pop(line.split()[1], None)
        elif line.startswith("-A"):
            rule = parse_rule(line)
            if rule.chain not in table:
                raise TraceError(f"line {number}: chain {rule.chain} not declared")
            table[rule.chain].append(rule)
        else:
            raise TraceError(f"line {number}: not modelled: {line}")
    return tables


def parse_tables(tables: Mapping[str, Mapping[str, Sequence[str]]]) -> ParsedTables:
    return {
        t: {c: [parse_rule(x) for x in lines] for c, lines in chains.items()}
        for t, chains in tables.items()
    }


# ---- tracing -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Packet:
    src: str
    dst: str
    proto: str = "tcp"
    dport: int = 80
    output: bool = False  # locally generated (nat/filter OUTPUT) instead of arriving
    src_local: bool | None = None  # None: src is one of the local addresses
    dst_local: bool | None = None  # None: dst is one of the local addresses
    ctstate: str = "NEW"


@dataclass(frozen=True, slots=True, order=True)
class Outcome:
    verdict: str  # DNAT | NO_MATCH (left unchanged, not dropped) | DROP | REJECT
    endpoint: str | None = None  # "ip:port" after DNAT
    masquerade: bool = False  # MASQUERADE applied in POSTROUTING


@dataclass(frozen=True, slots=True)
class Trace:
    outcomes: frozenset[Outcome]

    @property
    def endpoints(self) -> set[str]:
        return {o.endpoint for o in self.outcomes if o.endpoint and o.verdict == "DNAT"}

    @property
    def verdicts(self) -> set[str]:
        return {o.verdict for o in self.outcomes}

    @property
    def masquerade(self) -> set[bool]:
        """Masquerade flags of the delivered outcomes ({True}, {False} or both)."""
        return {o.masquerade for o in self.outcomes if o.verdict in ("DNAT", "NO_MATCH")}


@dataclass(frozen=True, slots=True)
class _State:
    dst: str
    mark: int = 0
    dnat: str | None = None
    recent: frozenset[str] = field(default_factory=frozenset)


_Addr = ipaddress.IPv4Address | ipaddress.IPv6Address
_Walk = Iterator[tuple[_State, str | None]]  # (state, verdict); None: fell through


class Tracer:
    def __init__(
        self, rules: str | Mapping[str, Mapping[str, Sequence[str]]], local_ips: Sequence[str] = ()
    ) -> None:
        self.tables = parse_restore(rules) if isinstance(rules, str) else parse_tables(rules)
        self.local = [
            ipaddress.ip_network(x, strict=False) for x in (*local_ips, "127.0.0.0/8", "::1/128")
        ]
        self._builtin: dict[tuple[str, str], list[Rule]] = {}
        for table, chain, match, target, _comment in BUILTIN_JUMPS:
            chains = self.tables.get(table, {})
            if chains.get(chain) or target not in chains:
                continue  # the input wires this built-in chain itself, or lacks the target
            text = f"-A {chain} {match + ' ' if match else ''}-j {target}"
            self._builtin.setdefault((table, chain), []).append(parse_rule(text))

    def is_local(self, ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        return any(addr in net for net in self.local)

    def trace(self, packet: Packet) -> Trace:
        src = ipaddress.ip_address(packet.src)
        src_local = packet.src_local
        if src_local is None:
            src_local = self.is_local(packet.src)
        outcomes: set[Outcome] = set()
        first = "OUTPUT" if packet.output else "PREROUTING"
        for st, verdict in self._chain("nat", first, packet, src, src_local, _State(packet.dst)):
            if verdict in ("DROP", "REJECT"):
                outcomes.add(Outcome(verdict))
                continue
            endpoint = st.dnat
            dst_ip = _host(endpoint) if endpoint else packet.dst
            st = replace(st, dst=dst_ip)
            dst_local = self._dst_local(packet, st)
            hooks = ["OUTPUT"] if packet.output else ["INPUT" if dst_local else "FORWARD"]
            if packet.output and dst_local:
                hooks.append("INPUT")
            blocked = None
            for hook in hooks:
                blocked = self._filter(hook, packet, src, src_local, st)
                if blocked:
                    break
            if blocked:
                outcomes.add(Outcome(blocked, endpoint))
                continue
            masq = False
            for _st2, v in self._chain("nat", "POSTROUTING", packet, src, src_local, st):
                masq = masq or v == "MASQUERADE"
                if v in ("DROP", "REJECT"):
                    raise TraceError("POSTROUTING dropped a packet: not modelled")
            outcomes.add(Outcome("DNAT" if endpoint else "NO_MATCH", endpoint, masq))
        return Trace(frozenset(outcomes))

    def _filter(
        self, hook: str, packet: Packet, src: _Addr, src_local: bool, st: _State
    ) -> str | None:
        """DROP/REJECT if any branch of the filter hook blocks, else None."""
        verdicts = {v for _, v in self._chain("filter", hook, packet, src, src_local, st)}
        blocked = verdicts & {"DROP", "REJECT"}
        if len(blocked) > 1 or (blocked and verdicts - blocked):
            raise TraceError(f"filter {hook} verdict depends on a random branch: {verdicts}")
        return blocked.pop() if blocked else None

    def _dst_local(self, packet: Packet, st: _State) -> bool:
        if st.dst == packet.dst and packet.dst_local is not None:
            return packet.dst_local
        return self.is_local(st.dst)

    def _chain(
        self,
        table: str,
        chain: str,
        packet: Packet,
        src: _Addr,
        src_local: bool,
        st: _State,
        depth: int = 0,
    ) -> _Walk:
        """Every (state, verdict) a walk of CHAIN can end in; verdict None = fell through."""
        if depth > _MAX_DEPTH:
            raise TraceError(f"jump depth over {_MAX_DEPTH} at {table} {chain}: a loop?")
        rules = self._builtin.get((table, chain))
        if rules is None:
            chains = self.tables.get(table, {})
            if chain not in chains:
                if chain in _BUILTIN.get(table, ()):
                    rules = []
                else:
                    raise TraceError(f"jump to unknown chain {table} {chain}")
            else:
                rules = chains[chain]
        for st2, v in self._walk(table, rules, 0, packet, src, src_local, st, depth):
            yield st2, (None if v == "RETURN" else v)

    def _walk(
        self,
        table: str,
        rules: list[Rule],
        i: int,
        packet: Packet,
        src: _Addr,
        src_local: bool,
        st: _State,
        depth: int,
    ) -> _Walk:
        while i < len(rules):
            rule = rules[i]
            m = self._match(rule, packet, src, src_local, st)
            if m is False:
                i += 1
                continue
            if m is None:  # could go either way: explore the not-taken branch too
                yield from self._walk(table, rules, i + 1, packet, src, src_local, st, depth)
            for st2, v in self._apply(table, rule, packet, src, src_local, st, depth):
                if v is None:
                    yield from self._walk(table, rules, i + 1, packet, src, src_local, st2, depth)
                else:
                    yield st2, v
            return
        yield st, None

    def _match(
        self, rule: Rule, packet: Packet, src: _Addr, src_local: bool, st: _State
    ) -> bool | None:
        """True, False, or None (both possible: random / unknown history)."""
        if rule.src is not None:
            net, neg = rule.src
            if ((src.version == net.version and src in net) != neg) is False:
                return False
        if rule.dst is not None:
            net, neg = rule.dst
            dst = ipaddress.ip_address(st.dst)
            if ((dst.version == net.version and dst in net) != neg) is False:
                return False
        if rule.proto is not None and rule.proto != packet.proto:
            return False
        result: bool | None = True
        for m in rule.matches:
            kind = m[0]
            if kind == "comment":
                continue
            if kind == "port":
                if m[1] is not None and m[1] != packet.dport:
                    return False
            elif kind == "addrtype":
                local = src_local if m[1] == "src" else self._dst_local(packet, st)
                if local == m[2]:
                    return False
            elif kind == "statistic":
                if m[1] <= 0:
                    return False
                if m[1] < 1:
                    result = None
            elif kind == "recent-check":
                if m[1] not in st.recent:
                    result = None  # an earlier connection may have set it
            elif kind == "recent-set":
                continue
            elif kind == "mark":
                _, value, mask, neg = m
                if ((st.mark & mask) == value) == neg:
                    return False
            elif kind == "ctstate":
                if (packet.ctstate in m[1]) == m[2]:
                    return False
            else:  # pragma: no cover
                raise TraceError(f"match {kind} not modelled")
        return result

    def _apply(
        self,
        table: str,
        rule: Rule,
        packet: Packet,
        src: _Addr,
        src_local: bool,
        st: _State,
        depth: int,
    ) -> _Walk:
        target = rule.target
        for m in rule.matches:
            if m[0] == "recent-set":
                st = replace(st, recent=st.recent | {m[1]})
        if target is None:
            yield st, None
        elif target in ("ACCEPT", "DROP", "REJECT", "RETURN"):
            yield st, target
        elif target == "DNAT":
            to = rule.arg("--to-destination")
            if table != "nat" or not to:
                raise TraceError(f"DNAT outside nat or without --to-destination: {rule.text}")
            yield replace(st, dnat=to), "DNAT"
        elif target == "MASQUERADE":
            yield st, "MASQUERADE"
        elif target == "MARK":
            mark = st.mark
            for opt, value in rule.target_args:
                if opt == "--or-mark":
                    mark |= int(value, 0)
                elif opt == "--xor-mark":
                    mark ^= int(value, 0)
                elif opt == "--set-xmark":
                    v, mask = _mark(value)
                    mark = (mark & ~mask) ^ v
            yield replace(st, mark=mark), None
        else:
            if rule.target_args:
                raise TraceError(f"options for a chain jump: {rule.text}")
            yield from self._chain(table, target, packet, src, src_local, st, depth + 1)


def _host(endpoint: str) -> str:
    host, _, _port = endpoint.rpartition(":")
    return host.strip("[]")


def trace(
    rules: str | Mapping[str, Mapping[str, Sequence[str]]],
    packet: Packet,
    local_ips: Sequence[str] = (),
) -> Trace:
    """One-shot: parse RULES and trace PACKET (see Tracer for repeated traces)."""
    return Tracer(rules, local_ips).trace(packet)
