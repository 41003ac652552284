"""`netplane bench calibrate`: fixed work that relates one machine's figures to another's.

The same work, byte for byte, whatever the commit: a CPU-bound pure-Python loop, SHA-256
over fixed data (C code), starting a small program (fork/exec: the CNI and iptables paths
pay it per call) and `iptables-restore` of a fixed ruleset (kube-proxy's layout, 1,000
services x 5 endpoints, 16k rules) into a fresh network namespace per iptables variant.
Run on two machines the same day, `netplane bench compare` of the two files gives the
slowdown per kind of work: that is how an emulated arm64 run (bench/arm64) is related to
the host it ran on, and how a Raspberry Pi relates to either. The kinds are kept apart
because emulation slows them unevenly (pure Python ~15x, the kernel's netfilter paths up
to ~50x under qemu-system TCG): one factor would mislead.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from netplane.bench._netns import kernel_check, netns, private_xtables_lock
from netplane.bench._results import Label, Series, Skipped

SERVICES, ENDPOINTS = 1000, 5
LOOP_ITERATIONS = 1_000_000
HASH_BYTES = 64 * 1024 * 1024
SPAWNS = 50
VARIANTS = ("legacy", "nft")
RESTORE_TIMEOUT = 600.0  # seconds: ~0.2 s on an x86 host, ~10-20 s emulated


def python_loop(n: int) -> int:
    """Integer arithmetic, a dict and a list: the kind of Python the renderer runs."""
    seen: dict[int, int] = {}
    acc = 0
    for i in range(n):
        acc = (acc * 31 + i) & 0xFFFFFFFF
        if i & 1023 == 0:
            seen[acc & 0xFFFF] = i
    return acc + len(seen)


def sha256(size: int) -> str:
    block = bytes(range(256)) * 4096  # 1 MiB
    h = hashlib.sha256()
    for _ in range(size // len(block)):
        h.update(block)
    return h.hexdigest()


def spawn(n: int) -> None:
    for _ in range(n):
        subprocess.run(["true"], check=True)


def ruleset(services: int, endpoints: int) -> str:
    """kube-proxy's iptables layout for SERVICES ClusterIPs with ENDPOINTS each (fixed:
    written here rather than by the renderer, so it never changes with netplane)."""
    chains = [":KUBE-SERVICES - [0:0]", ":KUBE-MARK-MASQ - [0:0]", ":KUBE-POSTROUTING - [0:0]"]
    rules = [
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE",
    ]
    for s in range(services):
        svc, ip = f"KUBE-SVC-{s:016X}", f"10.96.{s // 250}.{s % 250 + 1}"
        name = f"bench/svc-{s}:http"
        chains.append(f":{svc} - [0:0]")
        rules.append(
            f'-A KUBE-SERVICES -d {ip}/32 -p tcp -m comment --comment "{name} cluster '
            f'IP" -m tcp --dport 80 -j {svc}'
        )
        for e in range(endpoints):
            sep, n = f"KUBE-SEP-{s:08X}{e:08X}", s * endpoints + e
            pod = f"10.{100 + n // 65000}.{(n % 65000) // 250}.{n % 250 + 1}"
            chains.append(f":{sep} - [0:0]")
            left = endpoints - e
            pick = f"-m statistic --mode random --probability {1 / left:.10f} " if left > 1 else ""
            rules.append(f'-A {svc} -m comment --comment "{name} -> {pod}:8080" {pick}-j {sep}')
            rules.append(f'-A {sep} -s {pod}/32 -m comment --comment "{name}" -j KUBE-MARK-MASQ')
            rules.append(
                f'-A {sep} -p tcp -m comment --comment "{name}" -m tcp '
                f"-j DNAT --to-destination {pod}:8080"
            )
    return "\n".join(["*nat", *chains, *rules, "COMMIT", ""])


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _restore(variant: str, text: str) -> float:
    """One restore into a fresh namespace: only the iptables-restore run is timed."""
    argv = [f"iptables-{variant}-restore", "-w", "10"]
    with netns() as ns:
        return ns.call(
            lambda: _timed(
                lambda: subprocess.run(
                    argv,
                    input=text,
                    text=True,
                    check=True,
                    capture_output=True,
                    timeout=RESTORE_TIMEOUT,
                )
            ),
            timeout=RESTORE_TIMEOUT + 60,
        )


def run(quick: bool = False) -> tuple[dict[str, Any], list[Series], list[Skipped]]:
    repeat = 3 if quick else 5
    series: list[Series] = []
    cpu = (
        ("python_loop", {"iterations": LOOP_ITERATIONS}, lambda: python_loop(LOOP_ITERATIONS)),
        ("sha256", {"bytes": HASH_BYTES}, lambda: sha256(HASH_BYTES)),
        ("spawn", {"programs": SPAWNS}, lambda: spawn(SPAWNS)),
    )
    for metric, labels, fn in cpu:
        series.append(Series(metric, "s", labels, tuple(_timed(fn) for _ in range(repeat))))
        print(f"calibrate: {metric} {min(series[-1].values):.3f} s", file=sys.stderr)
    problems = kernel_check(VARIANTS)
    skipped = [Skipped(f"iptables_restore {v}", why) for v, why in problems.items()]
    text = ruleset(SERVICES, ENDPOINTS)
    with private_xtables_lock():
        for variant in (v for v in VARIANTS if v not in problems):
            values = tuple(_restore(variant, text) for _ in range(repeat))
            restore_labels: dict[str, Label] = {
                "variant": variant,
                "services": SERVICES,
                "endpoints": ENDPOINTS,
            }
            series.append(Series("iptables_restore", "s", restore_labels, values))
            print(f"calibrate: iptables-{variant}-restore {min(values):.3f} s", file=sys.stderr)
    params = {"quick": quick, "repeat": repeat, "ruleset_bytes": len(text.encode())}
    return params, series, skipped
