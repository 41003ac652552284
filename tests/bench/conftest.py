"""Micro-benchmarks run once each (as plain tests) unless a benchmark run is asked for.

Asked for means any of --benchmark-only/-enable/-save/-autosave/-json/-compare: then
pytest-benchmark calibrates and repeats them as usual. This keeps `pytest tests` fast.
"""

from __future__ import annotations

_ASKING = ("benchmark_only", "benchmark_enable", "benchmark_save", "benchmark_autosave",
           "benchmark_json", "benchmark_compare")  # fmt: skip


def pytest_collection_modifyitems(config, items):
    session = getattr(config, "_benchmarksession", None)
    if session is not None and not any(config.getoption(o, None) for o in _ASKING):
        session.disabled = True


def pytest_benchmark_update_machine_info(config, machine_info):
    """Saved micro-benchmark files carry the same platform block (and EMULATED flag) as
    `netplane bench` results, so an emulated baseline can never pass for hardware."""
    from netplane.bench._results import platform_info

    info = platform_info()
    machine_info["netplane_platform"] = info
    machine_info["emulated"] = bool(info["emulated"])
