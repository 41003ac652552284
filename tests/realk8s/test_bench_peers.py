"""`netplane bench proxy-sync --peers`: a small run of netplane beside the real kube-proxy in
both modes on the session's API server (figures are the benchmark's job; this checks that
every contender is measured and that the host's global kernel settings stay as they were)."""

from __future__ import annotations

import pytest

from netplane.bench.proxy_peers import CONTENDERS, Plan, run
from netplane.testing import anchors
from netplane.testing.controlplane import ControlPlane

pytestmark = pytest.mark.slow


def test_every_contender_measured_and_host_sysctls_unchanged(
    shipped_rbac: ControlPlane,
) -> None:
    if not anchors.is_built("kube-proxy"):
        pytest.fail("kube-proxy is not built: run `netplane anchors build`", pytrace=False)
    plan = Plan.make(True, [60], ["kube-proxy-iptables", "kube-proxy-nftables"], 3)
    lines: list[str] = []
    params, series, skipped = run(plan, log=lines.append, cp=shipped_rbac)
    assert not skipped, skipped
    assert params["sysctl_changed"] == []
    measured = {(s.labels["impl"], s.metric): s.values for s in series}
    for name in ("netplane", "kube-proxy-iptables", "kube-proxy-nftables"):
        assert len(measured[(name, "endpoint_change")]) == 3
        for metric in ("full_sync", "cpu", "peak_rss", "sigterm_exit"):
            assert measured[(name, metric)][0] > 0, (name, metric)
    assert {p["contender"] for p in params["points"]} == set(plan.contenders)
    assert len(lines) == 1 + len(plan.contenders)


def test_contenders_are_named_and_checked() -> None:
    assert {"netplane", "kube-proxy-iptables", "kube-proxy-nftables"} <= set(CONTENDERS)
    with pytest.raises(ValueError, match="unknown peer"):
        Plan.make(False, [], ["kube-proxy-ipvs"], None)
    plan = Plan.make(False, [10000, 1000], ["kube-proxy-iptables"], None)
    assert plan.scales == (1000, 10000) and plan.contenders[0] == "netplane"
    assert plan.changes >= 20
