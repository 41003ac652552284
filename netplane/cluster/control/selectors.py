"""Label selectors as kubectl's `-l` takes them (pure): `app=blue,tier!=db,env in (a,b),x,!y`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass


class SelectorError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # = != in notin exists !exists
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op in ("=", "in"):
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values  # != and notin match absent keys


_TERM = re.compile(
    r"\s*(?:(?P<not>!)\s*(?P<nkey>[\w./-]+)"
    r"|(?P<key>[\w./-]+)\s*(?:(?P<op>==|=|!=)\s*(?P<value>[\w.-]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<set>[^)]*)\))?)\s*(?:,|$)"
)


def parse_selector(text: str) -> tuple[Requirement, ...]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TERM.match(text, pos)
        if not m or m.end() == pos:
            raise SelectorError(f"unable to parse requirement: {text[pos:]!r}")
        if m["not"]:
            out.append(Requirement(m["nkey"], "!exists"))
        elif m["op"]:
            out.append(Requirement(m["key"], "!=" if m["op"] == "!=" else "=", (m["value"],)))
        elif m["setop"]:
            values = tuple(v.strip() for v in m["set"].split(",") if v.strip())
            out.append(Requirement(m["key"], m["setop"], values))
        else:
            out.append(Requirement(m["key"], "exists"))
        pos = m.end()
    return tuple(out)


def matches(selector: tuple[Requirement, ...], labels: Mapping[str, str]) -> bool:
    return all(r.matches(labels) for r in selector)
