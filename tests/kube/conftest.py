"""A fake API server on 127.0.0.1 (random port), a kubeconfig pointing at it, and a running
`KubeApiSource` that is always stopped, even when a test fails."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from netplane.kube import api_client
from netplane.kube.source import Backoff, KubeApiSource, Tuning
from netplane.kube.transport import HttpTransport, load_config
from netplane.sources import start_source
from netplane.state import ClusterState
from netplane.testing.fakeapi import FakeApiServer, write_kubeconfig

FAST = Tuning(
    page_size=50,
    watch_timeout=2,
    connect_timeout=1.0,
    list_timeout=5.0,
    backoff=Backoff(initial=0.05, maximum=0.4),
)


def _wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Poll a condition; tests assert on the outcome, never on how long it took."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def wait_until() -> Callable:
    return _wait_until


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    server = FakeApiServer(bookmark_interval=0.2).start()
    yield server
    server.stop()


@pytest.fixture
def kubeconfig(tmp_path, api: FakeApiServer) -> str:
    return write_kubeconfig(tmp_path / "kubeconfig", api.url)


@pytest.fixture(params=["client", "http"])
def run_source(kubeconfig: str, request: pytest.FixtureRequest):
    """Start a source for some kinds; returns (state, source). Each test runs with both
    transports: the official client's and `netplane.kube.transport` (what DNS uses)."""
    running: list[tuple[threading.Thread, threading.Event]] = []

    def start(kinds=frozenset({"Service", "EndpointSlice"}), tuning: Tuning = FAST):
        if request.param == "client":
            api = api_client(kubeconfig=kubeconfig)
        else:
            api = HttpTransport(load_config(kubeconfig))
        source = KubeApiSource(api, set(kinds), tuning)
        state = ClusterState()
        running.append(start_source(source, state))
        return state, source

    yield start
    for thread, stop in running:
        stop.set()
        thread.join(timeout=15)
        assert not thread.is_alive(), "the source did not stop"
