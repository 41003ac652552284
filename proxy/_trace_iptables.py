"""The iptables reader of the packet tracer: follow a packet through iptables-restore text
(ours, or `iptables-save` output of a live node) the way the kernel would, exploring every
branch a random or stateful match could take. The result is `_trace.Trace`.

Path (as kube-proxy wires the built-in chains, see `render.BUILTIN_JUMPS`; when the input
already has rules in a built-in chain those are used instead):

    arriving on an interface:  nat PREROUTING -> filter INPUT (local dst) | FORWARD
                               -> nat POSTROUTING
    locally generated:         nat OUTPUT -> filter OUTPUT -> nat POSTROUTING
                               (-> filter INPUT when the final destination is local)

`-m statistic` is both taken (with its probability) and skipped; `-m recent --rcheck` both
(taken only by a client that connected before), so the result lists every endpoint a
packet can reach and how likely each is. Only the matches and targets the renderer emits
are understood (plus the default options iptables-save adds to them). Strict parsing (our
own rules) raises `TraceError` for anything else rather than guessing; a live node's
ruleset is read leniently: rules of other programs that are not understood are reported
on the paths that meet them and assumed not to match.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

from netplane.proxy._trace import Outcome, Packet, Path, Step, Trace, TraceError
from netplane.proxy.render import BUILTIN_JUMPS

_BUILTIN = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
}

_MAX_DEPTH = 64


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
    unknown: str = ""  # why the rule is not understood (lenient parsing only)

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


def parse_restore(text: str, strict: bool = True) -> ParsedTables:
    """iptables-restore / iptables-save text -> {table: {chain: [Rule]}}.

    STRICT=False keeps a rule that is not understood as an `unknown` Rule instead of
    raising (a live node also holds other programs' rules)."""
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
            try:
                rule = parse_rule(line)
            except TraceError as e:
                if strict or len(line.split()) < 2:
                    raise
                rule = Rule(line.split()[1], line, unknown=str(e))
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
class _State:
    """One branch's packet and history so far."""

    dst: str
    mark: int = 0
    dnat: str | None = None
    recent: frozenset[str] = field(default_factory=frozenset)
    probability: float = 1.0
    conditions: tuple[str, ...] = ()
    steps: tuple[Step, ...] = ()
    warnings: tuple[str, ...] = ()

    def passed(self, table: str, rule: Rule, note: str = "") -> _State:
        return replace(self, steps=(*self.steps, Step(table, rule.chain, rule.text, note)))


@dataclass(frozen=True, slots=True)
class _Branch:
    """A rule that may or may not match: taken with PROBABILITY (None: decided by what
    earlier connections left, see CONDITION)."""

    probability: float | None
    condition: str = ""  # what the taken branch assumes
    negation: str = ""  # what the skipped one assumes


_Walk = Iterator[tuple[_State, str | None]]  # (state, verdict); None: fell through


class Tracer:
    def __init__(
        self,
        rules: str | Mapping[str, Mapping[str, Sequence[str]]],
        local_ips: Sequence[str] = (),
        strict: bool = True,
    ) -> None:
        if isinstance(rules, str):
            self.tables = parse_restore(rules, strict)
        else:
            self.tables = parse_tables(rules)
        self.local = [
            ipaddress.ip_network(x, strict=False) for x in (*local_ips, "127.0.0.0/8", "::1/128")
        ]
        self.builtin: dict[tuple[str, str], list[Rule]] = {}
        for table, chain, match, target, _comment in BUILTIN_JUMPS:
            chains = self.tables.get(table, {})
            if chains.get(chain) or target not in chains:
                continue  # the input wires this built-in chain itself, or lacks the target
            text = f"-A {chain} {match + ' ' if match else ''}-j {target}"
            self.builtin.setdefault((table, chain), []).append(parse_rule(text))
        self.implied = {r for rules in self.builtin.values() for r in rules}

    def is_local(self, ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        return any(addr in net for net in self.local)

    def trace(self, packet: Packet) -> Trace:
        paths = list(_PacketWalk(self, packet).paths())
        return Trace(frozenset(p.outcome for p in paths), tuple(paths))


class _PacketWalk:
    """One packet's walk through a Tracer's tables."""

    def __init__(self, tracer: Tracer, packet: Packet) -> None:
        self.tracer, self.packet = tracer, packet
        self.src = ipaddress.ip_address(packet.src)
        local = packet.src_local
        self.src_local = tracer.is_local(packet.src) if local is None else local

    def paths(self) -> Iterator[Path]:
        packet = self.packet
        first = "OUTPUT" if packet.output else "PREROUTING"
        for st, verdict in self._chain("nat", first, _State(packet.dst)):
            if verdict in ("DROP", "REJECT"):
                yield _end(st, Outcome(verdict))
                continue
            st = replace(st, dst=_host(st.dnat) if st.dnat else packet.dst)
            dst_local = self._dst_local(st)
            hooks = ["OUTPUT"] if packet.output else ["INPUT" if dst_local else "FORWARD"]
            if packet.output and dst_local:
                hooks.append("INPUT")
            yield from self._filter_then_postrouting(hooks, st)

    def _filter_then_postrouting(self, hooks: list[str], st: _State) -> Iterator[Path]:
        if hooks:
            for st2, verdict in self._chain("filter", hooks[0], st):
                if verdict in ("DROP", "REJECT"):
                    yield _end(st2, Outcome(verdict, st2.dnat))
                else:
                    yield from self._filter_then_postrouting(hooks[1:], st2)
            return
        for st2, verdict in self._chain("nat", "POSTROUTING", st):
            if verdict in ("DROP", "REJECT"):
                raise TraceError("POSTROUTING dropped a packet: not modelled")
            kind = "DNAT" if st2.dnat else "NO_MATCH"
            yield _end(st2, Outcome(kind, st2.dnat, verdict == "MASQUERADE"))

    def _dst_local(self, st: _State) -> bool:
        if st.dst == self.packet.dst and self.packet.dst_local is not None:
            return self.packet.dst_local
        return self.tracer.is_local(st.dst)

    def _chain(self, table: str, chain: str, st: _State, depth: int = 0) -> _Walk:
        """Every (state, verdict) a walk of CHAIN can end in; verdict None = fell through."""
        if depth > _MAX_DEPTH:
            raise TraceError(f"jump depth over {_MAX_DEPTH} at {table} {chain}: a loop?")
        rules = self.tracer.builtin.get((table, chain))
        if rules is None:
            chains = self.tracer.tables.get(table, {})
            if chain not in chains:
                if chain in _BUILTIN.get(table, ()):
                    rules = []
                else:
                    raise TraceError(f"jump to unknown chain {table} {chain}")
            else:
                rules = chains[chain]
        for st2, v in self._walk(table, rules, 0, st, depth):
            yield st2, (None if v == "RETURN" else v)

    def _walk(self, table: str, rules: list[Rule], i: int, st: _State, depth: int) -> _Walk:
        while i < len(rules):
            rule = rules[i]
            if rule.unknown:
                note = f"not understood ({rule.unknown}): assumed not to match"
                st = replace(st.passed(table, rule, note), warnings=(*st.warnings, rule.text))
                i += 1
                continue
            m = self._match(rule, st)
            if m is False:
                i += 1
                continue
            skipped = None
            if m is not True:  # could go either way: the skipped branch is explored too
                p = m.probability
                if p is None:
                    skipped = st.passed(table, rule, f"skipped: {m.negation}")
                    st = st.passed(table, rule, f"taken: {m.condition}")
                    st = replace(st, conditions=(*st.conditions, m.condition))
                else:
                    skipped = st.passed(table, rule, f"skipped ({1 - p:.1%})")
                    skipped = replace(skipped, probability=st.probability * (1 - p))
                    st = replace(
                        st.passed(table, rule, f"taken ({p:.1%})"),
                        probability=st.probability * p,
                    )
            else:
                st = st.passed(table, rule, "implied" if rule in self.tracer.implied else "")
            for st2, v in self._apply(table, rule, st, depth):
                if v is None:
                    yield from self._walk(table, rules, i + 1, st2, depth)
                else:
                    yield st2, v
            if skipped is not None:
                yield from self._walk(table, rules, i + 1, skipped, depth)
            return
        yield st, None

    def _match(self, rule: Rule, st: _State) -> bool | _Branch:
        """True, False, or a `_Branch` (both possible: random / unknown history)."""
        src, packet = self.src, self.packet
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
        probability: float | None = 1.0
        conditions: list[str] = []
        negations: list[str] = []
        for m in rule.matches:
            kind = m[0]
            if kind == "comment":
                continue
            if kind == "port":
                if m[1] is not None and m[1] != packet.dport:
                    return False
            elif kind == "addrtype":
                local = self.src_local if m[1] == "src" else self._dst_local(st)
                if local == m[2]:
                    return False
            elif kind == "statistic":
                if m[1] <= 0:
                    return False
                if m[1] < 1 and probability is not None:
                    probability *= m[1]
            elif kind == "recent-check":
                if m[1] not in st.recent:  # an earlier connection may have set it
                    probability = None
                    conditions.append(f"source in recent list {m[1]} (an earlier connection)")
                    negations.append(f"source not in recent list {m[1]}")
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
        if probability == 1.0:
            return True
        return _Branch(probability, " and ".join(conditions), " or ".join(negations))

    def _apply(self, table: str, rule: Rule, st: _State, depth: int) -> _Walk:
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
            yield from self._chain(table, target, st, depth + 1)


def _end(st: _State, outcome: Outcome) -> Path:
    return Path(outcome, st.probability, st.conditions, st.steps, st.warnings)


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
