"""`netplane bench` commands that need no kernel: compute, compare, plug-ins, scripts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from netplane.bench._results import Series, load_result, new_result, write_result
from netplane.cli import cli

REPO = Path(__file__).resolve().parents[2]


def _invoke(*args):
    return CliRunner().invoke(cli, ["bench", *args], catch_exceptions=False)


def test_compute_quick_writes_a_valid_result(tmp_path):
    result = _invoke("compute", "--quick", "--output-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    (path,) = tmp_path.glob("compute-*.json")
    r = load_result(path)
    assert r.benchmark == "compute" and r.parameters["quick"] is True
    metrics = {s.metric for s in r.series}
    assert "apply_pop" in metrics
    # the renderer's figures are there once it exists, otherwise the skip says why
    assert "render_full" in metrics or any(s.what == "render" for s in r.skipped)
    assert all(len(s.values) >= 3 for s in r.series)


def test_compare_prints_a_table_and_plots(tmp_path):
    files = []
    for mu in (0.1, 0.3):
        series = [
            Series(
                "latency",
                "s",
                {
                    "backend": "legacy",
                    "services": s,
                    "endpoints": 1,
                    "change": "add-service",
                    "impl": "netplane",
                },
                tuple(mu * s / 100 + i * 1e-4 for i in range(8)),
            )
            for s in (100, 1000)
        ]
        files.append(write_result(new_result("sync", {}, series), tmp_path))
    plots = tmp_path / "plots"
    result = _invoke("compare", *map(str, files), "--plot-dir", str(plots))
    assert result.exit_code == 0, result.output
    assert "3.00x" in result.output and "*" in result.output
    assert (plots / "sync-add-service.png").read_bytes().startswith(b"\x89PNG")


def test_compare_rejects_a_bad_file_clearly(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"schema": "other"}))
    result = CliRunner().invoke(cli, ["bench", "compare", str(bad), str(bad)])
    assert result.exit_code == 1
    assert "x.json: not a netplane benchmark result" in result.output


def test_missing_benchmark_module_is_reported_not_crashed(monkeypatch):
    import netplane.bench.cli as bench_cli

    def missing(module, what):
        raise bench_cli.click.ClickException(f"{what} is not available yet ({module} is missing)")

    monkeypatch.setattr(bench_cli, "_import", missing)
    result = CliRunner().invoke(cli, ["bench", "dns", "--quick"])
    assert result.exit_code == 1 and "not available yet" in result.output


def test_dns_services_go_to_the_peer_benchmark_only(monkeypatch, tmp_path):
    import netplane.bench.cli as bench_cli

    calls = []

    class Peers:
        @staticmethod
        def run(**options):
            calls.append(options)
            return {"series": []}

    monkeypatch.setattr(bench_cli, "_import", lambda module, what: Peers)
    out = str(tmp_path)
    result = _invoke("dns", "--peer", "coredns", "--services", "2000", "--output-dir", out)
    assert result.exit_code == 0, result.output
    assert calls == [{"quick": False, "peer": "coredns", "services": 2000}]
    result = CliRunner().invoke(cli, ["bench", "dns", "--services", "2000"])
    assert result.exit_code == 2 and "--services needs --peer" in result.output
    assert len(calls) == 1


def test_plugged_results_keep_their_data(tmp_path):
    from netplane.bench.cli import _plugged

    r = _plugged("dns", {"qps": [1, 2], "series": [{"metric": "qps", "values": [1, 2]}]}, True)
    assert r.parameters == {"quick": True, "data": {"qps": [1, 2]}}
    assert r.series[0].values == (1, 2)
    assert load_result(write_result(r, tmp_path)).benchmark == "dns"


def test_bench_is_registered_lazily():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, netplane.cli; print('netplane.bench.sync' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("command", ["dns", "cni", "proxy-sync"])
def test_plugged_benchmarks_skip_under_emulation(command, tmp_path, monkeypatch):
    monkeypatch.setenv("NETPLANE_BENCH_EMULATED", "qemu-user")
    result = _invoke(command, "--quick", "--output-dir", str(tmp_path))
    assert result.exit_code == 0 and "needs network namespaces" in result.output
    (path,) = tmp_path.glob(f"{command}-*-emulated.json")
    assert load_result(path).skipped[0].what == command
