"""`nft list ruleset` text -> our tables (`Ruleset`s), for the packet tracer.

Reads the listing layout `nft` prints (and `_text.format_ruleset` writes): tables, sets and
maps with their elements, chains with their hook line, comment and rules. Only our tables
(`kube-proxy`, `kube-proxy-<n>`) are read; other tables are named in `others`. A rule made
of statements this backend never writes becomes an `Unparsed` rule, which the tracer
reports and assumes not to match (a live node has other programs' rules).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field

from netplane.proxy._trace import TraceError
from netplane.proxy.nft._model import (
    CT_NEW,
    DISPATCH_IP,
    DISPATCH_PORT,
    MASQUERADE,
    REJECT,
    Addr,
    Chain,
    Dnat,
    Element,
    FibLocal,
    Hook,
    InSet,
    Mark,
    Numgen,
    Port,
    Proto,
    Rule,
    Ruleset,
    SetDef,
    Statement,
    Unparsed,
    Update,
    Verdict,
    VMap,
)
from netplane.proxy.nft._tables import shard_index

_PRIORITY_NAMES = {"filter": 0, "dstnat": -100, "srcnat": 100, "mangle": -150, "raw": -300}
_VERDICTS = ("accept", "drop", "return", "jump", "goto")
_PROTOS = ("tcp", "udp", "sctp")


@dataclass
class Parsed:
    tables: list[Ruleset] = field(default_factory=list)  # ours, in the listing's order
    others: list[str] = field(default_factory=list)  # "ip nat", ...: not read


def looks_like_nft(text: str) -> bool:
    first = next((x.strip() for x in text.splitlines() if x.strip()), "")
    return first.startswith("table ") and first.endswith("{")


def parse_ruleset(text: str) -> Parsed:
    out = Parsed()
    lines = [x.strip() for x in text.splitlines()]
    table = r"table (ip6?|inet|arp|bridge|netdev) (\S+) \{"
    for i, line, m, body in _level(lines, table):
        if not m:
            raise TraceError(f"line {i + 1}: expected a table, got: {line}")
        family, name = m.groups()
        if family in ("ip", "ip6") and shard_index(name) is not None:
            out.tables.append(_table(family, name, body, i + 1))
        else:
            out.others.append(f"{family} {name}")
    return out


def _level(
    lines: list[str], block: str
) -> Iterator[tuple[int, str, re.Match[str] | None, list[str]]]:
    """The non-empty lines of one nesting level: (index, line, match, body) where the line
    matches BLOCK (which opens a block: body is what stands up to its closing brace), else
    (index, line, None, [])."""
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.fullmatch(block, line) if line else None
        if m is None:
            if line:
                yield i, line, None, []
            i += 1
            continue
        end = _block_end(lines, i)
        yield i, line, m, lines[i + 1 : end]
        i = end + 1


def _block_end(lines: list[str], start: int) -> int:
    depth = 0
    for j in range(start, len(lines)):
        depth += lines[j].count("{") - lines[j].count("}")
        if depth == 0:
            return j
    raise TraceError(f"line {start + 1}: block not closed")


def _table(family: str, name: str, lines: list[str], offset: int) -> Ruleset:
    comment = None
    chains: dict[str, Chain] = {}
    sets: dict[str, SetDef] = {}
    elements: dict[str, dict[tuple[str, ...], Element]] = {}
    for i, line, m, body in _level(lines, r"(chain|set|map) (\S+) \{"):
        if m is None and line.startswith("comment "):
            comment = _unquote(line[len("comment ") :])
            continue
        if not m:
            raise TraceError(f"line {offset + i + 1}: not understood: {line}")
        kind, obj = m.groups()
        if kind == "chain":
            chains[obj] = _chain(obj, body)
        else:
            sets[obj], elements[obj] = _set(obj, kind == "map", body)
    return Ruleset(family, name, comment, chains, sets, elements)


def _chain(name: str, body: list[str]) -> Chain:
    hook = None
    comment = None
    rules: list[Rule] = []
    for line in body:
        if not line:
            continue
        m = re.fullmatch(r"type (\w+) hook (\w+) (?:device \S+ )?priority ([^;]+);.*", line)
        if m:
            hook = Hook(m.group(1), m.group(2), _priority(m.group(3)))
        elif line.startswith("comment ") and not rules:
            comment = _unquote(line[len("comment ") :])
        else:
            rules.append(parse_rule(line))
    return Chain(name, tuple(rules), hook, comment)


def _priority(text: str) -> int:
    m = re.fullmatch(r"(\w+)(?: ([+-]) (\d+))?", text.strip())
    if m and m.group(1) in _PRIORITY_NAMES:
        base = _PRIORITY_NAMES[m.group(1)]
        if m.group(2):
            base += int(m.group(3)) * (1 if m.group(2) == "+" else -1)
        return base
    try:
        return int(text)
    except ValueError:
        raise TraceError(f"priority not understood: {text}") from None


def _set(name: str, is_map: bool, body: list[str]) -> tuple[SetDef, dict]:
    key = ""
    timeout = 0
    comment = None
    elements: dict[tuple[str, ...], Element] = {}
    joined = " ".join(body)
    m = re.search(r"elements = \{(.*)\}", joined)
    for line in body:
        if line.startswith("type "):
            key = line[len("type ") :].split(" : ")[0].strip()
        elif line.startswith("timeout "):
            timeout = _seconds(line.split()[1])
        elif line.startswith("comment "):
            comment = _unquote(line[len("comment ") :])
    if m:
        for text in _split_elements(m.group(1)):
            e = _element(text)
            elements[e.key] = e
    return SetDef(name, key, is_map, timeout, comment), elements


def _split_elements(text: str) -> list[str]:
    out, depth, quoted, start = [], 0, False, 0
    for j, c in enumerate(text):
        if c == '"':
            quoted = not quoted
        elif not quoted and c == ",":
            out.append(text[start:j])
            start = j + 1
    out.append(text[start:])
    return [x.strip() for x in out if x.strip() and depth == 0]


def _element(text: str) -> Element:
    key_text, _, verdict_text = text.partition(" : ")
    comment = None
    m = re.search(r' comment "((?:[^"\\]|\\.)*)"', key_text)
    if m:
        comment = m.group(1)
        key_text = key_text[: m.start()] + key_text[m.end() :]
    key_text = re.sub(r" (expires|timeout) \S+", "", key_text)  # dynamic entries
    key = tuple(part.strip() for part in key_text.split(" . "))
    verdict = None
    if verdict_text:
        parts = verdict_text.split()
        verdict = Verdict(parts[0], parts[1] if len(parts) > 1 else None)
    return Element(key, verdict, comment)


def _seconds(text: str) -> int:
    total = 0
    for number, unit in re.findall(r"(\d+)(ms|d|h|m|s)", text):
        total += int(number) * {"d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0}[unit]
    return total


def _unquote(text: str) -> str:
    return shlex.split(text)[0] if text.startswith('"') else text


def parse_rule(line: str) -> Rule:
    """One rule as `nft list` prints it; an `Unparsed` rule when it is not one of ours."""
    try:
        toks = shlex.split(line)
    except ValueError:
        return Rule((Unparsed(line),))
    comment = None
    if len(toks) >= 2 and toks[-2] == "comment":
        comment, toks = toks[-1], toks[:-2]
    stmts: list[Statement] = []
    i = 0
    try:
        while i < len(toks):
            stmt, i = _statement(toks, i)
            stmts.append(stmt)
    except (IndexError, ValueError, _NotOurs):
        return Rule((Unparsed(line),), None)
    return Rule(tuple(stmts), comment)


class _NotOurs(Exception):
    pass


def _statement(t: list[str], i: int) -> tuple[Statement, int]:
    w = t[i]
    if w in ("ip", "ip6"):
        field = t[i + 1]
        dispatch = [".", "meta", "l4proto", ".", "th", "dport", "vmap"]
        if field == "daddr" and t[i + 2 : i + 9] == dispatch:
            return VMap(DISPATCH_IP, t[i + 9].lstrip("@")), i + 10
        if field not in ("saddr", "daddr"):
            raise _NotOurs
        value = t[i + 2]
        if value == "!=":
            return Addr(field, t[i + 3], True), i + 4
        if value.startswith("@"):
            return InSet(field, value[1:]), i + 3
        return Addr(field, value), i + 3
    if w in _PROTOS and t[i + 1] == "dport":
        return Port(w, int(t[i + 2])), i + 3
    if w == "meta" and t[i + 1] == "l4proto":
        if t[i + 2] == "." and t[i + 3 : i + 6] == ["th", "dport", "vmap"]:
            return VMap(DISPATCH_PORT, t[i + 6].lstrip("@")), i + 7
        if t[i + 2] in _PROTOS:
            return Proto(t[i + 2]), i + 3
    if w == "meta" and t[i + 1] == "mark":
        if t[i + 2] == "set" and t[i + 3 : i + 5] == ["meta", "mark"]:
            op = {"|": "or", "^": "xor"}.get(t[i + 5])
            if op:
                return Mark(op, int(t[i + 6], 16)), i + 7
        if t[i + 2] == "&" and t[i + 4] == "==" and int(t[i + 5], 16) == 0:
            return Mark("unset", int(t[i + 3], 16)), i + 6
    if w in _VERDICTS:
        if w in ("jump", "goto"):
            return Verdict(w, t[i + 1]), i + 2
        return Verdict(w), i + 1
    if w == "numgen" and t[i + 1 : i + 3] == ["random", "mod"]:
        return Numgen(int(t[i + 3]), int(t[i + 4])), i + 5
    if w == "dnat" and t[i + 1] == "to":
        host, _, port = t[i + 2].rpartition(":")
        return Dnat(host.strip("[]"), int(port)), i + 3
    if w == "update" and t[i + 2 : i + 6] in (
        ["{", "ip", "saddr", "}"],
        ["{", "ip6", "saddr", "}"],
    ):
        return Update(t[i + 1].lstrip("@")), i + 6
    if w == "fib" and t[i + 2 : i + 4] == ["type", "local"]:
        return FibLocal(t[i + 1]), i + 4
    if t[i : i + 3] == ["ct", "state", "new"]:
        return CT_NEW, i + 3
    if t[i : i + 2] == ["masquerade", "fully-random"]:
        return MASQUERADE, i + 2
    if w == "reject" and len(t) == i + 1:
        return REJECT, i + 1
    raise _NotOurs
