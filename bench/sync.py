"""`netplane bench sync`: how long a Service change takes to become a rule in the kernel.

For each backend (iptables legacy and nft variants, nftables) and scale (S background
services x E endpoints) two parts run, each in network namespaces it creates and deletes:

- end to end (_e2e): the real daemon follows a manifest directory; the time from writing
  the manifest to a probe connection seeing the new behaviour, and the daemon's CPU time;
- per sync (_inproc, _inproc_nft): netplane's syncer split into compute and kernel time
  with the bytes it hands to the kernel, beside the floor (its exact restore inputs or
  netlink transactions replayed by hand) and, for iptables, kube-proxy-equivalent
  behaviour (full KUBE-SERVICES rewrite per sync).
Change kinds: see _scenario.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netplane.bench import _workload as w
from netplane.bench._netns import kernel_check, private_xtables_lock
from netplane.bench._results import Series, Skipped
from netplane.bench._runner import grid, progress
from netplane.bench._scenario import CHANGES

Checkpoint = Callable[[dict[str, Any], list[Series], list[Skipped]], None]

QUICK_POINTS = ((100,), (1,))
FULL_POINTS = ((100, 1000, 10000), (1, 10, 100))
MAX_TOTAL_ENDPOINTS = 100_000  # 10k x 100 would be 3M rules: hours on this class of machine
BACKENDS = ("legacy", "nft", "nftables")


@dataclass(frozen=True, slots=True)
class SyncPlan:
    quick: bool
    points: tuple[tuple[int, int], ...]
    backends: tuple[str, ...]
    repeat: int
    flush_repeat: int
    start_timeout: float  # the daemon's first full sync
    change_timeout: float  # one change becoming visible

    @classmethod
    def make(
        cls,
        quick: bool,
        scales: tuple[int, ...] = (),
        endpoint_counts: tuple[int, ...] = (),
        backends: tuple[str, ...] = (),
        repeat: int | None = None,
    ) -> SyncPlan:
        default_scales, default_endpoints = QUICK_POINTS if quick else FULL_POINTS
        for n in (*scales, *endpoint_counts, repeat or 1):
            if n < 1:
                raise ValueError(f"counts must be positive, got {n}")
        # one more service (the probe's) and one more endpoint (endpoint-add) must fit
        if max(scales, default=0) >= w.MAX_SERVICES:
            raise ValueError(f"at most {w.MAX_SERVICES - 1} services")
        if max(endpoint_counts, default=0) >= w.MAX_ENDPOINTS_PER_SERVICE:
            raise ValueError(f"at most {w.MAX_ENDPOINTS_PER_SERVICE - 1} endpoints per service")
        repeat = repeat or (3 if quick else 15)
        return cls(
            quick=quick,
            points=tuple(
                grid(
                    scales or default_scales,
                    endpoint_counts or default_endpoints,
                    MAX_TOTAL_ENDPOINTS,
                )
            ),
            backends=tuple(dict.fromkeys(backends)) or BACKENDS,
            repeat=repeat,
            flush_repeat=1 if quick else min(repeat, 5),
            start_timeout=120.0 if quick else 1800.0,
            change_timeout=30.0 if quick else 300.0,
        )

    def parameters(self) -> dict[str, Any]:
        return {
            "quick": self.quick,
            "points": [list(p) for p in self.points],
            "backends": list(self.backends),
            "repeat": self.repeat,
            "flush_repeat": self.flush_repeat,
            "changes": list(CHANGES),
            "max_total_endpoints": MAX_TOTAL_ENDPOINTS,
        }


def run(
    plan: SyncPlan, checkpoint: Checkpoint | None = None
) -> tuple[dict[str, Any], list[Series], list[Skipped]]:
    """Every point of PLAN; CHECKPOINT gets the figures so far after each point."""
    with private_xtables_lock():
        return _run(plan, checkpoint or (lambda *_: None))


def _run(
    plan: SyncPlan, checkpoint: Checkpoint
) -> tuple[dict[str, Any], list[Series], list[Skipped]]:
    series: list[Series] = []
    problems = kernel_check(plan.backends)
    skipped = [Skipped(f"backend {v}", why) for v, why in problems.items()]
    usable = [v for v in plan.backends if v not in problems]
    params = plan.parameters()
    if usable:
        # imported only here: the syncer is not needed to report why nothing could run
        from netplane.bench._e2e import run_e2e
        from netplane.bench._inproc import run_inproc

        workdir = Path(tempfile.mkdtemp(prefix="npbench-sync-"))
        started = time.monotonic()
        try:
            # small scales first, both variants at each: an interrupted run keeps pairs
            jobs = [(v, s, e) for s, e in plan.points for v in usable]
            for variant, services, endpoints in progress(jobs, "bench sync"):
                where = f"{variant} {services}x{endpoints}"
                try:
                    if variant == "nftables":
                        from netplane.bench._inproc_nft import run_inproc_nft

                        new, why = run_inproc_nft(
                            services, endpoints, plan.repeat, plan.flush_repeat
                        )
                    else:
                        new, why = run_inproc(
                            variant, services, endpoints, plan.repeat, plan.flush_repeat
                        )
                    series += new
                    skipped += why
                except (RuntimeError, OSError) as e:  # SyncError, a tool failing: go on
                    skipped.append(Skipped(f"per-sync {where}", str(e)))
                new, why = run_e2e(
                    variant,
                    services,
                    endpoints,
                    plan.repeat,
                    plan.flush_repeat,
                    (plan.start_timeout, plan.change_timeout),
                    workdir,
                )
                series += new
                skipped += why
                params["seconds"] = round(time.monotonic() - started, 1)
                checkpoint(params, series, skipped)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        params["seconds"] = round(time.monotonic() - started, 1)
    print_summary(series)
    return params, series, skipped


def print_summary(series: list[Series]) -> None:
    """Medians side by side: netplane end to end, its sync, the floor and the peer."""
    import statistics

    from netplane.bench.compare import format_value

    def med(metric: str, impl: str, key: tuple) -> str:
        for s in series:
            lab = s.labels
            if (
                s.metric == metric
                and lab.get("impl") == impl
                and (lab["backend"], lab["services"], lab["endpoints"], lab["change"]) == key
                and s.values
            ):
                return format_value(statistics.median(s.values), s.unit)
        return "-"

    keys = sorted(
        {
            (s.labels["backend"], s.labels["services"], s.labels["endpoints"], s.labels["change"])
            for s in series
            if "change" in s.labels
        }
    )
    if not keys:
        return
    head = ("backend", "svc", "ep", "change", "e2e latency", "sync", "compute", "bytes",
            "floor", "kube-proxy-eq")  # fmt: skip
    rows: list[tuple[str, ...]] = [head]
    for key in keys:
        rows.append(
            (
                *map(str, key),
                med("latency", "netplane", key),
                med("sync", "netplane", key),
                med("compute", "netplane", key),
                med("bytes", "netplane", key),
                med("restore", "floor", key),
                med("restore", "kube-proxy-equivalent", key),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print("medians; e2e = manifest written -> probe sees it; floor = same restores by hand")
