"""`netplane bench compare` on a plain install: no scipy, no matplotlib (the `bench` extra).

Run in a subprocess whose import system refuses both packages, as a fresh
`pip install netplane` would be."""

from __future__ import annotations

import subprocess
import sys

from netplane.bench._results import Series, new_result, write_result

WITHOUT_BENCH_EXTRA = """
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("scipy", "matplotlib"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Refuse())
from netplane.cli import main
main()
"""


def _netplane(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_BENCH_EXTRA, *args],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip


def _files(tmp_path):
    files = []
    for mu in (0.1, 0.3):
        series = [
            Series("endpoint_change", "s", {"impl": impl, "services": 1000}, (mu, mu * 1.1, mu * 2))
            for impl in ("netplane", "kube-proxy-iptables")
        ]
        files.append(write_result(new_result("proxy-peers", {}, series), tmp_path))
    return files


def test_compare_without_scipy_prints_medians_and_says_what_to_install(tmp_path):
    a, b = _files(tmp_path)
    done = _netplane(tmp_path, "bench", "compare", str(a), str(b))
    assert done.returncode == 0, done.stderr
    assert "3.00x" in done.stdout
    assert "pip install 'netplane[bench]'" in done.stdout and "scipy" in done.stdout
    assert "Traceback" not in done.stderr


def test_one_file_shows_contenders_side_by_side(tmp_path):
    a, _ = _files(tmp_path)
    done = _netplane(tmp_path, "bench", "compare", str(a))
    assert done.returncode == 0, done.stderr
    header = next(line for line in done.stdout.splitlines() if "series" in line)
    assert "netplane" in header and "kube-proxy-iptables" in header
    row = next(line for line in done.stdout.splitlines() if "endpoint_change" in line)
    assert row.count("110.00 ms") == 2 and "n=3" in row


def test_plots_without_matplotlib_say_what_to_install(tmp_path):
    a, _ = _files(tmp_path)
    done = _netplane(tmp_path, "bench", "compare", str(a), "--plot-dir", str(tmp_path / "p"))
    assert done.returncode == 1
    assert "pip install 'netplane[bench]'" in done.stderr and "matplotlib" in done.stderr
    assert "Traceback" not in done.stderr
