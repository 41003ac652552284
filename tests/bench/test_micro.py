"""Micro-benchmarks of netplane's pure parts (pytest-benchmark); see bench/README.md.

A realistic mid-size cluster: 1000 services x 10 endpoints. Run for figures with
    .venv/bin/pytest tests/bench/test_micro.py --benchmark-only
and against the saved baseline with --benchmark-storage=file://bench/baselines
--benchmark-compare.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

import pytest

from netplane.bench import _workload as w
from netplane.state import ClusterState

SERVICES, ENDPOINTS = 1000, 10
KEY = (w.NAMESPACE, w.service_name(SERVICES // 2))


@pytest.fixture(scope="module")
def cluster():
    state = ClusterState()
    state.apply(w.objects(w.cluster_docs(SERVICES, ENDPOINTS)))
    state.mark_synced()
    return state


@pytest.fixture(scope="module")
def proxy_config():
    render = pytest.importorskip("netplane.proxy.render", reason="the renderer is not there yet")
    return render.ProxyConfig(node_name="bench-node", cluster_cidr=str(w.POD_NET))


def _fresh_slices(snap):
    """The same snapshot with a new (equal) slices tuple for KEY: the renderer's per-service
    memo keys on identity, so this forces a real render."""
    slices = dict(snap.slices)
    slices[KEY] = tuple(list(slices[KEY]))
    return dataclasses.replace(snap, slices=MappingProxyType(slices))


@pytest.mark.benchmark(group="render")
def test_render_service(benchmark, cluster, proxy_config):
    from netplane.proxy.render import render_service

    snaps = [_fresh_slices(cluster.snapshot()) for _ in range(2)]
    turn = iter(range(10**9))
    rules = benchmark(lambda: render_service(snaps[next(turn) % 2], KEY, proxy_config))
    assert len(rules.nat_chains) == 1 + ENDPOINTS  # SVC + one SEP per endpoint


@pytest.mark.benchmark(group="render")
def test_render_service_unchanged(benchmark, cluster, proxy_config):
    from netplane.proxy.render import render_service

    snap = cluster.snapshot()
    assert benchmark(render_service, snap, KEY, proxy_config).nat_chains


@pytest.mark.benchmark(group="render")
def test_render_full(benchmark, cluster, proxy_config):
    """The whole ruleset, as a periodic full resync renders it (per-service memo warm)."""
    from netplane.proxy.render import render_full

    text = benchmark(render_full, cluster.snapshot(), proxy_config)
    assert text.count("-j DNAT") == SERVICES * ENDPOINTS


@pytest.mark.benchmark(group="state")
def test_apply_and_pop_one_endpoint_change(benchmark, cluster):
    tracker = cluster.tracker()
    slices = [w.objects([w.service_docs(7, ENDPOINTS, ready=r)[1]])[0] for r in (True, False)]
    flip = iter(range(1, 10**9))  # starts with a real change

    def change():
        cluster.apply([slices[next(flip) % 2]])
        return tracker.pop()

    changes = benchmark(change)
    assert changes.endpoints == {(w.NAMESPACE, w.service_name(7))}


@pytest.fixture(scope="module")
def dns_index(cluster):
    catalog = pytest.importorskip("netplane.dns.catalog", reason="netplane.dns is not there yet")
    records = pytest.importorskip("netplane.dns.records")
    return catalog.build_catalog(cluster.snapshot(), records.ZoneConfig(), 1)


@pytest.mark.benchmark(group="dns")
def test_dns_build_index(benchmark, cluster):
    catalog = pytest.importorskip("netplane.dns.catalog", reason="netplane.dns is not there yet")
    records = pytest.importorskip("netplane.dns.records")
    index = benchmark(catalog.build_catalog, cluster.snapshot(), records.ZoneConfig(), 1)
    assert index.get(f"{w.service_name(3)}.{w.NAMESPACE}.svc.cluster.local")


@pytest.mark.benchmark(group="dns")
@pytest.mark.parametrize(
    "name", ["svc-00500.bench.svc.cluster.local", "nope.bench.svc.cluster.local"]
)
def test_dns_answer(benchmark, dns_index, name):
    answer = pytest.importorskip("netplane.dns.answer", reason="netplane.dns is not there yet")
    result = benchmark(answer.resolve, dns_index, name, 1)
    assert result.rcode == (0 if name.startswith("svc") else 3)
