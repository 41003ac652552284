"""Compute-only benchmarks: what netplane's pure parts cost, with no kernel involved.

These are the figures that still mean something under qemu-user (relative to each other)
and on a node where netfilter is out of reach; the kernel-touching benchmarks (sync,
dataplane) need root and network namespaces.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from types import MappingProxyType
from typing import Any

from netplane.bench import _workload as w
from netplane.bench._results import Series, Skipped
from netplane.bench._runner import grid, progress
from netplane.model import KubeObject
from netplane.state import ChangeTracker, ClusterState, ServiceKey, Snapshot

QUICK_GRID = ((100, 1000), (1, 10))
FULL_GRID = ((100, 1000, 10000), (1, 10, 100))
MAX_TOTAL_ENDPOINTS = 100_000
SERIES_BUDGET_S = 20.0  # per series: stop sampling after this long (at least 3 samples)


def sample(fn: Callable[[], Any], repeat: int, budget: float = SERIES_BUDGET_S) -> list[float]:
    """Wall times of up to REPEAT calls, stopping early (after 3) once BUDGET is spent."""
    values: list[float] = []
    deadline = time.monotonic() + budget
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        values.append(time.perf_counter() - t0)
        if len(values) >= 3 and time.monotonic() > deadline:
            break
    return values


def _fresh(snap: Snapshot, key: ServiceKey | None = None) -> Snapshot:
    """SNAP with new (equal) slice tuples: the renderer memoizes per service on object
    identity, and these figures are about rendering, not about the memo."""
    keys = [key] if key else list(snap.slices)
    slices = {**snap.slices, **{k: tuple(list(snap.slices[k])) for k in keys}}
    return dataclasses.replace(snap, slices=MappingProxyType(slices))


def _state(services: int, endpoints: int) -> ClusterState:
    state = ClusterState()
    state.apply(w.objects(w.cluster_docs(services, endpoints)))
    return state


def _render_series(snap: Snapshot, config: Any, repeat: int, labels: dict) -> list[Series]:
    from netplane.proxy.render import render_full, render_service

    key = (w.NAMESPACE, w.service_name(0))
    # fresh copies made beforehand: copying is not what is measured
    cold = iter([_fresh(snap) for _ in range(repeat)])
    pair = [_fresh(snap, key), _fresh(snap, key)]
    turn = iter(range(repeat * 10))
    return [
        Series(
            "render_full",
            "s",
            labels,
            tuple(sample(lambda: render_full(next(cold), config), repeat)),
        ),
        Series(
            "render_full_warm",
            "s",
            labels,
            tuple(sample(lambda: render_full(snap, config), repeat)),
        ),
        Series(
            "render_service",
            "s",
            labels,
            tuple(sample(lambda: render_service(pair[next(turn) % 2], key, config), repeat * 10)),
        ),
    ]


def run(quick: bool) -> tuple[dict[str, Any], list[Series], list[Skipped]]:
    scales, endpoint_counts = QUICK_GRID if quick else FULL_GRID
    repeat = 5 if quick else 15
    points = grid(scales, endpoint_counts, MAX_TOTAL_ENDPOINTS)
    params = {
        "quick": quick,
        "points": points,
        "repeat": repeat,
        "max_total_endpoints": MAX_TOTAL_ENDPOINTS,
    }
    series: list[Series] = []
    skipped: list[Skipped] = []
    try:
        from netplane.proxy.render import ProxyConfig, render_full

        config = ProxyConfig(node_name="bench-node", cluster_cidr=str(w.POD_NET))
        render_full(ClusterState().snapshot(), config)
        renderer = True
    except (ImportError, NotImplementedError) as e:
        renderer = False
        skipped.append(Skipped("render", f"netplane.proxy.render is not usable yet: {e!r}"))

    for services, endpoints in progress(points, "compute"):
        labels = {"services": services, "endpoints": endpoints}
        state = _state(services, endpoints)
        tracker = state.tracker()
        # service 0's endpoints turn not ready and back: the commonest change a proxy sees
        slices = [w.objects([w.service_docs(0, endpoints, ready=r)[1]])[0] for r in (False, True)]
        turn = iter(range(repeat * 10))

        def change_one(
            state: ClusterState = state,
            tracker: ChangeTracker = tracker,
            slices: list[KubeObject] = slices,
            turn: Iterator[int] = turn,
        ) -> None:
            state.apply([slices[next(turn) % 2]])
            tracker.pop()

        series.append(Series("apply_pop", "s", labels, tuple(sample(change_one, repeat * 10))))
        if renderer:
            series += _render_series(state.snapshot(), config, repeat, labels)
        del state
    return params, series, skipped
