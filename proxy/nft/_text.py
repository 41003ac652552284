"""nft's text form of the object model: what `netplane proxy render --backend nftables`
prints and what `nft list table ip kube-proxy` shows for the same objects.

`format_ruleset` writes the listing layout (`table ip kube-proxy { ... }`, sets and maps
first, then chains), loadable with `nft -f`; `format_tables` all our tables. `format_rule`
is one rule's text, exactly as `nft list` prints it (tested against the real `nft`), so
people can grep for it.
"""

from __future__ import annotations

from collections.abc import Iterable

from netplane.proxy.nft._model import (
    DISPATCH_IP,
    Addr,
    Chain,
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
    Ruleset,
    SetDef,
    Statement,
    Unparsed,
    Update,
    Verdict,
    VMap,
)

# nft's priority names, and the hooks it accepts them for (ip/ip6 families)
_PRIORITIES = {"filter": (0, None), "dstnat": (-100, "prerouting"), "srcnat": (100, "postrouting")}


def _ip(value: str) -> str:
    return "ip6" if ":" in value else "ip"


def _mark(mark: int) -> str:
    return f"0x{mark:08x}"


def format_stmt(s: Statement, family: str) -> str:
    if isinstance(s, Addr):
        op = "!= " if s.negate else ""
        return f"{_ip(s.value)} {s.field} {op}{s.value}"
    if isinstance(s, Port):
        return f"{s.proto} dport {s.port}"
    if isinstance(s, Proto):
        return f"meta l4proto {s.proto}"
    if isinstance(s, Verdict):
        return f"{s.kind} {s.chain}" if s.chain else s.kind
    if isinstance(s, Numgen):
        return f"numgen random mod {s.mod} {s.value}"
    if isinstance(s, VMap):
        key = (
            f"{family} daddr . meta l4proto . th dport"
            if s.key == DISPATCH_IP
            else ("meta l4proto . th dport")
        )
        return f"{key} vmap @{s.map}"
    if isinstance(s, Dnat):
        host = f"[{s.ip}]" if ":" in s.ip else s.ip
        return f"dnat to {host}:{s.port}"
    if isinstance(s, InSet):
        return f"{family} {s.field} @{s.set}"
    if isinstance(s, Update):
        return f"update @{s.set} {{ {family} {s.field} }}"
    if isinstance(s, FibLocal):
        return f"fib {s.field} type local"
    if isinstance(s, Keyword | Unparsed):
        return s.text
    if isinstance(s, Mark):
        if s.op == "unset":
            return f"meta mark & {_mark(s.mark)} == {_mark(0)}"
        return f"meta mark set meta mark {'|' if s.op == 'or' else '^'} {_mark(s.mark)}"
    raise TypeError(f"not an nftables statement: {s!r}")


def format_rule(rule: Rule, family: str) -> str:
    text = " ".join(format_stmt(s, family) for s in rule.stmts)
    if rule.comment is not None:
        text += f' comment "{rule.comment}"'
    return text


def _priority(value: int, hook: str) -> str:
    for name, (base, only) in _PRIORITIES.items():
        if only not in (None, hook) or abs(value - base) > 10:
            continue
        if value == base:
            return name
        return f"{name} {'-' if value < base else '+'} {abs(value - base)}"
    return str(value)


def duration(seconds: int) -> str:
    """nft's way of printing a timeout: `3h`, `1d2h`, `90s` -> `1m30s`."""
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"


def _element(e: Element) -> str:
    text = " . ".join(e.key)
    if e.comment is not None:
        text += f' comment "{e.comment}"'
    if e.verdict is not None:
        text += f" : {format_stmt(e.verdict, '')}"
    return text


def _set(s: SetDef, elements: list[Element]) -> list[str]:
    out = [f"\t{'map' if s.map else 'set'} {s.name} {{"]
    out.append(f"\t\ttype {s.key}{' : verdict' if s.map else ''}")
    if s.timeout:
        out += ["\t\tsize 65535", "\t\tflags dynamic,timeout", f"\t\ttimeout {duration(s.timeout)}"]
    if s.comment is not None:
        out.append(f'\t\tcomment "{s.comment}"')
    if elements:
        out.append("\t\telements = { " + ",\n\t\t\t     ".join(map(_element, elements)) + " }")
    out.append("\t}")
    return out


def _chain(chain: Chain, family: str) -> list[str]:
    out = [f"\tchain {chain.name} {{"]
    if chain.hook is not None:
        h = chain.hook
        priority = _priority(h.priority, h.hook)
        out.append(f"\t\ttype {h.type} hook {h.hook} priority {priority}; policy accept;")
    if chain.comment is not None:
        out.append(f'\t\tcomment "{chain.comment}"')
    out.extend("\t\t" + format_rule(r, family) for r in chain.rules)
    out.append("\t}")
    return out


def format_ruleset(ruleset: Ruleset) -> str:
    family = ruleset.family
    blocks = [
        _set(ruleset.sets[name], list(ruleset.elements.get(name, {}).values()))
        for name in ruleset.sets
    ]
    blocks += [_chain(chain, family) for chain in ruleset.chains.values()]
    out = [f"table {family} {ruleset.table} {{"]
    if ruleset.comment is not None:
        out.append(f'\tcomment "{ruleset.comment}"')
    for i, block in enumerate(blocks):
        out += block if i == len(blocks) - 1 else [*block, ""]
    out.append("}")
    return "\n".join(out) + "\n"


def format_tables(tables: Iterable[Ruleset]) -> str:
    return "".join(format_ruleset(t) for t in tables)
