"""calibrate: fixed work whose ratio between two machines is their slowdown."""

from __future__ import annotations

import os
import shutil

import pytest
from click.testing import CliRunner

from netplane.bench import calibrate
from netplane.bench._results import load_result
from netplane.cli import cli


def test_the_ruleset_is_fixed_kube_proxy_layout():
    text = calibrate.ruleset(2, 3)
    assert text == calibrate.ruleset(2, 3)  # byte for byte, whatever the commit
    assert text.startswith("*nat\n") and text.endswith("COMMIT\n")
    assert text.count("-A KUBE-SERVICES ") == 2 and text.count("-j DNAT") == 6
    assert "--probability 0.3333333333" in text and "--probability 0.5000000000" in text
    assert len(calibrate.ruleset(1000, 5).splitlines()) > 16_000


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, iptables)")
def test_a_small_calibration_run_writes_every_kind_of_work(tmp_path, monkeypatch):
    for name, value in (("LOOP_ITERATIONS", 1000), ("HASH_BYTES", 2**20), ("SPAWNS", 2),
                        ("SERVICES", 20)):  # fmt: skip
        monkeypatch.setattr(calibrate, name, value)
    result = CliRunner().invoke(cli, ["bench", "calibrate", "--quick", "--output-dir",
                                      str(tmp_path)])  # fmt: skip
    assert result.exit_code == 0, result.output
    (path,) = tmp_path.glob("calibrate-*.json")
    r = load_result(path)
    metrics = {(s.metric, s.labels.get("variant")) for s in r.series}
    assert {("python_loop", None), ("sha256", None), ("spawn", None)} <= metrics
    for variant in ("legacy", "nft"):
        if shutil.which(f"iptables-{variant}-restore"):
            assert ("iptables_restore", variant) in metrics
    assert all(len(s.values) == 3 for s in r.series)
