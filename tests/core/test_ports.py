"""Server ports for tests and benchmarks: never one a connect could take as its source."""

import socket
from pathlib import Path

import pytest

from netplane.testing import ports


def test_free_port_is_outside_the_ephemeral_range_and_free_for_tcp_and_udp() -> None:
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    for _ in range(20):
        port = ports.free_port("127.0.0.1")
        assert not low <= port <= high and port >= ports.LOWEST
        with socket.socket() as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            t.bind(("127.0.0.1", port))
            u.bind(("127.0.0.1", port))


def test_a_range_that_leaves_no_room_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "_ephemeral_range", lambda: (1_024, 65_000))
    with pytest.raises(RuntimeError, match="leaves no room"):
        ports.free_port()
