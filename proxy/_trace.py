"""What a packet tracer answers, whatever the ruleset it read.

One result model for every reader: the iptables reader (`_trace_iptables`, from
`iptables-save` text) and the nftables one build the same `Trace`, so `netplane proxy trace`
prints and serialises them the same way.

A trace explores every branch a packet can take: a `-m statistic` rule is taken with its
probability and skipped with the rest, an affinity check (`-m recent --rcheck`) is taken
only by a client that connected before. Each `Path` is one way through, with the rules it
passed (`Step`), its probability among new connections, and the affinity conditions it
needs; `Trace.outcomes` is the set of distinct ends (verdict, endpoint, masquerade).
"""

from __future__ import annotations

from dataclasses import dataclass


class TraceError(ValueError):
    """The rules use something the tracer does not model, or are malformed."""


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
class Step:
    """One rule a path passed: it matched, or it is a branch the path took or skipped."""

    table: str
    chain: str
    rule: str  # as the ruleset spells it
    note: str = ""  # "taken (33.3%)", "skipped (66.7%)", "not understood: ...", ...


@dataclass(frozen=True, slots=True)
class Path:
    outcome: Outcome
    probability: float  # among new connections, over the random branches taken or skipped
    conditions: tuple[str, ...] = ()  # what earlier connections must have left (affinity)
    steps: tuple[Step, ...] = ()
    warnings: tuple[str, ...] = ()  # rules not understood on the way (assumed not to match)


@dataclass(frozen=True, slots=True)
class Trace:
    outcomes: frozenset[Outcome]
    paths: tuple[Path, ...] = ()

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

    def shares(self) -> dict[Outcome, float]:
        """Each outcome's share of new connections (paths without affinity conditions)."""
        out: dict[Outcome, float] = {}
        for p in self.paths:
            if not p.conditions:
                out[p.outcome] = out.get(p.outcome, 0.0) + p.probability
        return out
