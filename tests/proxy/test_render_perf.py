"""The renderer at 2,000 services: exact rule count, and the per-service memo is really used."""

from __future__ import annotations

from netplane.bench.render_cost import build
from netplane.proxy import render as R


def test_render_scales_and_memo_pays():
    snap = build(2000)
    cfg = R.ProxyConfig(node_name="n1", cluster_cidr="10.0.0.0/8")
    text = R.render_full(snap, cfg)
    assert sum(1 for x in text.splitlines() if x.startswith("-A")) == 2000 * 17 + 8
    first = [R.render_service(snap, k, cfg) for k in sorted(snap.services)]
    again = [R.render_service(snap, k, cfg) for k in sorted(snap.services)]
    assert all(a is b for a, b in zip(first, again, strict=True))  # served from the memo
