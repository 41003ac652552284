"""`netplane demo`: the proxy's public entry point (daemon.make_backend) programs a node
namespace it enters, with either backend; nothing is left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.root]
NETPLANE = str(Path(sys.executable).with_name("netplane"))


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_demo_balances_over_three_pods_and_cleans_up(backend: str) -> None:
    before = _namespaces()
    proc = subprocess.run([NETPLANE, "demo", "--requests", "12", "--backend", backend],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"proxy sync ({backend}," in proc.stdout
    answered = [line.split()[0] for line in proc.stdout.splitlines() if "%" in line]
    assert set(answered) <= {"hello-1", "hello-2", "hello-3"} and len(answered) >= 2
    assert not {n for n in _namespaces() - before if n.startswith("npdemo")}
