"""The one test double for the proxy's kernel runner (`netplane.proxy._iptables.Runner`).

`FakeIptables()` keeps the tables in memory and applies restore inputs the way
`iptables-restore --noflush` does, refusing what the kernel refuses (a rule in, or a jump
to, a chain that does not exist; deleting a chain that is missing, not empty or still
jumped to), one table at a time (a refused table leaves the ones committed before it in
place, as the real tool does). So a test that replays a plan through it also checks that
every intermediate state is consistent. `FakeIptables(real=Iptables(...))` passes
everything to a real runner (a test namespace's kernel) instead, and only records and
injects failures. Either way:
- `texts`: every restore input, in order (`take()` returns and forgets them);
- faults: `fail_every=N` refuses every Nth restore call, `fail_next(n)` the next n; a
  refused call changes nothing (the real tool is not even started);
- `fingerprint()` changes with every committed write, ours or anybody's;
- `save_seconds`: every `save()` takes that long, unless its stop event is set first
  (then SyncInterrupted, as when the real tool is killed);
- `after_restore(text)`, when set, runs after each committed restore (e.g. to set a stop
  event "while" a full sync is under way).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable

from netplane.proxy._iptables import Iptables, RestoreError
from netplane.proxy.backend import SyncInterrupted

_BUILTIN = {
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
}
# Targets that are extensions, not chains.
_TARGETS = frozenset(
    ("ACCEPT", "DROP", "RETURN", "REJECT", "DNAT", "SNAT", "MASQUERADE", "MARK", "CONNMARK")
)


class FakeIptables:
    def __init__(
        self,
        variant: str = "nft",
        family: str = "ipv4",
        *,
        real: Iptables | None = None,
        fail_every: int = 0,
        save_seconds: float = 0.0,
    ) -> None:
        self.real = real
        self.variant = real.variant if real else variant
        self.family = real.family if real else family
        self.fail_every = fail_every
        self.save_seconds = save_seconds  # a read-back this slow (stop cuts it short)
        self.texts: list[str] = []
        self.calls = 0  # restore calls, refused ones included
        self.refused = 0
        self._fail_next = 0
        self._generation = 0
        self.after_restore: Callable[[str], None] | None = None  # called after each commit
        self.tables: dict[str, dict[str, list[str]]] = {
            t: {c: [] for c in chains} for t, chains in _BUILTIN.items()
        }

    # ---- faults and records --------------------------------------------------------------

    def fail_next(self, n: int = 1) -> None:
        self._fail_next += n

    def take(self) -> list[str]:
        texts, self.texts = self.texts, []
        return texts

    def _refuse(self) -> bool:
        self.calls += 1
        if self._fail_next:
            self._fail_next -= 1
        elif not (self.fail_every and self.calls % self.fail_every == 0):
            return False
        self.refused += 1
        return True

    # ---- the Runner interface ------------------------------------------------------------

    def restore(self, text: str, stop: threading.Event | None = None) -> None:
        self.texts.append(text)
        if self._refuse():
            raise RestoreError(f"iptables-restore: refused by the test (call {self.calls})", 1)
        if self.real:
            self.real.restore(text, stop=stop)
        else:
            self._apply(text)
        if self.after_restore:
            self.after_restore(text)

    def restore_stream(self, pieces: Iterable[str], stop: threading.Event | None = None) -> int:
        if self.real and not (self.fail_every or self._fail_next or self.after_restore):
            sent: list[str] = []
            count = self.real.restore_stream(_kept(pieces, sent), stop=stop)
            self.calls += 1
            self.texts.append("".join(sent))
            return count
        text = "".join(pieces)
        self.restore(text, stop)
        return len(text.encode())

    def save(self, table: str | None = None, stop: threading.Event | None = None) -> str:
        if self.save_seconds and stop is not None and stop.wait(self.save_seconds):
            raise SyncInterrupted("iptables-save stopped")
        if self.real:
            return self.real.save(table, stop=stop)
        out = []
        for name in [table] if table else list(self.tables):
            chains = self.tables.get(name, {})
            builtin = _BUILTIN.get(name, ())
            order = [c for c in builtin if c in chains] + sorted(
                c for c in chains if c not in builtin
            )
            out.append(f"*{name}")
            out += [f":{c} {'ACCEPT' if c in builtin else '-'} [0:0]" for c in order]
            out += [rule for c in order for rule in chains[c]]
            out.append("COMMIT")
        return "\n".join(out) + "\n"

    def list_rules(self, table: str, chain: str) -> list[str] | None:
        if self.real:
            return self.real.list_rules(table, chain)
        rules = self.tables.get(table, {}).get(chain)
        return None if rules is None else list(rules)

    def fingerprint(self) -> Hashable | None:
        return self.real.fingerprint() if self.real else self._generation

    # ---- somebody else writing (drift) -----------------------------------------------

    def foreign(self, text: str) -> None:
        """Another program's `iptables-restore --noflush TEXT`: not recorded, never refused.
        `-F CHAIN` flushes a chain and `-F` alone every chain of the table."""
        if self.real:
            self.real.restore(text)
        else:
            self._apply(text)

    # ---- the model -------------------------------------------------------------------

    def _apply(self, text: str) -> None:
        staged: dict[str, list[str]] = {}
        table = ""
        for number, line in enumerate(text.splitlines(), 1):
            try:
                if line.startswith("*"):
                    table = line[1:].strip()
                    current = self.tables.setdefault(table, {})
                    staged = {c: list(rules) for c, rules in current.items()}
                elif line.startswith(":"):
                    chain = line[1:].split()[0]
                    if chain not in _BUILTIN.get(table, ()):
                        staged[chain] = []
                elif line == "COMMIT":
                    self.tables[table] = staged
                    self._generation += 1
                elif line.startswith(("-A ", "-I ", "-D ")):
                    self._rule(staged, line)
                elif line.startswith("-X "):
                    self._delete_chain(staged, line.split()[1])
                elif line.startswith("-F"):
                    parts = line.split()
                    for chain in parts[1:] or list(staged):
                        _need(staged, chain)[:] = []
                elif line.strip() and not line.startswith("#"):
                    raise ValueError("unknown command")
            except (ValueError, KeyError) as e:
                raise RestoreError(f"iptables-restore: line {number} failed: {e}", number) from e

    def _rule(self, staged: dict[str, list[str]], line: str) -> None:
        op, chain, *rest = line.split(" ", 2)
        rules = _need(staged, chain)
        rule = f"-A {chain} {rest[0]}" if rest else f"-A {chain}"
        if op == "-D":
            rules.remove(rule)  # ValueError when absent, as the kernel's ENOENT
            return
        target = _target(rule)
        if target and target not in _TARGETS and target not in staged:
            raise ValueError(f"jump to missing chain {target}")
        if op == "-A":
            rules.append(rule)
        else:
            rules.insert(0, rule)

    def _delete_chain(self, staged: dict[str, list[str]], chain: str) -> None:
        if _need(staged, chain):
            raise ValueError(f"chain {chain} is not empty")
        for other, rules in staged.items():
            if other != chain and any(_target(r) == chain for r in rules):
                raise ValueError(f"chain {chain} is still jumped to from {other}")
        del staged[chain]


def _need(staged: dict[str, list[str]], chain: str) -> list[str]:
    if chain not in staged:
        raise ValueError(f"no chain {chain}")
    return staged[chain]


def _target(rule: str) -> str | None:
    parts = rule.split()
    for i, word in enumerate(parts[:-1]):
        if word in ("-j", "-g"):
            return parts[i + 1]
    return None


def _kept(pieces: Iterable[str], into: list[str]) -> Iterable[str]:
    for piece in pieces:
        into.append(piece)
        yield piece
