"""Comparing benchmark runs: medians, ratios and whether a difference is real.

Benchmarks on a shared 2-core machine are noisy, so a ratio alone says little. Each series
carries its raw samples and two runs are compared with the Mann-Whitney U test (two-sided):
it assumes no distribution shape, which suits latencies with long tails. A row is marked
significant only when p < alpha AND enough samples exist for the test to mean anything.

The test comes from scipy (the `bench` extra). Without it `compare` still prints medians and
ratios, and says what to install for the p-values: reading results must work on a plain
install, for example on the Raspberry Pi a result file was copied to.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from netplane.bench._results import Result, Series

MIN_SAMPLES = 3  # below this the U test cannot reach p < 0.05 on either side
SCIPY_MISSING = (
    "p-values need scipy, which the `bench` extra installs: "
    "pip install 'netplane[bench]' (or just: pip install scipy)"
)
SeriesKey = tuple[str, str, tuple[tuple[str, str], ...]]  # (benchmark, metric, labels)


@dataclass(frozen=True, slots=True)
class Row:
    """One series in the baseline against the same series in another run."""

    key: SeriesKey
    unit: str
    n_base: int
    n_other: int
    median_base: float
    median_other: float
    p_value: float | None  # None: too few samples to test

    @property
    def ratio(self) -> float | None:
        return self.median_other / self.median_base if self.median_base else None

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value is not None and self.p_value < alpha


def series_key(benchmark: str, s: Series) -> SeriesKey:
    return (benchmark, s.metric, tuple(sorted((k, str(v)) for k, v in s.labels.items())))


def index(result: Result) -> dict[SeriesKey, Series]:
    return {series_key(result.benchmark, s): s for s in result.series}


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value that A and B come from the same distribution (None: too few)."""
    if len(a) < MIN_SAMPLES or len(b) < MIN_SAMPLES or not have_scipy():
        return None
    from scipy.stats import mannwhitneyu

    if len(set(a) | set(b)) == 1:
        return 1.0  # all identical: scipy warns and returns nan; they are the same
    return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)


def have_scipy() -> bool:
    try:
        import scipy.stats  # noqa: F401
    except ImportError:
        return False
    return True


def compare(base: Result, other: Result) -> list[Row]:
    """Rows for every series present in both runs, in the baseline's order."""
    theirs = index(other)
    rows = []
    for key, s in index(base).items():
        o = theirs.get(key)
        if o is None or not s.values or not o.values:
            continue
        rows.append(
            Row(
                key=key,
                unit=s.unit,
                n_base=len(s.values),
                n_other=len(o.values),
                median_base=statistics.median(s.values),
                median_other=statistics.median(o.values),
                p_value=mann_whitney(s.values, o.values),
            )
        )
    return rows


def label(result: Result, name: str) -> str:
    """How a run is named in tables: its file, machine and CPU, plus EMULATED and how when
    it was not real hardware (qemu-user, or a whole machine under qemu-system)."""
    plat = result.platform
    parts = [plat.get("arch", "?"), f"{plat.get('cores', '?')} cores"]
    if plat.get("cpu_model"):
        parts.append(str(plat["cpu_model"]))
    if result.emulated:
        how = plat.get("emulated")
        parts.append(f"EMULATED: {how}" if isinstance(how, str) else "EMULATED")
    return f"{name} [{', '.join(parts)}]"


def format_value(v: float, unit: str) -> str:
    if unit == "s":
        if v < 1e-3:
            return f"{v * 1e6:.1f} us"
        if v < 1:
            return f"{v * 1e3:.2f} ms"
        return f"{v:.3f} s"
    if unit == "bytes":
        if v >= 1 << 20:
            return f"{v / (1 << 20):.1f} MiB"
        return f"{v / 1024:.1f} KiB" if v >= 1024 else f"{v:.0f} B"
    return f"{v:.4g} {unit}".strip()


def format_table(
    base: tuple[str, Result], others: Sequence[tuple[str, Result]], alpha: float = 0.05
) -> str:
    """A plain-text table: one block per other run, `*` marking significant differences."""
    lines = [f"baseline: {label(base[1], base[0])}"]
    for name, other in others:
        lines.append(f"vs {label(other, name)}")
        rows = compare(base[1], other)
        if not rows:
            lines.append("  (no series in common)")
            continue
        header = ("series", "base", "other", "ratio", "p", "")
        table = [header]
        for r in rows:
            bench, metric, labels = r.key
            desc = " ".join([f"{bench}.{metric}", *(f"{k}={v}" for k, v in labels)])
            table.append(
                (
                    desc,
                    f"{format_value(r.median_base, r.unit)} (n={r.n_base})",
                    f"{format_value(r.median_other, r.unit)} (n={r.n_other})",
                    f"{r.ratio:.2f}x" if r.ratio is not None else "-",
                    f"{r.p_value:.3g}" if r.p_value is not None else "n/a",
                    "*" if r.significant(alpha) else "",
                )
            )
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for row in table:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    if have_scipy():
        lines.append(
            f"* = significant (Mann-Whitney U, two-sided, p < {alpha}); "
            f"n/a = fewer than {MIN_SAMPLES} samples. Medians; ratio = other / base."
        )
    else:
        lines.append(f"Medians; ratio = other / base. No significance marks: {SCIPY_MISSING}.")
    pythons = {_interpreter(r) for _, r in (base, *others)} - {""}
    if len(pythons) > 1:
        lines.append(
            f"The runs used different Python interpreters ({', '.join(sorted(pythons))}): "
            "the same version built differently runs netplane's code at different speeds."
        )
    if any(r.emulated for _, r in (base, *others)):
        lines.append(
            "EMULATED runs ran under qemu-user or on a whole emulated machine (qemu-system): "
            "their figures are not hardware figures (bench/README.md)."
        )
    return "\n".join(lines)


def _interpreter(result: Result) -> str:
    """`version executable`, or "" for results written before the executable was recorded."""
    exe = result.platform.get("python_executable")
    return f"{result.platform.get('python', '?')} {exe}" if exe else ""


def median_by(result: Result, metric: str) -> Mapping[tuple[tuple[str, str], ...], float]:
    """Median of each series of METRIC, keyed by its labels (plots use this)."""
    return {
        series_key(result.benchmark, s)[2]: statistics.median(s.values)
        for s in result.series
        if s.metric == metric and s.values
    }


def format_summary(name: str, result: Result, column: str = "impl") -> str:
    """One run on its own: the median (and sample count) of every series, with the values
    of the COLUMN label side by side (for the proxy-peers run: netplane beside kube-proxy)."""
    columns: list[str] = []
    rows: dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, Series]] = {}
    for s in result.series:
        if not s.values:
            continue
        col = str(s.labels.get(column, "value"))
        if col not in columns:
            columns.append(col)
        rest = tuple((k, str(v)) for k, v in s.labels.items() if k != column)
        rows.setdefault((s.metric, rest), {})[col] = s
    table = [("series", *columns)]
    for (metric, rest), cells in rows.items():
        desc = " ".join([metric, *(f"{k}={v}" for k, v in rest)])
        table.append(
            (
                desc,
                *(_cell(cells[c]) if c in cells else "-" for c in columns),
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = [f"{label(result, name)}: {result.benchmark}, medians"]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in table]
    for sk in result.skipped:
        lines.append(f"  skipped {sk.what}: {sk.reason.splitlines()[0] if sk.reason else ''}")
    return "\n".join(lines)


def _cell(s: Series) -> str:
    median = format_value(statistics.median(s.values), s.unit)
    if len(s.values) == 1:
        return median
    ordered = sorted(s.values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return f"{median} (p90 {format_value(p90, s.unit)}, n={len(s.values)})"
