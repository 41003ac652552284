"""`netplane bench ...`: run benchmarks (each run writes one JSON file) and compare runs.

Benchmark modules are imported only when their command runs: `compare` must work on a
laptop without root, and a benchmark still being written must not break the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from netplane.bench._results import (
    DEFAULT_OUTPUT_DIR,
    Result,
    Series,
    Skipped,
    new_result,
    write_result,
)
from netplane.signals import sigterm_unwinds

_output_dir = click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_OUTPUT_DIR,
    show_default=True,
    help="Where the result JSON is written.",
)
_quick = click.option("--quick", is_flag=True, help="Smoke run (well under a minute), not figures.")


@click.group()
def bench() -> None:
    """Benchmarks: rule sync, data plane, DNS, CNI, compute; compare and plot results."""


def _save(result: Result, output_dir: Path, path: Path | None = None) -> None:
    path = write_result(result, output_dir, path)
    for s in result.skipped:
        click.echo(f"skipped {s.what}: {s.reason}", err=True)
    if result.emulated:
        click.echo(f"EMULATED run ({result.platform['emulated']}, {result.platform['cpu_model']}):"
                   " figures are not hardware figures", err=True)  # fmt: skip
    click.echo(f"wrote {path}")


def _import(module: str, what: str) -> Any:
    """The benchmark module, or a clear error while it does not exist yet."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        raise click.ClickException(f"{what} is not available yet ({module} is missing)") from e


def _run_checkpointed(benchmark: str, run: Callable, output_dir: Path) -> None:
    """Run a long kernel benchmark that rewrites its file after every point (marked
    `partial` until the end), and turns SIGTERM into a clean stop: namespaces and the
    daemon are removed by the benchmark's own cleanup, never left behind."""
    path: Path | None = None

    def checkpoint(params: dict[str, Any], series: list[Series], skipped: list[Skipped]) -> None:
        nonlocal path
        partial = new_result(benchmark, {**params, "partial": True}, series, skipped)
        path = write_result(partial, output_dir, path)

    with sigterm_unwinds():
        params, series, skipped = run(checkpoint)
    _save(new_result(benchmark, params, series, skipped), output_dir, path)


@bench.command()
@_quick
@_output_dir
def compute(quick: bool, output_dir: Path) -> None:
    """Pure computation (renderer, change tracking): no kernel, runs anywhere (also emulated)."""
    from netplane.bench.compute import run

    params, series, skipped = run(quick)
    _save(new_result("compute", params, series, skipped), output_dir)


@bench.command()
@_quick
@_output_dir
def calibrate(quick: bool, output_dir: Path) -> None:
    """Fixed work (Python loop, SHA-256, fork/exec, iptables-restore of a fixed ruleset):
    compare two machines' files to relate their figures (e.g. an emulated arm64 run)."""
    from netplane.bench.calibrate import run

    params, series, skipped = run(quick)
    _save(new_result("calibrate", params, series, skipped), output_dir)


@bench.command()
@click.option(
    "--services",
    "scales",
    type=int,
    multiple=True,
    help="Service counts (repeatable); default by mode.",
)
@click.option(
    "--endpoints",
    "endpoint_counts",
    type=int,
    multiple=True,
    help="Endpoints per service (repeatable); default by mode.",
)
@click.option(
    "--backend",
    "backends",
    type=click.Choice(["legacy", "nft", "nftables"]),
    multiple=True,
    help="iptables variants (legacy, nft) and the nftables backend to run (repeatable); "
    "default: every one available.",
)
@click.option("--repeat", type=int, default=None, help="Samples per change kind.")
@_quick
@_output_dir
def sync(
    scales: tuple[int, ...],
    endpoint_counts: tuple[int, ...],
    backends: tuple[str, ...],
    repeat: int | None,
    quick: bool,
    output_dir: Path,
) -> None:
    """Rule-sync latency (manifest written -> rule active in the kernel), in network namespaces."""
    from netplane.bench.sync import SyncPlan, run

    plan = SyncPlan.make(quick, scales, endpoint_counts, backends, repeat)
    _run_checkpointed("sync", lambda checkpoint: run(plan, checkpoint), output_dir)


@bench.command()
@click.option("--services", "scales", type=int, multiple=True, help="Service counts (repeatable).")
@click.option(
    "--backend", "backends", type=click.Choice(["legacy", "nft", "nftables"]), multiple=True
)
@click.option("--repeat", type=int, default=None, help="Connections per point.")
@_quick
@_output_dir
def dataplane(
    scales: tuple[int, ...],
    backends: tuple[str, ...],
    repeat: int | None,
    quick: bool,
    output_dir: Path,
) -> None:
    """First-packet latency versus the number of services (client pod -> node -> server pod)."""
    from netplane.bench.dataplane import DataplanePlan, run

    plan = DataplanePlan.make(quick, scales, backends, repeat)
    _run_checkpointed("dataplane", lambda checkpoint: run(plan, checkpoint), output_dir)


def _plugged(benchmark: str, data: dict[str, Any], quick: bool) -> Result:
    """A result from another component's `run() -> dict`: its own series if it gives them in
    our format, everything else kept verbatim under parameters.data."""
    series = [
        Series(s["metric"], s.get("unit", ""), s.get("labels", {}), tuple(s["values"]))
        for s in data.get("series", [])
        if isinstance(s, dict) and "metric" in s and "values" in s
    ]
    rest = {k: v for k, v in data.items() if k != "series"}
    return new_result(benchmark, {"quick": quick, "data": rest}, series)


def _emulated_skip(benchmark: str, quick: bool) -> Result | None:
    """Under qemu-user the namespace/netlink benchmarks cannot run: say so in a result.
    (A whole emulated machine, qemu-system, runs them: its results are labelled instead.)"""
    from netplane.bench._results import emulation, is_qemu_user

    why = emulation()
    if not is_qemu_user(why):
        return None
    reason = f"emulated ({why}): needs network namespaces, netlink and real tools"
    return new_result(benchmark, {"quick": quick}, [], [Skipped(benchmark, reason)])


def _run_plugged(benchmark: str, module: str, what: str, output_dir: Path, **options: Any) -> None:
    """Run another component's `run(quick=..., ...) -> dict` and save it as our result."""
    quick = options["quick"]
    result = _emulated_skip(benchmark, quick)
    if result is None:
        result = _plugged(benchmark, _import(module, what).run(**options), quick)
    _save(result, output_dir)


@bench.command()
@click.option(
    "--peer",
    type=click.Choice(["coredns"]),
    default=None,
    help="Beside the real CoreDNS (kubernetes plugin), both fed by one real kube-apiserver.",
)
@click.option(
    "--services",
    type=click.IntRange(1, 100_000),
    default=None,
    help="With --peer: Services (one EndpointSlice of 5 endpoints each) created through the "
    "API server.  [default: 10,000; 1,000 with --quick]",
)
@_quick
@_output_dir
def dns(peer: str | None, services: int | None, quick: bool, output_dir: Path) -> None:
    """Cluster DNS QPS and latency under dnsperf (see bench/README.md, DNS benchmark)."""
    if peer is not None:
        _run_plugged("dns-peers", "netplane.bench.dns_peers", "the DNS peer benchmark",
                     output_dir, quick=quick, peer=peer, services=services)  # fmt: skip
        return
    if services is not None:
        raise click.UsageError("--services needs --peer (the benchmark without a peer serves "
                               "its fixed 10,000 from manifests)")  # fmt: skip
    _run_plugged("dns", "netplane.bench.dns_perf", "the DNS benchmark", output_dir, quick=quick)


@bench.command()
@_quick
@_output_dir
def cni(quick: bool, output_dir: Path) -> None:
    """CNI plugin ADD/DEL latency (see bench/README.md, CNI benchmark)."""
    _run_plugged("cni", "netplane.bench.cni_latency", "the CNI benchmark", output_dir, quick=quick)


@bench.command()
@_quick
@_output_dir
def cluster(quick: bool, output_dir: Path) -> None:
    """Emulated cluster: `netplane up` to all pods ready, failover gap (bench/README.md)."""
    _run_plugged("cluster", "netplane.bench.cluster_up", "the emulated cluster benchmark",
                 output_dir, quick=quick)  # fmt: skip


@bench.command("proxy-sync")
@click.option("--services", "scales", type=int, multiple=True, help="Service counts (repeatable).")
@click.option("--variant", "variants", type=click.Choice(["legacy", "nft"]), multiple=True)
@click.option(
    "--peers",
    default=None,
    help="Run on a real API server beside these real peers (comma-separated, e.g. "
    "kube-proxy-iptables,kube-proxy-nftables; `none`: netplane alone).",
)
@click.option("--changes", type=int, default=None, help="With --peers: endpoint changes per point.")
@_quick
@_output_dir
def proxy_sync(
    scales: tuple[int, ...],
    variants: tuple[str, ...],
    peers: str | None,
    changes: int | None,
    quick: bool,
    output_dir: Path,
) -> None:
    """The proxy's own sync benchmark, or with --peers netplane beside the real kube-proxy on
    one real API server (see bench/README.md, Proxy sync benchmark)."""
    if peers is not None:
        from netplane.bench.proxy_peers import Plan, run

        names = [] if peers == "none" else [p.strip() for p in peers.split(",") if p.strip()]
        try:
            plan = Plan.make(quick, scales, names, changes)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--peers") from e
        _run_checkpointed("proxy-peers", lambda checkpoint: run(plan, checkpoint), output_dir)
        return
    _run_plugged("proxy-sync", "netplane.bench.proxy_sync", "the proxy sync benchmark",
                 output_dir, scales=list(scales) or None, variants=list(variants) or None,
                 quick=quick)  # fmt: skip


@bench.command("arm64-vm")
@click.option(
    "--cpu",
    type=click.Choice(["cortex-a72", "cortex-a76"]),
    default="cortex-a72",
    show_default=True,
    help="The emulated cores: Raspberry Pi 4 (a72) or 5 (a76).",
)
@click.option("--smp", type=int, default=None, help="vCPUs (default: 4, or the host's cores).")
@click.option("--memory", "memory_mb", type=int, default=4096, show_default=True, help="MiB.")
@click.option(
    "--budget",
    type=int,
    default=None,
    help="Seconds the suite may run inside the VM (default 6 h; --quick 40 min).",
)
@click.option("--only", default="", help="Comma-separated suite parts (see bench/arm64/suite.sh).")
@click.option("--refresh", is_flag=True, help="Rebuild the image from current Debian packages.")
@click.option("--quick", is_flag=True, help="suite.sh --quick: a smoke run of every part.")
@_output_dir
def arm64_vm(
    cpu: str,
    smp: int | None,
    memory_mb: int,
    budget: int | None,
    only: str,
    refresh: bool,
    quick: bool,
    output_dir: Path,
) -> None:
    """The suite on an emulated Raspberry Pi class arm64 machine (qemu-system, TCG): builds
    and caches the image, boots it with no network, copies the JSON results out."""
    from netplane.bench._results import ResultError, load_result
    from netplane.bench.arm64 import vm
    from netplane.bench.arm64.image import ImageError
    from netplane.bench.compare import format_table

    try:
        plan = vm.VmPlan.make(cpu, smp, memory_mb, budget, quick,
                              tuple(p for p in only.split(",") if p))  # fmt: skip
        files = vm.run(plan, output_dir)
    except (ValueError, ImageError) as e:
        raise click.ClickException(str(e)) from e
    for path in files:
        try:
            r = load_result(path)
        except ResultError:  # the micro-benchmarks' pytest-benchmark file
            click.echo(f"wrote {path}")
            continue
        host = vm.newest_host_run(output_dir, r.benchmark)
        if host and r.series:
            click.echo(format_table((host[0].name, host[1]), [(path.name, r)]))
        click.echo(f"wrote {path}")
    if not files:
        raise click.ClickException("the VM wrote no results (see its console log)")


@bench.command()
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--alpha",
    type=float,
    default=0.05,
    show_default=True,
    help="Significance level for the Mann-Whitney U test.",
)
@click.option(
    "--plot-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write PNG plots of all FILES here.",
)
def compare(files: tuple[Path, ...], alpha: float, plot_dir: Path | None) -> None:
    """Medians and ratios of FILES against the first one, marking significant differences;
    one FILE alone: its medians, contenders side by side."""
    from netplane.bench._results import ResultError, load_result
    from netplane.bench.compare import format_summary, format_table

    try:
        loaded = [(f.name, load_result(f)) for f in files]
    except ResultError as e:
        raise click.ClickException(str(e)) from e
    if len(loaded) > 1:
        click.echo(format_table(loaded[0], loaded[1:], alpha))
    elif plot_dir is None:
        click.echo(format_summary(*loaded[0]))
    if plot_dir is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError as e:
            raise click.ClickException(
                "plots need matplotlib, which the `bench` extra installs: "
                "pip install 'netplane[bench]' (or just: pip install matplotlib)"
            ) from e
        from netplane.bench.plots import all_plots

        for path in all_plots(loaded, plot_dir):
            click.echo(f"wrote {path}")
