"""Renderer cost at scale (CPU time, best of 3), the figures in proxy/README.md:

.venv/bin/python -m netplane.bench.render_cost 10000
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable

from netplane.model import Endpoint, EndpointPort, EndpointSlice, Service, ServicePort
from netplane.proxy import _chains
from netplane.proxy import render as R
from netplane.state import ClusterState, Snapshot


def build(n: int, per: int = 5) -> Snapshot:
    objs: list = []
    for i in range(n):
        name = f"svc-{i}"
        objs.append(
            Service(
                namespace="bench",
                name=name,
                cluster_ips=(f"172.30.{i // 250}.{i % 250 + 1}",),
                ip_families=("IPv4",),
                selector=(("app", name),),
                ports=(ServicePort(port=80, name="http", target_port=8080),),
            )
        )
        eps = []
        for j in range(per):
            k = i * per + j
            eps.append(
                Endpoint(
                    addresses=(f"10.{k >> 16 & 255}.{k >> 8 & 255}.{k & 255}",),
                    node_name="n1" if j == 0 else "n2",
                )
            )
        objs.append(
            EndpointSlice(
                namespace="bench",
                name=f"{name}-x",
                service_name=name,
                endpoints=tuple(eps),
                ports=(EndpointPort(port=8080, name="http"),),
            )
        )
    state = ClusterState()
    state.apply(objs)
    return state.snapshot()


def _cpu(fn: Callable[[], object], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def _cold(then: Callable[[], object] = lambda: None) -> None:
    """Clear the renderer's caches, then run THEN."""
    R._memo.clear()
    R._endpoint.cache_clear()
    _chains.port_hash.cache_clear()
    then()


def measure(n: int) -> dict[str, float]:
    snap = build(n)
    cfg = R.ProxyConfig(node_name="n1", cluster_cidr="10.0.0.0/8")
    keys = sorted(snap.services)
    out: dict[str, float] = {}
    out["full_cold"] = _cpu(lambda: _cold(lambda: R.render_full(snap, cfg)))
    R.render_full(snap, cfg)
    out["full_warm"] = _cpu(lambda: R.render_full(snap, cfg))

    def services(clear_memo: bool) -> list[R.ServiceRules]:
        if clear_memo:
            R._memo.clear()
        with R.paused_gc():
            return [R.render_service(snap, k, cfg) for k in keys]

    out["services_cold"] = _cpu(lambda: _cold(lambda: services(False)))
    out["services_hashes_cached"] = _cpu(lambda: services(True))
    rules = services(False)
    out["services_memo"] = _cpu(lambda: services(False))
    out["assemble"] = _cpu(lambda: R.assemble(cfg, rules))
    tables = R.assemble(cfg, rules)
    out["format"] = _cpu(lambda: R.format_restore(tables))
    key = keys[len(keys) // 2]
    reps = 2000

    def one(clear: bool) -> None:
        for _ in range(reps):
            if clear:
                R._memo.clear()
            R.render_service(snap, key, cfg)

    out["one_service_us"] = _cpu(lambda: one(True)) / reps * 1e6
    out["one_service_memo_us"] = _cpu(lambda: one(False)) / reps * 1e6
    out["rules"] = sum(1 for x in R.render_full(snap, cfg).splitlines() if x.startswith("-A"))
    return out


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    for name, value in measure(n).items():
        unit = "" if name == "rules" else (" us" if name.endswith("_us") else " ms")
        print(f"{name:24s} {value if unit != ' ms' else value * 1e3:10.1f}{unit}")


if __name__ == "__main__":
    main()
