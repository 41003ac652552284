"""The answering function under a coverage-guided fuzzer (atheris), and its found cases.

A crash, an unparsable reply or a reply that does not match its question fails the test
(fuzz_engine.check). New cases the fuzzer finds are printed; add them to fuzz_corpus/.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
CORPUS = HERE / "fuzz_corpus"
FUZZ_SECONDS = int(os.environ.get("NETPLANE_FUZZ_SECONDS", "20"))


def _harness():
    spec = importlib.util.spec_from_file_location("fuzz_engine", HERE / "fuzz_engine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_kept_case_gets_a_matching_reply():
    harness = _harness()
    engine = harness.build()
    cases = sorted(CORPUS.iterdir())
    assert len(cases) > 50
    for case in cases:
        harness.check(engine, case.read_bytes())


@pytest.mark.slow
def test_fuzz_the_answering_function(tmp_path):
    pytest.importorskip("atheris")
    found = tmp_path / "found"
    found.mkdir()
    proc = subprocess.run(
        [sys.executable, str(HERE / "fuzz_engine.py"), f"-max_total_time={FUZZ_SECONDS}",
         "-rss_limit_mb=2048", "-timeout=10", f"-artifact_prefix={tmp_path}/",
         str(found), str(CORPUS)],
        capture_output=True, text=True, cwd=tmp_path, timeout=FUZZ_SECONDS + 120,
    )  # fmt: skip
    crashes = [p for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-"))]
    detail = "\n".join(f"{p.name}: {base64.b64encode(p.read_bytes()).decode()}" for p in crashes)
    assert proc.returncode == 0 and not crashes, f"{detail}\n{proc.stderr[-3000:]}"
    runs = [line for line in proc.stderr.splitlines() if line.startswith("Done ")]
    print(runs, f"{len(list(found.iterdir()))} new inputs")
