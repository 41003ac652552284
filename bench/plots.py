"""PNG plots of benchmark results for the README (matplotlib, Agg: no display needed)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from netplane.bench._results import Result
from netplane.bench.compare import series_key

# panel -> line -> [(x, y)]
Panels = Mapping[str, Mapping[str, Sequence[tuple[float, float]]]]


def plot_lines(path: Path, title: str, panels: Panels, xlabel: str, ylabel: str) -> Path:
    """One row of log-log panels sharing the y axis; one line per series, medians as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, max(len(panels), 1), figsize=(5 * max(len(panels), 1), 4), sharey=True, squeeze=False
    )
    for ax, (panel, lines) in zip(axes[0], sorted(panels.items()), strict=False):
        for name, points in sorted(lines.items()):
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, marker="o", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(panel)
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    axes[0][0].set_ylabel(ylabel)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return path


def _tag(name: str, result: Result, many: bool) -> str:
    suffix = " EMULATED" if result.emulated else ""
    return f"{name}{suffix}: " if many or suffix else ""


def _overlap(results: Sequence[tuple[str, Result]]) -> bool:
    """Whether two files hold the same series: then lines are named by file. Files with
    different points (say, one run per scale) draw shared lines."""
    seen: set = set()
    for _, result in results:
        keys = {series_key(result.benchmark, s) for s in result.series}
        if keys & seen:
            return True
        seen |= keys
    return False


# (metric, impl) -> line name: netplane end to end and per sync, beside floor and peer
SYNC_LINES = {
    ("latency", "netplane"): "netplane e2e",
    ("sync", "netplane"): "netplane sync",
    ("restore", "floor"): "floor",
    ("restore", "kube-proxy-equivalent"): "kube-proxy-eq",
}


def sync_plots(results: Sequence[tuple[str, Result]], out_dir: Path) -> list[Path]:
    """Per change kind: time versus services, a panel per backend and endpoint count;
    lines for netplane end to end and per sync, the floor and kube-proxy-equivalent."""
    by_change: dict[str, dict[str, dict[str, list[tuple[float, float]]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    many = _overlap(results)
    for name, result in results:
        if result.benchmark != "sync":
            continue
        for s in result.series:
            what = SYNC_LINES.get((s.metric, str(s.labels.get("impl"))))
            if what is None or not s.values:
                continue
            lab = s.labels
            panel = f"{lab.get('backend')}, {lab.get('endpoints')} endpoints/service"
            by_change[str(lab.get("change"))][panel][f"{_tag(name, result, many)}{what}"].append(
                (float(lab["services"]), statistics.median(s.values))
            )
    return [
        plot_lines(
            out_dir / f"sync-{change}.png",
            f"{change}: median seconds (e2e = manifest written -> probe sees the rule)",
            panels,
            "services",
            "seconds",
        )
        for change, panels in sorted(by_change.items())
    ]


def dataplane_plots(results: Sequence[tuple[str, Result]], out_dir: Path) -> list[Path]:
    """First-packet latency versus services, to the first and the last service dispatched."""
    panels: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    many = _overlap(results)
    for name, result in results:
        if result.benchmark != "dataplane":
            continue
        for s in result.series:
            if s.metric != "first_packet" or not s.values:
                continue
            lab = s.labels
            panels[str(lab.get("backend"))][
                f"{_tag(name, result, many)}{lab.get('target')}"
            ].append((float(lab["services"]), statistics.median(s.values)))
    if not panels:
        return []
    return [
        plot_lines(
            out_dir / "dataplane-first-packet.png",
            "first packet (connect) latency, pod -> ClusterIP (median)",
            panels,
            "services",
            "seconds",
        )
    ]


def all_plots(results: Sequence[tuple[str, Result]], out_dir: Path) -> list[Path]:
    return [*sync_plots(results, out_dir), *dataplane_plots(results, out_dir)]
