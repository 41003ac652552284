"""The namespace helper leaves nothing behind, also when the body fails."""

from __future__ import annotations

import subprocess

import pytest

from netplane.testing.lab import Lab, probe

pytestmark = [pytest.mark.root]


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_lab_builds_topology_and_cleans_up_on_error() -> None:
    created: list[str] = []
    with pytest.raises(RuntimeError, match="boom"), Lab() as lab:
        pod = lab.add_pod("pod-a", 10, serve_port=8080)
        client = lab.add_pod("client", 5)
        created = [lab.node, lab.external, pod.ns, client.ns]
        assert probe(client.ns, pod.ip, 8080) == [f"pod-a {client.ip}"]
        assert probe(client.ns, pod.ip, 8080, proto="udp") == [f"pod-a {client.ip}"]
        server = pod.server
        raise RuntimeError("boom")
    assert not set(created) & _namespaces()
    assert server.poll() is not None
