"""Faults for the nftables backend on the real kernel: transactions that fail, a stop or a
SIGTERM during a full sync. A full sync is one transaction, so a stop leaves either the
old objects or all the new ones."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from netplane import netns
from netplane.proxy.backend import SyncInterrupted
from netplane.proxy.daemon import SyncLoop
from netplane.proxy.metrics import Metrics
from netplane.proxy.nft._netlink import Netlink
from netplane.proxy.nft.sync import NftSyncer
from netplane.state import ClusterState
from netplane.testing.lab import wait_for
from netplane.testing.netlink import RecordingNetlink

from .test_sync_faults_netns import CONFIG, NETPLANE, QuietWindow, manifest, objects

pytestmark = [pytest.mark.slow, pytest.mark.root]


@pytest.fixture
def ns():
    name = netns.create(netns.unique_name("npnftf"))
    try:
        yield name
    finally:
        netns.delete(name)


def service_chains(ns: str) -> int:
    """Service chains in the namespace's tables (`nft list chains`)."""
    listing = netns.run(ns, ["nft", "list", "chains"])
    return sum(1 for line in listing.splitlines() if "chain service-" in line and "/" in line)


def test_converges_when_every_third_transaction_fails(ns: str) -> None:
    state = ClusterState()
    tracker = state.tracker()
    state.apply(objects(300))
    state.mark_synced()
    netlink = RecordingNetlink(ns, fail_every=3)
    metrics = Metrics()
    syncer = NftSyncer(CONFIG, netlink)
    loop = SyncLoop(state, tracker, syncer, metrics, "node-a", min_sync_period=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: syncer.in_sync, 60, interval=0.1, what="the first sync")
        for i in range(12):  # changes keep coming; some of their transactions fail
            state.apply(objects(300, 5 + i % 3)[2 * i : 2 * i + 2])
            time.sleep(0.15)
        wait_for(lambda: syncer.in_sync and not tracker.pending(), 60, interval=0.1,
                 what="convergence")  # fmt: skip
    finally:
        stop.set()
        thread.join(30)
    assert netlink.refused >= 2 and metrics.nft_failures._value.get() == netlink.refused
    fresh = NftSyncer(CONFIG, RecordingNetlink(ns))
    assert fresh.sync(state.snapshot(), None).restores == 0  # already exactly right


def test_stop_during_a_full_sync_writes_nothing_or_everything(ns: str) -> None:
    state = ClusterState()
    state.apply(objects(3000))
    stop = threading.Event()
    stop.set()  # SIGTERM came in before the render was through
    with pytest.raises(SyncInterrupted):
        NftSyncer(CONFIG, Netlink(ns)).sync(state.snapshot(), stop=stop)
    assert netns.run(ns, ["nft", "list", "tables"]) == ""
    NftSyncer(CONFIG, Netlink(ns)).sync(state.snapshot())
    assert service_chains(ns) == 3000


def test_sigterm_during_a_full_sync_exits_at_once(ns: str, tmp_path: Path) -> None:
    (tmp_path / "all.yaml").write_text(manifest(3000))
    log = tmp_path / "daemon.log"
    argv = [NETPLANE, "-v", "proxy", "run", "--manifests", str(tmp_path), "--node", "node-a",
            "--backend", "nftables", "--metrics-addr", "127.0.0.1:10249",
            "--healthz-addr", "127.0.0.1:10256"]  # fmt: skip
    with log.open("w") as out:
        proc = netns.popen(ns, argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "proxy for node" in log.read_text(), 60, interval=0.02,
                 what="the daemon running")  # fmt: skip
        time.sleep(0.3)  # the manifests are being read and rendered
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        assert proc.wait(30) == 0
        print(f"exit {time.monotonic() - sent:.2f} s after SIGTERM")
    finally:
        netns.stop(proc)
    assert "Traceback" not in log.read_text()
    assert service_chains(ns) in (0, 3000)  # one transaction: nothing or everything


def test_flush_inside_the_quiet_window_is_repaired_at_once(
    ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Foreign tables (a CNI plugin's, harmless) open the quiet window; `nft flush ruleset`
    and then deleting our table inside it are each repaired within the bound here, not
    when the window ends: the sentinel sees our table or base chains gone."""
    syncer = NftSyncer(CONFIG, Netlink(ns))
    with QuietWindow(syncer, monkeypatch) as quiet:
        quiet.open(lambda i: netns.run(ns, ["nft", "add", "table", "ip", f"cni-{i}"]))
        [table] = syncer.tables()
        for damage in (["flush", "ruleset"], ["delete", "table", "ip", table]):
            netns.run(ns, ["nft", *damage])
            wait_for(lambda: service_chains(ns) >= 50, 30, interval=0.1,
                     what=f"the repair after nft {' '.join(damage)}")  # fmt: skip
    assert syncer.verify().drift == ()
