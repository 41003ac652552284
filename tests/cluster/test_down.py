"""`netplane down` leaves the host exactly as it found it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from netplane import netns

pytestmark = pytest.mark.slow


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def processes_mentioning(marker: str) -> list[str]:
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmd:
                found.append(cmd)
    return found


def test_down_removes_everything_up_made(make_lab, tmp_path):
    links = root_links()
    etc_netns = sorted(Path("/etc/netns").iterdir()) if Path("/etc/netns").is_dir() else None
    manifest = tmp_path / "web.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\n"
        "spec: {containers: [{name: web, image: nginx}]}\n"
    )
    lab = make_lab("--nodes", "1", "-f", str(manifest))  # up waits for web to be ready
    cluster_id = lab.id
    assert [p["metadata"]["name"] for p in lab.pods()] == ["web"]
    assert len(netns.names(f"{cluster_id}-")) == 6  # underlay, node, laptop, 2 DNS, web
    assert processes_mentioning(str(lab.state))
    assert "Deleted 6 network namespaces" in lab.np("down")
    assert netns.names(f"{cluster_id}-") == []
    assert root_links() <= links  # nothing added to the root namespace
    assert processes_mentioning(str(lab.state)) == []
    assert not lab.state.exists()
    after = sorted(Path("/etc/netns").iterdir()) if Path("/etc/netns").is_dir() else None
    assert [p for p in after or [] if p.name.startswith(cluster_id)] == []
    assert (after is None) == (etc_netns is None) or after == etc_netns
