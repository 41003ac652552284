"""macspoofchk: frames a container sends with another source MAC are dropped on the bridge.

The reference plugin's nftables layout, so either plugin removes the other's: in table
`bridge nat`, base chain `PREROUTING` (filter, hook prerouting, priority -300, policy accept)
gets `iifname "<host veth>" jump cni-br-iface-<ref>`; that chain jumps to
`cni-br-iface-<ref>-mac`, which returns for `ether saddr <container MAC>` and drops the rest.
Every rule is commented `macspoofchk-<ref>`, ref = `<containerID>-<ifname>`. Teardown
removes the rule and both chains and leaves the table and base chain, as the reference does.
The rules are rendered as `nft -j -f` input (pure) and applied in the caller's network
namespace.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

from netplane.cni.spec import INTERNAL, CniError

_AT = {"family": "bridge", "table": "nat"}
BASE = "PREROUTING"


def ref_id(container_id: str, ifname: str) -> str:
    return f"{container_id}-{ifname}"


def chains(ref: str) -> tuple[str, str]:
    """(the interface's chain, its MAC chain)."""
    iface = f"cni-br-iface-{ref}"
    return iface, f"{iface}-mac"


def comment(ref: str) -> str:
    return f"macspoofchk-{ref}"


def _chain(name: str) -> dict[str, Any]:
    return {"chain": {**_AT, "name": name}}


def _rule(chain: str, expr: list[dict[str, Any]], ref: str) -> dict[str, Any]:
    return {"add": {"rule": {**_AT, "chain": chain, "expr": expr, "comment": comment(ref)}}}


def render_setup(host_iface: str, mac: str, ref: str) -> str:
    """One transaction (nft's JSON, which takes any container ID and interface name): the
    table and base chain if missing, this interface's chains afresh."""
    iface, mac_chain = chains(ref)
    base = {**_AT, "name": BASE, "type": "filter", "hook": "prerouting", "prio": -300,
            "policy": "accept"}  # fmt: skip
    from_iface = _match({"meta": {"key": "iifname"}}, host_iface)
    from_mac = _match({"payload": {"protocol": "ether", "field": "saddr"}}, mac)
    commands = [
        {"add": {"table": {"family": "bridge", "name": "nat"}}},
        {"add": {"chain": base}},
        {"add": _chain(iface)},
        {"add": _chain(mac_chain)},
        {"flush": _chain(iface)},
        {"flush": _chain(mac_chain)},
        _rule(BASE, [from_iface, {"jump": {"target": iface}}], ref),
        _rule(iface, [{"jump": {"target": mac_chain}}], ref),
        _rule(mac_chain, [from_mac, {"return": None}], ref),
        _rule(mac_chain, [{"drop": None}], ref),
    ]
    return json.dumps({"nftables": commands})


def _match(left: dict[str, Any], right: str) -> dict[str, Any]:
    return {"match": {"op": "==", "left": left, "right": right}}


def render_teardown(listing: dict[str, Any], ref: str) -> str:
    """What removes this interface's rule and chains, from `nft -j list table bridge nat`
    output; "" when none of it exists."""
    iface, mac_chain = chains(ref)
    present: set[str] = set()
    commands: list[dict[str, Any]] = []
    for entry in listing.get("nftables", []):
        if "chain" in entry:
            present.add(entry["chain"]["name"])
        rule = entry.get("rule")
        if rule and rule["chain"] == BASE and rule.get("comment") == comment(ref):
            commands.append({"delete": {"rule": {**_AT, "chain": BASE, "handle": rule["handle"]}}})
    ours = [c for c in (iface, mac_chain) if c in present]
    commands += [{"flush": _chain(c)} for c in ours] + [{"delete": _chain(c)} for c in ours]
    return json.dumps({"nftables": commands}) if commands else ""


def _nft(args: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["nft", *args], input=stdin, capture_output=True, text=True,
                              check=False)  # fmt: skip
    except FileNotFoundError:
        raise CniError(INTERNAL, "nft not found (macspoofchk needs nftables)") from None


def _apply(rules: str) -> None:
    proc = _nft(["-j", "-f", "-"], rules)
    if proc.returncode != 0:
        raise CniError(INTERNAL, "failed to set up spoof-check: nft failed", proc.stderr.strip())


def setup(host_iface: str, mac: str, ref: str) -> None:
    _apply(render_setup(host_iface, mac, ref))


def teardown(ref: str, attempts: int = 3) -> None:
    """Idempotent: nothing there is fine, and so is no nft at all (then no rule of ours can
    exist: a DEL must not fail forever). A concurrent change between our listing and our
    deletes (another container's teardown) fails the transaction: list again and retry."""
    if shutil.which("nft") is None:
        return
    for attempt in range(attempts):
        proc = _nft(["-j", "list", "table", "bridge", "nat"])
        if proc.returncode != 0 and "No such file or directory" in proc.stderr:
            return  # no table: nothing of ours either
        if proc.returncode != 0:
            raise CniError(INTERNAL, "failed to list the spoof-check rules: nft failed",
                           proc.stderr.strip())  # fmt: skip
        rules = render_teardown(json.loads(proc.stdout), ref)
        if not rules:
            return
        done = _nft(["-j", "-f", "-"], rules)
        if done.returncode == 0:
            return
        if attempt == attempts - 1:
            raise CniError(INTERNAL, "failed to tear down spoof-check: nft failed",
                           done.stderr.strip())  # fmt: skip
