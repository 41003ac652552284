"""Plots are written as valid PNG files."""

from __future__ import annotations

from netplane.bench._results import Result, Series
from netplane.bench.plots import all_plots

PNG = b"\x89PNG\r\n\x1a\n"


def _series(metric, values, **labels):
    return Series(metric, "s", labels, tuple(values))


def test_sync_and_dataplane_plots_are_pngs(tmp_path):
    sync = Result(
        "sync",
        {},
        tuple(
            _series(
                metric,
                [0.01 * s / 100, 0.012 * s / 100],
                backend=b,
                services=s,
                endpoints=1,
                change="add-service",
                impl=impl,
            )
            for b in ("legacy", "nft")
            for s in (100, 1000)
            for metric, impl in (("latency", "netplane"), ("restore", "floor"))
        ),
        platform={"emulated": None},
    )
    dataplane = Result(
        "dataplane",
        {},
        tuple(
            _series("first_packet", [3e-5, 4e-5], backend="legacy", services=s, target=t)
            for s in (10, 100)
            for t in ("first", "last")
        ),
        platform={"emulated": "qemu-user"},
    )
    paths = all_plots([("s.json", sync), ("d.json", dataplane)], tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["dataplane-first-packet.png", "sync-add-service.png"]
    for p in paths:
        data = p.read_bytes()
        assert data.startswith(PNG) and len(data) > 1000


def test_nothing_to_plot_writes_nothing(tmp_path):
    assert all_plots([("x", Result("compute", {}, ()))], tmp_path) == []
    assert list(tmp_path.iterdir()) == []
