"""compare: medians, ratios and the significance test on synthetic samples."""

from __future__ import annotations

import random

from netplane.bench._results import Result, Series
from netplane.bench.compare import compare, format_table, mann_whitney


def _run(values, emulated=False, python="", **labels):
    labels = labels or {"backend": "legacy", "services": 1000}
    platform = {"arch": "x86_64", "cores": 2, "emulated": "qemu-user" if emulated else None}
    if python:
        platform |= {"python": "3.11.2", "python_executable": python}
    return Result("sync", {}, (Series("latency", "s", labels, tuple(values)),), platform=platform)


def _normal(seed, mu, n=30):
    rng = random.Random(seed)
    return [rng.gauss(mu, 0.01) for _ in range(n)]


def test_a_clear_difference_is_significant():
    (row,) = compare(_run(_normal(1, 0.10)), _run(_normal(2, 0.20)))
    assert row.significant()
    assert 1.8 < row.ratio < 2.2
    assert row.n_base == row.n_other == 30


def test_identical_distributions_are_not():
    base = _normal(3, 0.10)
    (row,) = compare(_run(base), _run(list(base)))
    assert not row.significant() and row.ratio == 1.0
    (row,) = compare(_run(_normal(4, 0.10)), _run(_normal(5, 0.10)))
    assert not row.significant(alpha=0.001)


def test_constant_samples_and_too_few_samples():
    assert mann_whitney([1.0] * 5, [1.0] * 5) == 1.0
    assert mann_whitney([1.0, 2.0], [3.0, 4.0]) is None
    (row,) = compare(_run([0.1, 0.1]), _run([0.9, 0.9]))
    assert row.p_value is None and not row.significant()


def test_only_matching_series_are_compared():
    assert compare(_run([1, 2, 3], services=100), _run([1, 2, 3], services=1000)) == []


def test_table_marks_significance_and_emulation():
    text = format_table(
        ("a.json", _run(_normal(1, 0.1))), [("b.json", _run(_normal(2, 0.2), True))]
    )
    assert "a.json" in text and "b.json" in text
    assert "EMULATED" in text
    row = next(line for line in text.splitlines() if "sync.latency" in line)
    assert row.rstrip().endswith("*") and "x  " in row
    same = format_table(("a", _run([0.1] * 5)), [("b", _run([0.1] * 5))])
    row = next(line for line in same.splitlines() if "sync.latency" in line)
    assert not row.rstrip().endswith("*") and "EMULATED" not in same


def test_runs_on_different_interpreters_are_flagged():
    debian, pyenv = "/usr/bin/python3.11", "/root/.pyenv/versions/3.11.2/bin/python3.11"
    text = format_table(
        ("a", _run([0.1] * 5, python=debian)), [("b", _run([0.2] * 5, python=pyenv))]
    )
    assert "different Python interpreters" in text and pyenv in text
    for other in (debian, ""):  # the same one, or a result from before it was recorded
        text = format_table(
            ("a", _run([0.1] * 5, python=debian)), [("b", _run([0.2] * 5, python=other))]
        )
        assert "different Python" not in text
