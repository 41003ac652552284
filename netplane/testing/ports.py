"""Ports for the servers that tests and benchmarks start and then poll until they listen."""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 20_000  # above the fixed ports the control plane and the kubelet use


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32_768, 60_999  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP on HOST and outside the kernel's ephemeral range.

    A port from bind(0) is one the kernel also hands out as a connect's source port: a
    poll that connects to 127.0.0.1:P before the server has bound P can get P as its
    own source port and connect to itself (TCP simultaneous open). It then reads its
    own request back as the reply (http.client: BadStatusLine "GET /ready HTTP/1.1"),
    and while that socket lives the server cannot bind P. No connect picks a port
    outside the ephemeral range."""
    low, high = _ephemeral_range()
    spans = [(LOWEST, low - 1), (high + 1, 65_535)]
    candidates = [span for span in spans if span[1] - span[0] >= 1_000]
    if not candidates:
        raise RuntimeError(f"the ephemeral port range {low}-{high} leaves no room for servers")
    for _ in range(100):
        port = random.randint(*random.choice(candidates))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
            try:
                u.bind((host, port))
                t.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on {host} outside the ephemeral range {low}-{high}")
