"""Pure planning: desired Tables + what the kernel holds -> the iptables-restore inputs.

No side effects here, so every decision about *what* to write is unit-testable by looking
at text. Two rules make every intermediate kernel state consistent, however the work is
split into transactions: a chain is created before anything jumps to it, and deleted only
in the transaction that removes (or after the one that removed) the last jump to it.
Reading back is planned here too: `parse_chains` + `drift` say how the kernel's rules
differ from what was written.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from netplane.proxy.backend import Drift
from netplane.proxy.render import BUILTIN_JUMPS, TOP_LEVEL_CHAINS, Tables, format_restore

CANARY = "KUBE-PROXY-CANARY"
# Chains owned by one service (kube-proxy's prefixes).
SERVICE_CHAIN = re.compile(r"^KUBE-(SVC|SVL|EXT|FW|SEP)-")
# Per table, the top-level chains we write (and kube-proxy writes); the mangle table only
# holds the canary.
_TOP_LEVEL = {
    **{t: frozenset(c) for t, c in TOP_LEVEL_CHAINS.items()},
    "mangle": frozenset({CANARY}),
}
_TARGET = re.compile(r"\s-[jg]\s+(\S+)")


def ours(table: str, chain: str) -> bool:
    """The one definition of "our chains": what the syncer writes, verifies and
    garbage-collects and what `netplane proxy cleanup` removes. kube-proxy's top-level
    chains and per-service chains; never kubelet's (KUBE-FIREWALL, KUBE-KUBELET-CANARY,
    KUBE-MARK-DROP) or another program's, whatever their prefix."""
    return chain in _TOP_LEVEL.get(table, ()) or SERVICE_CHAIN.match(chain) is not None


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


def builtin_chains(jumps: Iterable[Jump] = JUMPS) -> list[tuple[str, str]]:
    """(table, built-in chain) pairs our jumps live in, for looking them up one by one."""
    return sorted({(j.table, j.chain) for j in jumps})


def targets(lines: Iterable[str]) -> set[str]:
    return {m.group(1) for line in lines for m in _TARGET.finditer(" " + line)}


# ---- what to write -------------------------------------------------------------------

Known = Mapping[str, Mapping[str, tuple[str, ...] | None]]  # table -> chain -> lines | None


@dataclass(frozen=True, slots=True)
class Transaction:
    """One iptables-restore call, and what the kernel holds once it succeeded.

    `text` is the restore input, or its pieces produced lazily (a streamed full sync: then
    `written` and `deleted` are filled in when the last piece has been produced).
    """

    text: str | Iterator[str]
    written: Mapping[str, Mapping[str, tuple[str, ...]]]  # table -> chain -> lines
    deleted: Mapping[str, Sequence[str]]
    jumps: bool = False  # adds built-in chain jumps (or the canary)


def diff(
    desired: Tables, known: Known, candidates: Mapping[str, Iterable[str]] | None = None
) -> tuple[Tables, dict[str, list[str]]]:
    """(chains to write, chains to delete) to bring the kernel from KNOWN to DESIRED.

    KNOWN holds our chains in the kernel: their lines as written, or None when the chain
    exists with contents we do not know (it is rewritten). CANDIDATES, per table, limits
    the comparison to the chains that can differ (the syncer knows which services it
    re-rendered: comparing 60,000 unchanged chains is not needed); tables it does not
    name are compared whole.
    """
    write: Tables = {}
    deleted: dict[str, list[str]] = {}
    for table, chains in desired.items():
        have = known.get(table, {})
        names = candidates.get(table) if candidates and table in candidates else None
        if names is None:
            names = chains.keys() | have.keys()
        write[table] = {
            c: chains[c]
            for c in names
            if c in chains and (old := have.get(c)) is not chains[c] and old != chains[c]
        }
        deleted[table] = sorted(c for c in names if c not in chains and c in have)
    return write, deleted


def single(write: Tables, deleted: Mapping[str, Sequence[str]]) -> list[Transaction]:
    """Everything in one transaction (legacy, and small nft updates); none if nothing to do."""
    write = {t: c for t, c in write.items() if c or deleted.get(t)}
    gone = {t: list(d) for t, d in deleted.items() if d}
    if not write and not gone:
        return []
    return [Transaction(format_restore(write, deleted=gone), write, gone)]


def chunked(
    write: Tables,
    deleted: Mapping[str, Sequence[str]],
    existing: Mapping[str, Iterable[str]],
    groups: Iterable[Iterable[str]],
    chunk: int,
) -> list[Transaction]:
    """Split a big nat update into transactions of about CHUNK services each.

    iptables-nft-restore is superlinear in the chains of one call, so a 10k-service load is
    cut into pieces: (1) top-level nat chains whose jump targets already exist are written,
    and missing ones are created empty; (2) per chunk, its services' own chains (nothing
    jumps to new ones yet); (3) the remaining top-level chains, the filter table and the
    deletion of stale chains. Each step only adds jumps to chains that exist, and each is a
    consistent state on its own: a sync that fails at step k can go on from step k.
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
    out = []
    if first:
        out.append(Transaction(format_restore({"nat": first}), {"nat": first}, {}))
    for i in range(0, len(groups), chunk):
        part = {c: nat[c] for g in groups[i : i + chunk] for c in g}
        out.append(Transaction(format_restore({"nat": part}), {"nat": part}, {}))
    rest: Tables = {t: c for t, c in write.items() if t != "nat"}
    rest["nat"] = last
    out.extend(single(rest, deleted))
    return out


def with_jumps(txs: list[Transaction], extra: Mapping[str, Sequence[str]]) -> list[Transaction]:
    """Add EXTRA lines to the last transaction of each table (to the last one if none).

    Jumps go in the same call as the chains they point to: on the legacy variant every
    restore call rewrites the whole table, so a separate call would double the cost.
    """
    txs = list(txs)
    for table, lines in extra.items():
        if not lines:
            continue
        block = "".join(f"{line}\n" for line in lines)
        for i in range(len(txs) - 1, -1, -1):
            text = txs[i].text
            assert isinstance(text, str)
            start = text.find(f"*{table}\n")
            if start >= 0:
                end = text.index("COMMIT\n", start)
                txs[i] = dataclasses.replace(
                    txs[i], text=text[:end] + block + text[end:], jumps=True
                )
                break
        else:
            if not txs:
                txs.append(Transaction("", {}, {}))
            last = txs[-1]
            assert isinstance(last.text, str)
            txs[-1] = dataclasses.replace(
                last, text=f"{last.text}*{table}\n{block}COMMIT\n", jumps=True
            )
    return txs


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
    txs = single(others, other_deleted)
    txs = with_jumps(txs, {t: j for t, j in jumps.items() if t != "nat"})
    yield "".join(tail) + "".join(str(tx.text) for tx in txs)


def _declare(chains: Iterable[str]) -> str:
    return "".join(f":{c} - [0:0]\n" for c in chains)


# ---- reading back ----------------------------------------------------------------------


def parse_chains(text: str) -> dict[str, dict[str, tuple[str, ...]]]:
    """An iptables-save dump as {table: {chain: its `-A` lines}}, every chain (empty ones
    too, built-in ones with their rules)."""
    out: dict[str, dict[str, list[str]]] = {}
    chains: dict[str, list[str]] = {}
    current = ""
    lines: list[str] = []
    for line in text.split("\n"):
        first = line[:1]
        if first == "-":
            if line.startswith("-A "):
                end = line.find(" ", 3)
                chain = line[3:] if end < 0 else line[3:end]
                if chain != current:
                    lines = chains.setdefault(chain, [])
                    current = chain
                lines.append(line)
        elif first == ":":
            chains.setdefault(line[1:].split(" ", 1)[0], [])
        elif first == "*":
            chains = out.setdefault(line[1:].strip(), {})
            current = ""
    return {t: {c: tuple(r) for c, r in table.items()} for t, table in out.items()}


def saved_of(kernel: Mapping[str, Mapping[str, tuple[str, ...]]]) -> Saved:
    """The `Saved` view (chain names, built-in chains' rules) of a `parse_chains` result."""
    return Saved(
        {t: frozenset(chains) for t, chains in kernel.items()},
        {
            t: tuple(line for c in _BUILTIN if c in chains for line in chains[c])
            for t, chains in kernel.items()
        },
    )


_BUILTIN = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
_MARK = re.compile(r"--(or|xor)-mark (\S+)")
_RECENT = re.compile(r"-m recent --name (\S+) (--set|--rcheck --seconds \d+ --reap)")
_PROBABILITY = re.compile(r"--probability (\d+\.\d+)")
_FULL_MASK = {"ipv4": "255.255.255.255", "ipv6": ":".join(["ffff"] * 8)}
_REJECT = {"ipv4": "icmp-port-unreachable", "ipv6": "icmp6-port-unreachable"}


def canonical(line: str, family: str) -> str:
    """LINE as iptables-save prints it back (the renderer writes kube-proxy's spelling).

    Known differences, checked on both variants and families by the tests: MARK's
    `--or-mark`/`--xor-mark` print as `--set-xmark`, `-m recent` gains its default mask
    and `--rsource` after the name, REJECT its default `--reject-with`, and the statistic
    probability is stored as a fraction of 2^31 and printed with 11 decimals.
    """
    if "-mark " in line:
        line = _MARK.sub(lambda m: f"--set-xmark {m[2]}/{m[2] if m[1] == 'or' else '0x0'}", line)
    if " -m recent " in line:
        mask = _FULL_MASK[family]
        line = _RECENT.sub(
            lambda m: f"-m recent {m[2]} --name {m[1]} --mask {mask} --rsource", line
        )
    if "--probability " in line:
        line = _PROBABILITY.sub(
            lambda m: f"--probability {math.floor(float(m[1]) * 2**31 + 0.5) / 2**31:.11f}", line
        )
    if line.endswith(" -j REJECT"):
        line += f" --reject-with {_REJECT[family]}"
    return line


def drift(
    desired: Tables, kernel: Mapping[str, Mapping[str, tuple[str, ...]]], family: str
) -> list[Drift]:
    """How KERNEL (a `parse_chains` read-back) differs from DESIRED: our chains missing,
    flushed or changed, stale service chains, missing built-in jumps and canary."""
    out: list[Drift] = []
    for table, chains in desired.items():
        have = kernel.get(table, {})
        for chain, lines in chains.items():
            got = have.get(chain)
            if got is None:
                out.append(Drift(table, chain, "missing"))
            elif got != lines and got != tuple(canonical(line, family) for line in lines):
                kind = "flushed" if not got else "changed"
                out.append(Drift(table, chain, kind, f"{len(got)} rules, {len(lines)} written"))
        out.extend(
            Drift(table, chain, "stale")
            for chain in sorted(have)
            if chain not in chains and SERVICE_CHAIN.match(chain)
        )
    for table, jumps in missing_jumps(saved_of(kernel)).items():
        for line in jumps:
            if line.startswith(":"):
                out.append(Drift(table, CANARY, "missing"))
            else:
                out.append(Drift(table, line.split()[1], "jump", line.rsplit(" ", 1)[-1]))
    return out


# ---- cleaning up -------------------------------------------------------------------------


def count_ours(save_output: str) -> int:
    """Our chains and the rules in or jumping to them, in an iptables-save dump."""
    count = 0
    for table, chains in parse_chains(save_output).items():
        mine = {c for c in chains if ours(table, c)}
        count += len(mine)
        count += sum(len(lines) for c, lines in chains.items() if c in mine)
        count += sum(
            1
            for c, lines in chains.items()
            if c not in mine
            for line in lines
            if targets([line]) & mine
        )
    return count


def cleanup_restore(dump: str) -> str:
    """The restore input that removes our chains (`ours`) found in an iptables-save DUMP,
    and the rules elsewhere that jump to them; nothing else."""
    out = []
    for table, chains in parse_chains(dump).items():
        mine = sorted(c for c in chains if ours(table, c))
        unjump = [
            "-D" + line[2:]
            for c, lines in chains.items()
            if c not in mine
            for line in lines
            if targets([line]) & set(mine)
        ]
        if mine or unjump:
            out.append(f"*{table}")
            out += [f":{c} - [0:0]" for c in mine]
            out += unjump
            out += [f"-X {c}" for c in mine]
            out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""
