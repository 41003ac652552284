"""ipMasq rules with the reference plugin's names, so either plugin can remove the other's.

Per container: chain CNI-<sha512(name+id)>, `-d <subnet> -j ACCEPT`, `! -d <multicast>
-j MASQUERADE`, and `POSTROUTING -s <ip> -j <chain>`, all commented `name: "<net>" id: "<id>"`.
Rules are rendered as iptables-restore input (pure) and applied with --noflush in the caller's
network namespace.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import shutil
import subprocess

from netplane.cni.spec import INTERNAL, CniError

_MAX_CHAIN = 28  # the reference truncates "CNI-" + hex digest to 28 characters


def chain_name(network: str, container_id: str) -> str:
    return ("CNI-" + hashlib.sha512((network + container_id).encode()).hexdigest())[:_MAX_CHAIN]


def comment(network: str, container_id: str) -> str:
    return f'name: "{network}" id: "{container_id}"'


def _quoted(text: str) -> str:
    """Double-quoted the way iptables-save prints (and iptables-restore reads) a comment."""
    return '"' + text.replace('"', '\\"') + '"'


def _binaries(version: int) -> tuple[str, str]:
    return (
        ("iptables-save", "iptables-restore")
        if version == 4
        else ("ip6tables-save", "ip6tables-restore")
    )


def render_setup(network: str, container_id: str, addresses: list[str]) -> dict[int, str]:
    """iptables-restore input per IP family for the container's addresses (CIDR strings)."""
    chain = chain_name(network, container_id)
    note = _quoted(comment(network, container_id))
    out: dict[int, list[str]] = {}
    for cidr in addresses:
        iface = ipaddress.ip_interface(cidr)
        lines = out.setdefault(iface.version, [f":{chain} - [0:0]"])
        multicast = "224.0.0.0/4" if iface.version == 4 else "ff00::/8"
        lines += [
            f"-A {chain} -d {iface.network} -m comment --comment {note} -j ACCEPT",
            f"-A {chain} ! -d {multicast} -m comment --comment {note} -j MASQUERADE",
            f"-A POSTROUTING -s {iface.ip} -m comment --comment {note} -j {chain}",
        ]
    return {v: "*nat\n" + "\n".join(lines) + "\nCOMMIT\n" for v, lines in out.items()}


def render_known_teardown(network: str, container_id: str, addresses: list[str]) -> dict[int, str]:
    """Deletes for exactly what render_setup made for these addresses: no iptables-save needed.

    iptables-restore applies it all or nothing, so if anything differs nothing changes."""
    chain = chain_name(network, container_id)
    note = _quoted(comment(network, container_id))
    out: dict[int, list[str]] = {}
    for cidr in addresses:
        iface = ipaddress.ip_interface(cidr)
        out.setdefault(iface.version, []).append(
            f"-D POSTROUTING -s {iface.ip} -m comment --comment {note} -j {chain}"
        )
    return {
        v: "*nat\n" + "\n".join([*lines, f"-F {chain}", f"-X {chain}"]) + "\nCOMMIT\n"
        for v, lines in out.items()
    }


def render_teardown(saved: str, chains: set[str]) -> str:
    """Deletes for every rule jumping to `chains`, then the chains: from iptables-save output."""
    present = {m.group(1) for m in re.finditer(r"^:(\S+) ", saved, re.M)} & chains
    if not present:
        return ""
    lines = []
    for line in saved.splitlines():
        parts = line.split()
        if line.startswith("-A ") and parts[1] not in present and _jump(parts) in present:
            lines.append("-D" + line[2:])
    lines += [f"-F {c}" for c in sorted(present)] + [f"-X {c}" for c in sorted(present)]
    return "*nat\n" + "\n".join(lines) + "\nCOMMIT\n"


def _jump(parts: list[str]) -> str:
    return parts[parts.index("-j") + 1] if "-j" in parts[:-1] else ""


def chains_of_network(saved: str, network: str) -> dict[str, str]:
    """chain -> container ID for the masquerade chains this network created (found by comment)."""
    pattern = re.compile(
        r'^-A (CNI-[0-9a-f]+) .*--comment "name: \\"(.*?)\\" id: \\"(.*?)\\""', re.M
    )
    return {m.group(1): m.group(3) for m in pattern.finditer(saved) if m.group(2) == network}


def _run(args: list[str], stdin: str = "") -> str:
    try:
        proc = subprocess.run(args, input=stdin, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise CniError(INTERNAL, f"{args[0]} not found (ipMasq needs iptables)") from None
    if proc.returncode != 0:
        raise CniError(INTERNAL, f"{args[0]} failed", proc.stderr.strip())
    return proc.stdout


def save(version: int = 4) -> str:
    return _run([_binaries(version)[0], "-t", "nat"])


def setup(network: str, container_id: str, addresses: list[str]) -> None:
    for version, rules in render_setup(network, container_id, addresses).items():
        _run([_binaries(version)[1], "-w", "--noflush"], rules)


def teardown_known(network: str, container_id: str, addresses: list[str]) -> None:
    """One iptables-restore per family when the container's addresses are known; if the rules
    are not exactly as expected (another tool touched them), the save-based path cleans up."""
    for version, rules in render_known_teardown(network, container_id, addresses).items():
        try:
            _run([_binaries(version)[1], "-w", "--noflush"], rules)
        except CniError:
            teardown({chain_name(network, container_id)}, (version,))


def teardown(chains: set[str], versions: tuple[int, ...] = (4, 6), attempts: int = 3) -> None:
    """Idempotent: chains that do not exist are skipped; no iptables (or ip6tables) installed
    is not an error either (no rule of ours can exist then, and a DEL must not fail forever).
    A concurrent DEL of the same container (the runtime and kubelet both stopping a sandbox)
    can remove a chain between our save and our restore: then save and try again."""
    for version in versions:
        if shutil.which(_binaries(version)[0]) is None:
            continue
        for attempt in range(attempts):
            try:
                rules = render_teardown(save(version), chains)
            except CniError:
                if version == 4:
                    raise
                break
            if not rules:
                break
            try:
                _run([_binaries(version)[1], "-w", "--noflush"], rules)
                break
            except CniError:
                if attempt == attempts - 1:
                    raise
