"""The probe server: answers, bad requests, and a slow client that holds nothing up."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import pytest

from netplane.dns import probes
from netplane.dns.probes import ProbeServer


def ask(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(raw)
        out = b""
        while chunk := s.recv(4096):
            out += chunk
        return out


@pytest.fixture
def server():
    state = {"ready": False}

    def respond(path: str) -> tuple[int, bytes, str]:
        if path == "/boom":
            raise RuntimeError("boom")
        if path != "/ready":
            return 404, b"not found", "text/plain"
        return (200, b"OK", "text/plain") if state["ready"] else (503, b"not yet", "text/plain")

    srv = ProbeServer(("127.0.0.1", 0), respond)
    port = srv.address[1]
    yield port, state
    srv.shutdown()


def test_answers_like_an_http_server(server):
    port, state = server
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2)
    assert e.value.code == 503 and e.value.read() == b"not yet"
    state["ready"] = True
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready?x=1", timeout=2) as r:
        assert (r.status, r.read(), r.headers["Content-Type"]) == (200, b"OK", "text/plain")
    assert ask(port, b"HEAD /ready HTTP/1.1\r\nHost: x\r\n\r\n").endswith(b"\r\n\r\n")
    assert ask(port, b"GET /other HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.0 404 ")
    assert ask(port, b"POST /ready HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.0 405 ")
    assert ask(port, b"nonsense\r\n\r\n").startswith(b"HTTP/1.0 400 ")
    assert ask(port, b"GET /boom HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 500 ")


def test_a_slow_client_holds_nothing_up_and_is_dropped(server, monkeypatch):
    port, state = server
    state["ready"] = True
    monkeypatch.setattr(probes, "REQUEST_DEADLINE", 0.5)
    with socket.create_connection(("127.0.0.1", port)) as slow:
        slow.sendall(b"GET /rea")  # and nothing more
        for _ in range(5):
            assert ask(port, b"GET /ready HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 200 ")
        slow.settimeout(3)
        t = time.monotonic()
        assert slow.recv(100) == b""  # closed at its deadline, unanswered
        assert time.monotonic() - t < 2.5
