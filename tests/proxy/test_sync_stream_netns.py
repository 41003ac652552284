"""Streamed full syncs against the real kernel, both variants, in scratch namespaces.

A one-call full sync renders while iptables-restore parses (`Iptables.restore_stream`).
These check that the result is what one restore of the same rules gives, that a restarted
syncer changes nothing, and that failures commit nothing and leave the syncer's
bookkeeping whole.
"""

from __future__ import annotations

import re

import pytest

from netplane import netns
from netplane.model import Endpoint, EndpointPort, EndpointSlice, Service, ServicePort
from netplane.proxy import _plan
from netplane.proxy._iptables import Iptables, RestoreError
from netplane.proxy.render import TOP_LEVEL_CHAINS, ProxyConfig
from netplane.proxy.sync import STREAM_BATCH, Syncer, SyncError
from netplane.state import ClusterState

pytestmark = [pytest.mark.slow, pytest.mark.root]

CONFIG = ProxyConfig("node-a", cluster_cidr="10.244.0.0/16")
SERVICES = STREAM_BATCH * 2 + 17  # several pieces, the last one partial


@pytest.fixture(params=["legacy", "nft"])
def ipt(request):
    ns = netns.create(netns.unique_name("npprxs"))
    try:
        yield Iptables(request.param, "ipv4", ns)
    finally:
        netns.delete(ns)


def state(services: int = SERVICES) -> ClusterState:
    st = ClusterState()
    objs: list = []
    for i in range(services):
        name = f"svc-{i}"
        port = ServicePort(80, "TCP", "http", 8080)
        objs.append(Service("ns", name, cluster_ips=(f"10.96.{i // 250}.{i % 250 + 1}",),
                            ports=(port,)))  # fmt: skip
        eps = tuple(Endpoint((f"10.244.{i // 100}.{i % 100 * 2 + k + 1}",)) for k in range(2))
        objs.append(EndpointSlice("ns", f"{name}-1", name, endpoints=eps,
                                  ports=(EndpointPort(8080, "TCP", "http"),)))  # fmt: skip
    st.apply(objs)
    return st


def rules_per_chain(dump: str) -> dict[str, dict[str, int]]:
    saved = _plan.parse_save(dump)
    out: dict[str, dict[str, int]] = {}
    for table in ("nat", "filter"):
        counts = dict.fromkeys(saved.chains.get(table, ()), 0)
        for line in saved.rules.get(table, ()):
            counts[line.split()[1]] += 1
        out[table] = {c: n for c, n in counts.items() if c.startswith("KUBE-")}
    return out


def without_comments(dump: str) -> str:
    return "\n".join(line for line in dump.splitlines() if not line.startswith("#"))


def test_streamed_full_sync_is_what_was_rendered(ipt: Iptables) -> None:
    st = state()
    syncer = Syncer(CONFIG, ipt, chunk=0)  # nft too: one streamed call
    result = syncer.sync(st.snapshot())
    assert result.full and result.restores == 1 and result.bytes > 100_000
    want = {t: {c: len(lines) for c, lines in chains.items()}
            for t, chains in syncer.applied.items()}  # fmt: skip
    dump = ipt.save()
    assert rules_per_chain(dump) == want
    assert len([c for c in want["nat"] if c.startswith("KUBE-SVC-")]) == SERVICES
    assert "-j KUBE-SERVICES" in dump and ":KUBE-PROXY-CANARY" in ipt.save("mangle")
    # a restarted syncer's streamed full sync changes nothing a save could show
    Syncer(CONFIG, ipt, chunk=0).sync(st.snapshot())
    assert without_comments(ipt.save()) == without_comments(dump)


def test_failed_stream_reports_the_line_and_commits_nothing(ipt: Iptables) -> None:
    def pieces():
        yield "*nat\n:KUBE-SVC-TEST - [0:0]\n"
        yield "-A KUBE-SVC-TEST -j KUBE-NO-SUCH-CHAIN\n"
        for i in range(2000):  # far more than a pipe holds: the writer meets a closed pipe
            yield f"-A KUBE-SVC-TEST -d 10.1.{i // 250}.{i % 250}/32 -j RETURN\n" * 20
        yield "COMMIT\n"

    with pytest.raises(RestoreError) as failure:
        ipt.restore_stream(pieces())
    # legacy stops at the bad line; nft finds the missing chain at COMMIT (line 40004)
    assert failure.value.line in (3, 3 + 2000 * 20 + 1), failure.value
    assert "KUBE-NO-SUCH-CHAIN" in str(failure.value)
    assert "KUBE-SVC-TEST" not in ipt.save()


def test_failed_streamed_sync_renders_everything_and_recovers(ipt: Iptables, monkeypatch) -> None:
    st = state()
    tracker = st.tracker()
    syncer = Syncer(CONFIG, ipt, chunk=0)
    # the first piece declares a chain name longer than iptables allows: restore fails
    # at once, while most services are still to be rendered
    head = {"nat": (*TOP_LEVEL_CHAINS["nat"], "KUBE-" + "X" * 40)}
    monkeypatch.setattr("netplane.proxy.sync.TOP_LEVEL_CHAINS", head)
    with pytest.raises(SyncError) as failure:
        syncer.sync(st.snapshot(), tracker.pop())
    assert not failure.value.partial and syncer.needs_full and not syncer.in_sync
    assert "KUBE-SVC-" not in ipt.save()  # the nat transaction never committed
    monkeypatch.undo()
    # the changes were taken by the failed sync: the retry must still write every service
    result = syncer.sync(st.snapshot(), tracker.pop())
    assert result.full and len(result.keys) == SERVICES
    svc = re.findall(r"^:KUBE-SVC-", ipt.save(), re.M)
    assert len(svc) == SERVICES
