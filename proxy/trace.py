"""`netplane proxy trace`: where a packet goes on a node, and why.

Reads a node's live ruleset (or a saved one), follows one packet through it with the tracer
of the ruleset's format and reports every path: the rules it passes, each random branch
with its probability, the affinity conditions it needs, the NAT it gets and the endpoint
it reaches. `netplane trace --node` (the emulated cluster) uses the same functions on a
node's namespace.

One result model (`_trace.Trace`), one reader per ruleset format (`READERS`): iptables-save
text is traced by `_trace_iptables`, `nft list ruleset` text (the nftables backend's tables)
by `nft._trace`; each with its `detect` and `tracer`, and a `live` source (`--backend`).
"""

from __future__ import annotations

import functools
import ipaddress
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import click

from netplane.proxy._trace import Outcome, Packet, Path, Trace, TraceError

__all__ = [
    "READERS",
    "Packet",
    "Reader",
    "Ruleset",
    "Trace",
    "TraceError",
    "as_json",
    "format_text",
    "local_addresses",
    "read_file",
    "read_live",
    "trace",
]


class _Tracer(Protocol):
    def trace(self, packet: Packet) -> Trace: ...


@dataclass(frozen=True, slots=True)
class Reader:
    """How one ruleset format is recognised, traced and read from a live node."""

    detect: Callable[[str], bool]  # does this text look like the format?
    tracer: Callable[[str, Sequence[str]], _Tracer]  # (text, the node's addresses)
    live: Callable[[str | None, str, str], tuple[str, str]]  # (netns, family, variant) ->
    # (text, where it came from)


@dataclass(frozen=True, slots=True)
class Ruleset:
    text: str
    format: str  # a key of READERS
    origin: str  # where it was read, for the report
    local_ips: tuple[str, ...] = ()  # the node's own addresses (dst LOCAL, src local)


def _iptables_tracer(text: str, local_ips: Sequence[str]) -> _Tracer:
    from netplane.proxy._trace_iptables import Tracer

    return Tracer(text, local_ips, strict=False)  # a live node has other programs' rules


def _iptables_live(netns: str | None, family: str, variant: str) -> tuple[str, str]:
    from netplane.proxy._iptables import Iptables, RestoreError, detect_variant

    try:
        chosen = detect_variant(variant, family, netns)
        text = Iptables(chosen, family, netns).save()
    except (RestoreError, OSError) as e:
        raise TraceError(f"cannot read the rules: {e}") from None
    tool = ("ip6tables" if family == "ipv6" else "iptables") + f"-{chosen}-save"
    return text, tool + (f" in network namespace {netns}" if netns else "")


def _looks_like_iptables_save(text: str) -> bool:
    lines = (x.strip() for x in text.splitlines())
    first = next((x for x in lines if x and not x.startswith("#")), "")
    return first.startswith("*")


def _nftables_tracer(text: str, local_ips: Sequence[str]) -> _Tracer:
    from netplane.proxy.nft._parse import parse_ruleset
    from netplane.proxy.nft._trace import NftTracer

    parsed = parse_ruleset(text)
    if not parsed.tables:
        others = ", ".join(parsed.others) or "none"
        raise TraceError(f"no table of the nftables backend (kube-proxy) here; tables: {others}")
    return NftTracer(parsed.tables, local_ips)


def _nftables_live(netns: str | None, family: str, variant: str) -> tuple[str, str]:
    from netplane import netns as ns

    nft_family = "ip6" if family == "ipv6" else "ip"
    try:
        text = ns.run(netns, ["nft", "list", "ruleset", nft_family])
    except (ns.NetnsError, OSError) as e:
        raise TraceError(f"cannot read the rules: {e}") from None
    return text, f"nft list ruleset {nft_family}" + (
        f" in network namespace {netns}" if netns else ""
    )


def _looks_like_nft(text: str) -> bool:
    from netplane.proxy.nft._parse import looks_like_nft

    return looks_like_nft(text)


READERS: dict[str, Reader] = {
    "iptables": Reader(_looks_like_iptables_save, _iptables_tracer, _iptables_live),
    "nftables": Reader(_looks_like_nft, _nftables_tracer, _nftables_live),
}


def detect_backend(netns: str | None, family: str) -> str:
    """nftables when the nftables backend's table of FAMILY is there, else iptables."""
    from netplane import netns as ns

    try:
        tables = ns.run(netns, ["nft", "list", "tables", "ip6" if family == "ipv6" else "ip"])
    except (ns.NetnsError, OSError):
        return "iptables"
    return (
        "nftables"
        if any(t.split()[-1] == "kube-proxy" for t in tables.splitlines())
        else ("iptables")
    )


def read_live(
    netns: str | None = None, family: str = "ipv4", variant: str = "auto", backend: str = "auto"
) -> Ruleset:
    """The rules the kernel holds now (in NETNS, or here), with the node's addresses.
    BACKEND "auto": the nftables backend's tables when they are there, else iptables."""
    if backend == "auto":
        backend = detect_backend(netns, family)
    reader = READERS.get(backend)
    if reader is None:
        raise TraceError(f"no tracer for the {backend} backend (known: {', '.join(READERS)})")
    text, origin = reader.live(netns, family, variant)
    return Ruleset(text, backend, origin, tuple(local_addresses(netns)))


def read_file(path: str, text: str, local_ips: Sequence[str] = ()) -> Ruleset:
    """A saved ruleset (TEXT read from PATH); its format is recognised from the text."""
    for name, reader in READERS.items():
        if reader.detect(text):
            return Ruleset(text, name, path, tuple(local_ips))
    raise TraceError(
        f"{path}: not a ruleset this tracer reads (iptables-save or `nft list ruleset` output)"
    )


def local_addresses(netns: str | None = None) -> list[str]:
    """Every address configured in NETNS (or here): what `-m addrtype LOCAL` matches."""
    from netplane import netns as ns

    try:
        out = ns.run(netns, ["ip", "-j", "addr", "show"])
    except (ns.NetnsError, OSError) as e:
        raise TraceError(f"cannot list the node's addresses: {e}") from None
    return [a["local"] for link in json.loads(out) for a in link.get("addr_info", ())]


def trace(ruleset: Ruleset, packet: Packet) -> Trace:
    return READERS[ruleset.format].tracer(ruleset.text, ruleset.local_ips).trace(packet)


# ---- reports ---------------------------------------------------------------------------


def _describe(packet: Packet) -> str:
    where = "sent by the node itself" if packet.output else "arriving at the node"
    return f"{packet.proto} {packet.src} -> {packet.dst}:{packet.dport}, {where}"


def _path_title(path: Path) -> str:
    o = path.outcome
    if o.verdict == "DNAT":
        end = f"DNAT to {o.endpoint}"
    elif o.verdict == "NO_MATCH":
        end = "no service rule: delivered unchanged"
    else:
        end = f"{o.verdict}" + (f" (after DNAT to {o.endpoint})" if o.endpoint else "")
    if o.verdict in ("DNAT", "NO_MATCH"):
        end += ", source masqueraded" if o.masquerade else ", source kept"
    when = f"{path.probability:.1%} of new connections"
    if path.conditions:
        when = "a returning client: " + "; ".join(path.conditions)
    return f"{end}  [{when}]"


def _shares_or_none(result: Trace) -> dict[Outcome, float | None]:
    if result.paths:
        return dict(result.shares())
    return dict.fromkeys(result.outcomes)


def _order(o: Outcome) -> tuple[str, str, bool]:
    return o.verdict, o.endpoint or "", o.masquerade


def format_text(result: Trace, packet: Packet, ruleset: Ruleset) -> str:
    """The report a person reads: a summary, then every path with the rules it passed."""
    lines = [f"packet: {_describe(packet)}", f"rules: {ruleset.origin}"]
    shares = result.shares()
    if shares:
        lines.append("new connections:")
        for outcome, share in sorted(shares.items(), key=lambda kv: (-kv[1], _order(kv[0]))):
            target = outcome.endpoint or "-"
            lines.append(f"  {share:7.1%}  {outcome.verdict:<8} {target}")
    elif result.outcomes:  # a reader that reports ends without paths
        lines.append("outcomes (no path details from this reader):")
        lines += [
            f"  {o.verdict:<8} {o.endpoint or '-'}" for o in sorted(result.outcomes, key=_order)
        ]
    sticky = sorted({p.outcome.endpoint or "-" for p in result.paths if p.conditions})
    if sticky:
        lines.append(f"returning clients (session affinity) stay on: {', '.join(sticky)}")
    for n, path in enumerate(result.paths, start=1):
        lines.append(f"path {n}: {_path_title(path)}")
        for step in path.steps:
            note = f"   <- {step.note}" if step.note else ""
            lines.append(f"  {step.table:<6} {step.chain:<26} {step.rule}{note}")
        for warning in path.warnings:
            lines.append(f"  warning: not understood, assumed not to match: {warning}")
    return "\n".join(lines)


def as_json(result: Trace, packet: Packet, ruleset: Ruleset) -> dict[str, Any]:
    """The same for scripts (`--json`)."""
    return {
        "packet": {
            "src": packet.src,
            "dst": packet.dst,
            "proto": packet.proto,
            "dport": packet.dport,
            "from_node": packet.output,
        },
        "rules": {"format": ruleset.format, "origin": ruleset.origin},
        # share of new connections; None when the reader gives no paths to weigh
        "endpoints": {
            o.endpoint: round(share, 6) if share is not None else None
            for o, share in sorted(_shares_or_none(result).items(), key=lambda kv: _order(kv[0]))
            if o.verdict == "DNAT" and o.endpoint
        },
        "paths": [
            {
                "verdict": p.outcome.verdict,
                "endpoint": p.outcome.endpoint,
                "masquerade": p.outcome.masquerade,
                "probability": round(p.probability, 6),
                "conditions": list(p.conditions),
                "steps": [
                    {"table": s.table, "chain": s.chain, "rule": s.rule, "note": s.note}
                    for s in p.steps
                ],
                "warnings": list(p.warnings),
            }
            for p in result.paths
        ],
    }


# ---- command line ----------------------------------------------------------------------


def packet_options(f: Callable[..., None]) -> Callable[..., None]:
    """The packet to trace and the report's form (shared with `netplane trace`): the
    command gets `packet` (a Packet) and `json_output`."""

    @functools.wraps(f)
    def wrapper(
        src: str, dst: str, dport: int, proto: str, from_node: bool, as_json_: bool, **kw: Any
    ) -> None:
        f(packet=packet_of(src, dst, dport, proto, from_node), json_output=as_json_, **kw)

    for option in reversed(
        (
            click.option("--src", required=True, help="Source address of the packet."),
            click.option("--dst", required=True, help="Destination address (a service IP...)."),
            click.option(
                "--port",
                "dport",
                type=click.IntRange(1, 65535),
                required=True,
                help="Destination port.",
            ),
            click.option(
                "--proto",
                type=click.Choice(["tcp", "udp", "sctp"]),
                default="tcp",
                show_default=True,
            ),
            click.option(
                "--from-node",
                is_flag=True,
                help="Sent by a process on the node (OUTPUT), not arriving from a "
                "pod or the network (PREROUTING).",
            ),
            click.option("--json", "as_json_", is_flag=True, help="JSON for scripts."),
        )
    ):
        wrapper = option(wrapper)
    return wrapper


def packet_of(src: str, dst: str, dport: int, proto: str, from_node: bool) -> Packet:
    try:
        ipaddress.ip_address(src), ipaddress.ip_address(dst)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--src/--dst") from None
    return Packet(src, dst, proto, dport, output=from_node)


def report(ruleset: Ruleset, packet: Packet, json_output: bool) -> None:
    """Trace PACKET through RULESET and print the report (a clear error for bad rules)."""
    try:
        result = trace(ruleset, packet)
    except TraceError as e:
        raise click.ClickException(f"{ruleset.origin}: {e}") from None
    if json_output:
        click.echo(json.dumps(as_json(result, packet, ruleset), indent=2))
    else:
        click.echo(format_text(result, packet, ruleset))
