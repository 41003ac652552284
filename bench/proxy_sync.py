"""Proxy sync benchmark: netplane's Syncer beside the floor of the stock tools, same run.

For each iptables variant and scale (S ClusterIP services x 5 endpoints), in fresh network
namespaces (a worker process runs inside each, so no `ip netns exec` per restore):
- full sync: the Syncer's first sync (render, plan, restore, chunked on nft), beside the
  floor: one monolithic `iptables-restore` of the same rules by hand (bounded: a floor that
  takes longer than FLOOR_TIMEOUT is reported as "> timeout");
- one-endpoint change: from `ClusterState.apply` of the changed EndpointSlice to the rules
  in the kernel, beside restoring just that service's chains by hand;
- bytes sent to iptables-restore, Python compute time, peak RSS of the worker.

    .venv/bin/python -m netplane.bench.proxy_sync [--quick] [--services N ...] [--variant V]
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # imported where used: the worker process measures its own imports
    from netplane.model import EndpointSlice
    from netplane.state import ClusterState

ENDPOINTS = 5
SCALES = (1000, 5000, 10000)
QUICK_SCALES = (1000,)
VARIANTS = ("legacy", "nft")
FLOOR_TIMEOUT = 180.0  # seconds; the nft floor at 10k services is ~8 minutes
CONFIG_CIDR = "10.64.0.0/10"


def build_state(services: int, endpoints: int = ENDPOINTS) -> tuple[ClusterState, type, type, type]:
    from netplane.model import Endpoint, EndpointPort, EndpointSlice, Service, ServicePort
    from netplane.state import ClusterState

    state = ClusterState()
    objs: list = []
    for i in range(services):
        name = f"svc-{i}"
        port = ServicePort(80, "TCP", "http", 8080)
        objs.append(Service("bench", name, cluster_ips=(_ip(96, i),), ports=(port,)))
        objs.append(_slice(name, [_ip(100, i * endpoints + k) for k in range(endpoints)]))
    state.apply(objs)
    state.mark_synced()
    return state, Endpoint, EndpointPort, EndpointSlice


def _ip(second: int, n: int) -> str:
    return f"10.{second + n // 65000}.{(n % 65000) // 250}.{n % 250 + 1}"


def _slice(name: str, addresses: list[str]) -> EndpointSlice:
    from netplane.model import Endpoint, EndpointPort, EndpointSlice

    eps = tuple(Endpoint((a,), node_name="bench-node") for a in addresses)
    return EndpointSlice("bench", f"{name}-1", name, endpoints=eps,
                         ports=(EndpointPort(8080, "TCP", "http"),))  # fmt: skip


def _restore_by_hand(variant: str, text: str, timeout: float | None = None) -> float | None:
    argv = [f"iptables-{variant}-restore", "--noflush", "--counters", "-w", "10"]
    start = time.perf_counter()
    try:
        subprocess.run(argv, input=text, text=True, check=True, capture_output=True,
                       timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        return None
    return time.perf_counter() - start


def worker_sync(variant: str, services: int, changes: int) -> dict[str, Any]:
    """Inside a fresh namespace: the Syncer's full sync and one-endpoint changes."""
    from netplane.proxy._iptables import Iptables
    from netplane.proxy.render import ProxyConfig, format_restore, render_service
    from netplane.proxy.sync import Syncer

    state, *_ = build_state(services)
    tracker = state.tracker()
    config = ProxyConfig("bench-node", cluster_cidr=CONFIG_CIDR)
    syncer = Syncer(config, Iptables(variant))
    start = time.perf_counter()
    full = syncer.sync(state.snapshot())
    full_seconds = time.perf_counter() - start
    out: dict[str, Any] = {
        "full_seconds": full_seconds,
        "full_compute_seconds": full.compute_seconds,
        "full_bytes": full.bytes,
        "full_restores": full.restores,
        "rules": sum(full.rules.values()),
        "change_seconds": [],
        "change_compute_seconds": [],
        "change_bytes": [],
        "floor_change_seconds": [],
    }
    for j in range(changes):
        i = (j * 7919) % services
        name = f"svc-{i}"
        addresses = [_ip(100, i * ENDPOINTS + k) for k in range(ENDPOINTS)]
        addresses[j % ENDPOINTS] = _ip(150, j)  # one endpoint replaced by a new pod
        start = time.perf_counter()
        state.apply([_slice(name, addresses)])
        result = syncer.sync(state.snapshot(), tracker.pop())
        out["change_seconds"].append(time.perf_counter() - start)
        out["change_compute_seconds"].append(result.compute_seconds)
        out["change_bytes"].append(result.bytes)
        # floor: that service's chains (same content) restored by hand
        chains = render_service(state.snapshot(), ("bench", name), config).nat_chains
        out["floor_change_seconds"].append(
            _restore_by_hand(variant, format_restore({"nat": dict(chains)}))
        )
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def worker_floor(variant: str, services: int, timeout: float) -> dict[str, Any]:
    """Inside a fresh namespace: the same rules as one monolithic restore, by hand."""
    from netplane.proxy.render import ProxyConfig, render_full

    state, *_ = build_state(services)
    text = render_full(state.snapshot(), ProxyConfig("bench-node", cluster_cidr=CONFIG_CIDR))
    return {"floor_full_seconds": _restore_by_hand(variant, text, timeout),
            "floor_bytes": len(text.encode())}  # fmt: skip


def _in_namespace(args: list[str], timeout: float) -> dict[str, Any]:
    from netplane import netns

    ns = netns.create(netns.unique_name("npbench"))
    try:
        argv = [sys.executable, "-m", "netplane.bench.proxy_sync", "--worker", *args]
        out = netns.run(ns, argv, timeout=timeout)
        return json.loads(out.strip().splitlines()[-1])
    finally:
        netns.delete(ns)


def run(
    scales: list[int] | None = None, variants: list[str] | None = None, quick: bool = False
) -> dict[str, Any]:
    """Measure every (variant, scale); returns rows plus series in bench/_results format."""
    scales = list(scales or (QUICK_SCALES if quick else SCALES))
    variants = list(variants or VARIANTS)
    changes = 3 if quick else 7
    floor_timeout = 60.0 if quick else FLOOR_TIMEOUT
    rows: list[dict[str, Any]] = []
    series: list[dict[str, Any]] = []
    for variant in variants:
        for services in scales:
            row: dict[str, Any] = {"variant": variant, "services": services, "endpoints": ENDPOINTS}
            row |= _in_namespace(["sync", variant, str(services), str(changes)], 1200)
            row |= _in_namespace(["floor", variant, str(services), str(floor_timeout)],
                                 floor_timeout + 300)  # fmt: skip
            row["floor_timeout"] = floor_timeout
            rows.append(row)
            labels = {"variant": variant, "services": services, "endpoints": ENDPOINTS}
            for metric, key in (
                ("full_sync", "full_seconds"),
                ("full_sync_compute", "full_compute_seconds"),
                ("floor_full_monolithic", "floor_full_seconds"),
                ("endpoint_change", "change_seconds"),
                ("endpoint_change_compute", "change_compute_seconds"),
                ("floor_endpoint_change", "floor_change_seconds"),
            ):
                values = row[key] if isinstance(row[key], list) else [row[key]]
                values = [v for v in values if v is not None]
                if values:
                    series.append({"metric": metric, "unit": "s", "labels": labels,
                                   "values": values})  # fmt: skip
            print(format_row(row), file=sys.stderr, flush=True)
    return {"rows": rows, "series": series}


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f}"


def _s(v: float | None, timeout: float) -> str:
    return f"> {timeout:.0f}" if v is None else f"{v:.2f}"


HEADER = (
    f"{'variant':7} {'svcs':>6} {'rules':>7} | {'full s':>7} {'floor s':>8} {'ratio':>6} "
    f"{'calls':>5} {'MB':>6} {'cpu%':>5} | {'1-ep ms':>8} {'floor ms':>8} {'cpu ms':>7} "
    f"{'KB':>6} | {'RSS MB':>6}"
)


def format_row(r: dict[str, Any]) -> str:
    floor = r["floor_full_seconds"]
    ratio = "-" if floor is None else f"{r['full_seconds'] / floor:.2f}"
    med = statistics.median
    floor_change = [v for v in r["floor_change_seconds"] if v is not None]
    cpu = 100 * r["full_compute_seconds"] / r["full_seconds"]
    return (
        f"{r['variant']:7} {r['services']:6d} {r['rules']:7d} | {r['full_seconds']:7.2f} "
        f"{_s(floor, r['floor_timeout']):>8} {ratio:>6} {r['full_restores']:5d} "
        f"{r['full_bytes'] / 1e6:6.1f} {cpu:5.1f} | "
        f"{_ms(med(r['change_seconds'])):>8} {_ms(med(floor_change) if floor_change else None):>8} "
        f"{_ms(med(r['change_compute_seconds'])):>7} {med(r['change_bytes']) / 1e3:6.1f} | "
        f"{r['peak_rss_mb']:6.0f}"
    )


def format_table(data: dict[str, Any]) -> str:
    return "\n".join([HEADER, *(format_row(r) for r in data["rows"])])


@click.command()
@click.option("--quick", is_flag=True, help="1k services only, fewer repeats (< 1 min).")
@click.option("--services", "scales", type=int, multiple=True)
@click.option("--variant", "variants", type=click.Choice(VARIANTS), multiple=True)
@click.option("--output-dir", default="bench/results", show_default=True)
@click.option("--worker", is_flag=True, hidden=True, help="Run one measurement (internal).")
@click.argument("worker_args", nargs=-1)
def main(
    quick: bool,
    scales: tuple[int, ...],
    variants: tuple[str, ...],
    output_dir: str,
    worker: bool,
    worker_args: tuple[str, ...],
) -> None:
    """Print the proxy sync benchmark table and write its JSON result."""
    if worker:
        mode, variant, services, extra = worker_args
        if mode == "sync":
            result = worker_sync(variant, int(services), int(extra))
        else:
            result = worker_floor(variant, int(services), float(extra))
        print(json.dumps(result))
        return
    from netplane.bench._results import Series, new_result, write_result

    data = run(list(scales), list(variants), quick)
    click.echo(format_table(data))
    series = [Series(s["metric"], s["unit"], s["labels"], tuple(s["values"]))
              for s in data["series"]]  # fmt: skip
    written = new_result("proxy-sync", {"quick": quick, "rows": data["rows"]}, series)
    click.echo(f"wrote {write_result(written, output_dir)}")


if __name__ == "__main__":
    main()
