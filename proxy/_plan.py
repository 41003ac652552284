"""Pure planning: desired Tables + what the kernel holds -> the iptables-restore inputs.

No side effects here, so every decision about *what* to write is unit-testable by looking
at text. Two rules make every intermediate kernel state consistent, however the work is
split into transactions: a chain is created before anything jumps to it, and deleted only
in the transaction that removes (or after the one that removed) the last jump to it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from netplane.proxy.render import BUILTIN_JUMPS, Tables, format_restore

# Chains owned by one service; only these are ever garbage-collected, never kubelet's
# KUBE-FIREWALL / KUBE-KUBELET-CANARY or another program's chains.
SERVICE_CHAIN = re.compile(r"^KUBE-(SVC|SVL|EXT|FW|SEP)-")
_TARGET = re.compile(r"\s-[jg]\s+(\S+)")
OURS_CHAIN = re.compile(r"^(KUBE-|NETPLANE-)")  # everything `cleanup` removes
CANARY = "KUBE-PROXY-CANARY"


@dataclass(frozen=True, slots=True)
class Jump:
    """A rule in a built-in chain that leads into our chains, as kube-proxy installs."""

    table: str
    chain: str  # built-in chain
    match: str  # e.g. "-m conntrack --ctstate NEW", or ""
    target: str
    comment: str

    def rule(self) -> str:
        match = f"{self.match} " if self.match else ""
        return f'-I {self.chain} {match}-m comment --comment "{self.comment}" -j {self.target}'


# Inserted at the top of their chain one by one, so the last inserted ends up first.
JUMPS = tuple(Jump(*j) for j in reversed(BUILTIN_JUMPS))


@dataclass(frozen=True, slots=True)
class Saved:
    """The parts of an iptables-save dump the syncer needs."""

    chains: Mapping[str, frozenset[str]]  # table -> every chain (built-in and user)
    rules: Mapping[str, tuple[str, ...]]  # table -> `-A` lines


_BUILTIN_RULE = tuple(
    f"-A {c} " for c in ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
)


def parse_save(text: str, all_rules: bool = True) -> Saved:
    """Chains and `-A` lines per table; ALL_RULES=False keeps only the built-in chains'
    rules (all a sync needs: at 10k services that skips 170,000 lines)."""
    chains: dict[str, set[str]] = {}
    rules: dict[str, list[str]] = {}
    table_chains: set[str] = set()
    table_rules: list[str] = []
    for line in text.split("\n"):
        first = line[:1]
        if first == "-":
            if line.startswith("-A ") and (all_rules or line.startswith(_BUILTIN_RULE)):
                table_rules.append(line)
        elif first == ":":
            table_chains.add(line[1:].split(" ", 1)[0])
        elif first == "*":
            table = line[1:].strip()
            table_chains = chains.setdefault(table, set())
            table_rules = rules.setdefault(table, [])
    return Saved(
        {t: frozenset(c) for t, c in chains.items()}, {t: tuple(r) for t, r in rules.items()}
    )


def missing_jumps(saved: Saved, jumps: Iterable[Jump] = JUMPS) -> dict[str, list[str]]:
    """Per table, the restore lines adding the built-in chain jumps (and the mangle
    canary) that SAVED does not have yet."""
    out: dict[str, list[str]] = {}
    for j in jumps:
        present = any(
            line.startswith(f"-A {j.chain} ") and line.endswith(f"-j {j.target}")
            for line in saved.rules.get(j.table, ())
        )
        if not present:
            out.setdefault(j.table, []).append(j.rule())
    if CANARY not in saved.chains.get("mangle", frozenset()):
        out.setdefault("mangle", []).append(f":{CANARY} - [0:0]")
    return out


def append_lines(texts: list[str], extra: Mapping[str, Sequence[str]]) -> list[str]:
    """Add EXTRA lines to the last transaction of each table (to the last call if none).

    Jumps go in the same call as the chains they point to: on the legacy variant every
    restore call rewrites the whole table, so a separate call would double the cost.
    """
    texts = list(texts)
    for table, lines in extra.items():
        if not lines:
            continue
        block = "".join(f"{line}\n" for line in lines)
        for i in range(len(texts) - 1, -1, -1):
            start = texts[i].find(f"*{table}\n")
            if start >= 0:
                end = texts[i].index("COMMIT\n", start)
                texts[i] = texts[i][:end] + block + texts[i][end:]
                break
        else:
            if not texts:
                texts.append("")
            texts[-1] += f"*{table}\n{block}COMMIT\n"
    return texts


def targets(lines: Iterable[str]) -> set[str]:
    return {m.group(1) for line in lines for m in _TARGET.finditer(" " + line)}


def changed_chains(desired: Tables, applied: Tables, whole: Sequence[str] = ("filter",)) -> Tables:
    """Chains whose lines differ from the last applied state (every chain of WHOLE tables)."""
    out: Tables = {}
    for table, chains in desired.items():
        old = applied.get(table, {})
        if table in whole:
            out[table] = dict(chains)
        else:
            out[table] = {c: lines for c, lines in chains.items() if old.get(c) != lines}
    return out


def changes(
    desired: Tables,
    applied: Tables,
    previous: Mapping[str, Mapping[str, tuple[str, ...] | None]] | None = None,
) -> tuple[Tables, dict[str, list[str]]]:
    """(chains to write, chains to delete) to go from APPLIED to DESIRED.

    PREVIOUS, when given, holds per table the only chains that can differ, with their
    lines before the change (None: did not exist); tables not in it are compared whole.
    The syncer knows which services it re-rendered: comparing 60,000 unchanged chains
    is not needed.
    """
    write: Tables = {}
    deleted: dict[str, list[str]] = {}
    for table, chains in desired.items():
        if previous is None or table not in previous:
            old = applied.get(table, {})
            write[table] = changed_chains({table: chains}, {table: old})[table]
            deleted[table] = sorted(set(old) - set(chains))
            continue
        before = previous[table]
        write[table] = {c: chains[c] for c in before if c in chains and before[c] != chains[c]}
        deleted[table] = sorted(
            c for c, lines in before.items() if c not in chains and lines is not None
        )
    return write, deleted


def stale_chains(desired: Tables, existing: Mapping[str, Iterable[str]], everything: bool = False):
    """Chains to delete: in EXISTING but not desired (only service chains unless EVERYTHING)."""
    return {
        table: sorted(
            c
            for c in chains
            if c not in desired.get(table, {}) and (everything or SERVICE_CHAIN.match(c))
        )
        for table, chains in existing.items()
        if table in desired
    }


def single(write: Tables, deleted: Mapping[str, Sequence[str]]) -> list[str]:
    """Everything in one transaction per table (legacy, and small nft updates)."""
    write = {t: c for t, c in write.items() if c or deleted.get(t)}
    if not write and not any(deleted.values()):
        return []
    return [format_restore(write, deleted={t: d for t, d in deleted.items() if d})]


def chunked(
    write: Tables,
    deleted: Mapping[str, Sequence[str]],
    existing: Mapping[str, Iterable[str]],
    groups: Iterable[Iterable[str]],
    chunk: int,
) -> list[str]:
    """Split a big nat update into transactions of about CHUNK services each.

    iptables-nft-restore is superlinear in the chains of one call, so a 10k-service load is
    cut into pieces: (1) top-level nat chains whose jump targets already exist are written,
    and missing ones are created empty; (2) per chunk, its services' own chains (nothing
    jumps to new ones yet); (3) the remaining top-level chains, the filter table and the
    deletion of stale chains. Each step only adds jumps to chains that exist.
    """
    nat = dict(write.get("nat", {}))
    groups = [[c for c in g if c in nat] for g in groups]
    groups = [g for g in groups if g]
    if len(groups) <= chunk:
        return single(write, deleted)
    owned = {c for g in groups for c in g}
    top = {c: lines for c, lines in nat.items() if c not in owned}
    have = set(existing.get("nat", ()))
    first: dict[str, tuple[str, ...]] = {}
    last: dict[str, tuple[str, ...]] = {}
    for c, lines in top.items():
        if targets(lines) & owned:
            last[c] = lines
            if c not in have:
                first[c] = ()  # create it empty so that others may jump to it
        else:
            first[c] = lines
    texts = []
    if first:
        texts.append(format_restore({"nat": first}))
    for i in range(0, len(groups), chunk):
        part = {c: nat[c] for g in groups[i : i + chunk] for c in g}
        texts.append(format_restore({"nat": part}))
    rest: Tables = {t: c for t, c in write.items() if t != "nat"}
    rest["nat"] = last
    texts.extend(single(rest, deleted))
    return texts


# (desired tables, chains to delete, built-in jumps to add), known once every service is rendered
Finish = tuple[Tables, Mapping[str, Sequence[str]], Mapping[str, Sequence[str]]]


def streamed_full(
    head: Sequence[str],
    batches: Iterable[Mapping[str, Sequence[str]]],
    finish: Callable[[], Finish],
) -> Iterator[str]:
    """A full sync's restore input in pieces, so iptables-restore parses while we render.

    The nat table opens by declaring the HEAD chains (the top-level ones services jump to,
    e.g. KUBE-MARK-MASQ); each of BATCHES (services' own chains, produced lazily) is then
    declared and filled. FINISH, called after the last batch, gives what only the whole
    picture tells: the top-level chains' lines (which jump to every service chain, now all
    declared), the stale chains to delete, the missing built-in jumps, the other tables.
    Joined, the pieces hold the same transactions as `single(desired, deleted)` plus the
    jumps, in another line order; nothing applies before COMMIT, so it is as atomic.
    (Declaring every chain first and streaming only the declarations during the render
    was measured too: libiptc is a little faster with that order, but the overlap is
    smaller and the sync was slower overall.)
    """
    yield f"*nat\n{_declare(head)}"
    written: set[str] = set()
    for chains in batches:
        written.update(chains)
        yield _declare(chains) + "".join(line + "\n" for lines in chains.values() for line in lines)
    desired, deleted, jumps = finish()
    nat = desired.get("nat", {})
    rest = {c: lines for c, lines in nat.items() if c not in written}
    gone = [c for c in deleted.get("nat", ()) if c not in nat]
    tail = [_declare([c for c in rest if c not in head]), _declare(gone)]
    tail += [line + "\n" for lines in rest.values() for line in lines]
    tail += [f"-X {c}\n" for c in gone]
    tail += [line + "\n" for line in jumps.get("nat", ())]
    tail.append("COMMIT\n")
    others = {t: c for t, c in desired.items() if t != "nat"}
    other_deleted = {t: d for t, d in deleted.items() if t != "nat" and d}
    texts = [format_restore(others, other_deleted)] if others or other_deleted else []
    texts = append_lines(texts, {t: j for t, j in jumps.items() if t != "nat"})
    yield "".join(tail) + "".join(texts)


def _declare(chains: Iterable[str]) -> str:
    return "".join(f":{c} - [0:0]\n" for c in chains)
