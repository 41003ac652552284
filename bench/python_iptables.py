"""Does python-iptables (`iptc`, extra `bench`) earn a place in the proxy's sync path?

In a fresh network namespace (a worker process runs inside it), for N rules shaped like
KUBE-SERVICES entries (`-d IP/32 -p tcp --dport 80 -m comment -j CHAIN`):
- write: iptc (rules appended, one commit) vs one `iptables-legacy-restore --noflush`;
- read back: iptc's `Chain.rules` vs `iptables-legacy-save -t nat` parsed by the syncer;
- one-rule update in a table of N rules: iptc (replace one rule, commit) vs a restore of
  that chain.
iptc only speaks the legacy (x_tables) backend, so the comparison is against legacy.

    .venv/bin/python -m netplane.bench.python_iptables [--quick]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import click

SIZES = (1000, 10000)
QUICK_SIZES = (1000,)


def _ip(i: int) -> str:
    return f"10.96.{i // 250}.{i % 250 + 1}"


def _restore_text(n: int, chain: str = "NPBENCH") -> str:
    lines = [f"-A {chain} -d {_ip(i)}/32 -p tcp -m tcp --dport 80 "
             f'-m comment --comment "svc {i}" -j RETURN' for i in range(n)]  # fmt: skip
    return f"*nat\n:{chain} - [0:0]\n" + "\n".join(lines) + "\nCOMMIT\n"


def _restore(text: str) -> float:
    start = time.perf_counter()
    subprocess.run(["iptables-legacy-restore", "--noflush", "-w", "30"], input=text, text=True,
                   check=True, capture_output=True)  # fmt: skip
    return time.perf_counter() - start


def measure(n: int) -> dict[str, float]:
    import iptc

    from netplane.proxy._plan import parse_save

    out: dict[str, float] = {}
    # iptables-restore: write, read back, one-chain update
    text = _restore_text(n, "NPRESTORE")
    out["restore_write"] = _restore(text)
    start = time.perf_counter()
    dump = subprocess.run(["iptables-legacy-save", "-t", "nat"], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip
    rules = parse_save(dump).rules["nat"]
    out["restore_read"] = time.perf_counter() - start
    assert len(rules) >= n
    one = (f"*nat\n-R NPRESTORE 1 -d {_ip(0)}/32 -p tcp -m tcp --dport 80 "
           '-m comment --comment "svc 0" -j ACCEPT\nCOMMIT\n')  # fmt: skip
    out["restore_update_one"] = _restore(one)

    # python-iptables: the same rules through libiptc
    table = iptc.Table(iptc.Table.NAT)
    table.autocommit = False
    start = time.perf_counter()
    chain = table.create_chain("NPIPTC")
    for i in range(n):
        rule = iptc.Rule()
        rule.dst, rule.protocol = _ip(i), "tcp"
        rule.create_match("tcp").dport = "80"
        rule.create_match("comment").comment = f"svc {i}"
        rule.target = rule.create_target("RETURN")
        chain.append_rule(rule)
    table.commit()
    out["iptc_write"] = time.perf_counter() - start
    table.refresh()
    start = time.perf_counter()
    read = [(r.dst, r.target.name) for r in iptc.Chain(table, "NPIPTC").rules]
    out["iptc_read"] = time.perf_counter() - start
    assert len(read) == n
    start = time.perf_counter()
    table.refresh()
    rule = iptc.Rule()
    rule.dst, rule.protocol = _ip(0), "tcp"
    rule.create_match("tcp").dport = "80"
    rule.create_match("comment").comment = "svc 0"
    rule.target = rule.create_target("ACCEPT")
    iptc.Chain(table, "NPIPTC").replace_rule(rule, 0)
    table.commit()
    out["iptc_update_one"] = time.perf_counter() - start
    return out


def run(sizes: list[int] | None = None, quick: bool = False) -> dict:
    from netplane import netns

    rows = []
    for n in sizes or (QUICK_SIZES if quick else SIZES):
        ns = netns.create(netns.unique_name("npiptc"))
        try:
            argv = [sys.executable, "-m", "netplane.bench.python_iptables", "--worker", str(n)]
            row = json.loads(netns.run(ns, argv, timeout=900).strip().splitlines()[-1])
        finally:
            netns.delete(ns)
        rows.append({"rules": n, **row})
    return {"rows": rows}


def format_table(data: dict) -> str:
    lines = [f"{'rules':>6} | {'write: iptc':>11} {'restore':>8} | {'read: iptc':>10} "
             f"{'save':>8} | {'update 1: iptc':>14} {'restore':>8}   (seconds)"]  # fmt: skip
    for r in data["rows"]:
        lines.append(
            f"{r['rules']:6d} | {r['iptc_write']:11.3f} {r['restore_write']:8.3f} | "
            f"{r['iptc_read']:10.3f} {r['restore_read']:8.3f} | "
            f"{r['iptc_update_one']:14.3f} {r['restore_update_one']:8.3f}"
        )
    return "\n".join(lines)


@click.command()
@click.option("--quick", is_flag=True, help="1,000 rules only.")
@click.option("--worker", type=int, hidden=True, help="Measure N rules here (internal).")
def main(quick: bool, worker: int | None) -> None:
    """Time python-iptables against iptables-restore/-save (legacy) in a namespace."""
    if worker:
        print(json.dumps(measure(worker)))
        return
    click.echo(format_table(run(quick=quick)))


if __name__ == "__main__":
    main()
