"""netplane installs its components under `netplane.*` and never shadows popular packages."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(code: str, cwd: Path, env: dict | None = None) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout


def test_dnspython_still_owns_dns(tmp_path):
    out = _run(
        "import dns.resolver, dns.message, netplane.dns, netplane.proxy, netplane.cni\n"
        "print(dns.__file__); print(netplane.dns.__file__)",
        cwd=tmp_path,
    )
    dnspython, ours = out.split()
    assert "site-packages" in dnspython and not dnspython.startswith(str(REPO / "dns"))
    assert Path(ours).parent.name in ("dns", "netplane")


@pytest.mark.slow
def test_wheel_installs_components_under_netplane(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("netplane-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("netplane-")}
    assert tops == {"netplane"}, tops
    for component in ("proxy", "dns", "cni", "bench"):
        assert f"netplane/{component}/__init__.py" in names
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = _run(
        "import dns.resolver, netplane.dns; print(netplane.dns.__file__, dns.__file__)",
        cwd=tmp_path,
        env=env,
    )
    ours, dnspython = out.split()
    assert ours.startswith(str(target)) and not dnspython.startswith(str(target))
