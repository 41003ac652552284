"""Pure planning: what the kernel holds + what we want -> the operations of one transaction.

`Kernel` is what we know of our table: from our own bookkeeping after the writes we made,
or read back from the kernel (then chain contents are known by digest only). `plan()`
compares it with the wanted objects and returns `Op`s in an order the kernel accepts inside
one transaction: chains are created before anything refers to them, flushed before what
they refer to goes, sets are deleted only after the rules using them.

Chains that map elements point to (a service's `service-`, `external-`... chains) are
flushed when they go and deleted by a later transaction (`stale`, after STALE_SECONDS): on
kernels before 6.2 the kernel notices a chain is no longer referenced by a deleted map
element only a moment later (kube-proxy waits the same way). Endpoint chains, referred to
only by rules, go at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from netplane.proxy.nft._exprs import key_bytes, key_type
from netplane.proxy.nft._model import Chain, Element, Hook, InSet, Rule, SetDef, Update

STALE_SECONDS = 1.0
_EMPTY_DIGEST = hash(())  # of a chain without rules


class Op(NamedTuple):
    """One step of a transaction: VERB applied to ARG (a name, a Chain, a SetDef, or a
    (set name, elements) pair)."""

    verb: str  # add_table | add_chain | flush_chain | delete_chain | add_rules | stale |
    #            delete_set | add_set | delete_elements | add_elements
    arg: Any


@dataclass(slots=True)
class ChainState:
    """What the kernel holds in one chain: its rules when we wrote them (None when only
    read back), and the digest of their encoding (None until someone needs it)."""

    hook: Hook | None
    rules: tuple[Rule, ...] | None
    digest: int | None = None
    count: int = 0  # rules in it


@dataclass(slots=True)
class Kernel:
    """Our table as the kernel holds it."""

    table: bool = False
    chains: dict[str, ChainState] = field(default_factory=dict)
    sets: dict[str, tuple] = field(default_factory=dict)  # name -> signature
    # shared sets' elements: set -> key (as encoded) -> digest of the whole element
    elements: dict[str, dict[bytes, int]] = field(default_factory=dict)
    stale: dict[str, float] = field(default_factory=dict)  # flushed chains to delete, since


@dataclass(slots=True)
class Want:
    """The objects a sync cares about: value None = must not exist. Objects not named are
    left as they are (a partial sync names only the changed services' objects)."""

    table_comment: str | None = None
    chains: dict[str, Chain | None] = field(default_factory=dict)
    sets: dict[str, SetDef | None] = field(default_factory=dict)
    # set -> key (as encoded, `_exprs.key_bytes`) -> element
    elements: dict[str, dict[bytes, Element | None]] = field(default_factory=dict)


def deletable_now(name: str, hook: Hook | None) -> bool:
    """Chains nothing but rules can refer to: deleted in the transaction that empties
    them. Base chains cannot be referred to at all."""
    return hook is not None or name.startswith("endpoint-")


def set_signature(s: SetDef) -> tuple:
    """What makes two sets the same to the kernel (comments aside)."""
    return (key_type(s.key), s.map, s.timeout)


def _sets_used(rules: Iterable[Rule]) -> set[str]:
    return {s.set for r in rules for s in r.stmts if isinstance(s, InSet | Update)}


def plan(
    kernel: Kernel,
    want: Want,
    chain_digest: Callable[[Chain], int],
    element_digest: Callable[[Element], int],
    now: float,
) -> list[Op]:
    """The operations that make KERNEL hold WANT, in an order the kernel accepts."""
    ops: list[Op] = []
    if not kernel.table:
        ops.append(Op("add_table", want.table_comment))

    # sets whose definition changes are deleted and made again: chains using them are
    # rewritten so that the old set is free to go
    changed_sets = {
        name
        for name, s in want.sets.items()
        if s is not None and name in kernel.sets and kernel.sets[name] != set_signature(s)
    }
    gone_sets = [n for n, s in want.sets.items() if s is None and n in kernel.sets]

    created: list[Chain] = []
    rewritten: list[Chain] = []
    recreated: list[Chain] = []  # base chains whose hook changed
    flushed: list[str] = []
    removed_now: list[str] = []
    removed_later: list[str] = []
    for name, chain in want.chains.items():
        have = kernel.chains.get(name)
        if chain is None:
            if have is None:
                continue
            if have.rules != () or name not in kernel.stale:
                flushed.append(name)
            if deletable_now(name, have.hook):
                removed_now.append(name)
            elif name not in kernel.stale:
                removed_later.append(name)
            continue
        if have is None:
            created.append(chain)
        elif have.hook != chain.hook:
            recreated.append(chain)
        elif (
            name in kernel.stale
            or not _same(have, chain, chain_digest)
            or (changed_sets and _sets_used(chain.rules) & changed_sets)
        ):
            rewritten.append(chain)

    for chain in created:
        ops.append(Op("add_chain", chain))
    for name in flushed:
        ops.append(Op("flush_chain", name))
    for chain in rewritten:
        ops.append(Op("flush_chain", chain.name))
    for chain in recreated:
        ops.append(Op("flush_chain", chain.name))
        ops.append(Op("delete_chain", chain.name))
        ops.append(Op("add_chain", chain))
    for name in removed_now:
        ops.append(Op("delete_chain", name))
    for name in (*gone_sets, *changed_sets):
        ops.append(Op("delete_set", name))
    for name, s in want.sets.items():
        if s is not None and (name not in kernel.sets or name in changed_sets):
            ops.append(Op("add_set", s))
    for chain in (*created, *rewritten, *recreated):
        ops.append(Op("add_rules", chain))

    for set_name, wanted in want.elements.items():
        have_elements = kernel.elements.get(set_name, {})
        delete: list[Element] = []
        add: list[Element] = []
        for key, e in wanted.items():
            had = have_elements.get(key)
            if e is None:
                if had is not None:
                    delete.append(Element(key))  # type: ignore[arg-type]  # encoded key
            elif had is None:
                add.append(e)
            elif had != element_digest(e):
                delete.append(Element(key))  # type: ignore[arg-type]
                add.append(e)
        if delete:
            ops.append(Op("delete_elements", (set_name, delete)))
        if add:
            ops.append(Op("add_elements", (set_name, add)))

    for name in removed_later:
        ops.append(Op("stale", name))
    for name, since in kernel.stale.items():
        due = now - since >= STALE_SECONDS and want.chains.get(name) is None
        if due and name in kernel.chains and name not in removed_now:
            ops.append(Op("delete_chain", name))
    return ops


def _same(have: ChainState, chain: Chain, chain_digest: Callable[[Chain], int]) -> bool:
    if have.rules is not None:
        return have.rules == chain.rules
    if have.digest is None:
        return False
    return have.digest == chain_digest(chain)


def apply(kernel: Kernel, ops: Iterable[Op], digests: Mapping[object, int], now: float) -> None:
    """Record in KERNEL what OPS did, once their transaction committed. DIGESTS: of what
    was written, as encoded for it (`_kernel.build`)."""
    chains, sets, elements = kernel.chains, kernel.sets, kernel.elements
    for verb, arg in ops:
        if verb == "add_table":
            kernel.table = True
        elif verb == "add_chain":
            chains[arg.name] = ChainState(arg.hook, (), _EMPTY_DIGEST)
            kernel.stale.pop(arg.name, None)
        elif verb == "flush_chain":
            have = chains.get(arg)
            if have is not None:
                have.rules, have.digest, have.count = (), _EMPTY_DIGEST, 0
        elif verb == "add_rules":
            state = chains[arg.name]
            state.rules = arg.rules
            state.digest = digests.get(arg.name, _EMPTY_DIGEST)
            state.count = len(arg.rules)
            kernel.stale.pop(arg.name, None)
        elif verb == "delete_chain":
            chains.pop(arg, None)
            kernel.stale.pop(arg, None)
        elif verb == "stale":
            kernel.stale[arg] = now
        elif verb == "delete_set":
            sets.pop(arg, None)
            elements.pop(arg, None)
        elif verb == "add_set":
            sets[arg.name] = set_signature(arg)
        elif verb == "delete_elements":
            name, els = arg
            bucket = elements.get(name, {})
            for e in els:
                bucket.pop(key_bytes(e.key), None)
        elif verb == "add_elements":
            name, els = arg
            bucket = elements.setdefault(name, {})
            for e in els:
                key = key_bytes(e.key)
                bucket[key] = digests[name, key]


def rule_count(kernel: Kernel) -> int:
    return sum(c.count for c in kernel.chains.values())


def everything(
    desired_chains: Mapping[str, Chain],
    desired_sets: Mapping[str, SetDef],
    desired_elements: Mapping[str, Mapping[bytes, Element]],
    kernel: Kernel,
    table_comment: str | None,
) -> Want:
    """A full sync's Want: every desired object, and None for whatever else the kernel has
    (affinity sets' elements are the packets' business and left alone)."""
    want = Want(table_comment)
    want.chains = dict.fromkeys(kernel.chains)
    want.chains.update(desired_chains)
    want.sets = dict.fromkeys(kernel.sets)
    want.sets.update(desired_sets)
    for name, have in kernel.elements.items():
        if name in desired_elements:
            want.elements[name] = dict.fromkeys(have)
    for name, els in desired_elements.items():
        want.elements.setdefault(name, {}).update(els)
    return want
