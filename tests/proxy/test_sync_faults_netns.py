"""Faults on the real kernel: restores that fail, a stop in the middle of a full sync.

Each test owns a scratch namespace; failures are injected through the one fake runner
(`FakeIptables(real=...)`), which refuses calls before they reach the real tool, and the
kernel is then read back to check what it holds.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from netplane import netns
from netplane.model import Endpoint, EndpointPort, EndpointSlice, Service, ServicePort
from netplane.proxy import _plan, daemon
from netplane.proxy._iptables import Iptables
from netplane.proxy.backend import SyncInterrupted
from netplane.proxy.daemon import SyncLoop
from netplane.proxy.metrics import Metrics
from netplane.proxy.render import ProxyConfig
from netplane.proxy.sync import Syncer
from netplane.state import ClusterState
from netplane.testing.kernel import FakeIptables
from netplane.testing.lab import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.root]

CONFIG = ProxyConfig("node-a", cluster_cidr="10.244.0.0/16")
NETPLANE = str(Path(sys.executable).with_name("netplane"))


@pytest.fixture
def ns():
    name = netns.create(netns.unique_name("npprxf"))
    try:
        yield name
    finally:
        netns.delete(name)


def ip(n: int, base: int) -> str:
    return f"10.{base + n // 62500}.{n // 250 % 250}.{n % 250 + 1}"


def objects(services: int, endpoints: int = 5) -> list:
    objs: list = []
    for i in range(services):
        name = f"svc-{i}"
        objs.append(Service("ns", name, cluster_ips=(ip(i, 96),),
                            ports=(ServicePort(80, "TCP", "http", 8080),)))  # fmt: skip
        eps = tuple(Endpoint((ip(i * endpoints + k, 200),)) for k in range(endpoints))
        objs.append(EndpointSlice("ns", f"{name}-1", name, endpoints=eps,
                                  ports=(EndpointPort(8080, "TCP", "http"),)))  # fmt: skip
    return objs


def consistent(dump: str) -> None:
    """Every jump in the kernel leads to a chain that exists (what each transaction keeps)."""
    for table, chains in _plan.parse_chains(dump).items():
        for chain, lines in chains.items():
            for target in _plan.targets(lines):
                assert not target.startswith("KUBE-") or target in chains, (table, chain, target)


def test_chunked_full_sync_converges_when_every_third_restore_fails(ns: str) -> None:
    """1,000 services on the nft variant = 6 chunked restores: starting over after each
    failure would never get past the third; going on from the failed chunk converges."""
    state = ClusterState()
    tracker = state.tracker()
    state.apply(objects(1000))
    state.mark_synced()
    ipt = FakeIptables(real=Iptables("nft", "ipv4", ns), fail_every=3)
    metrics = Metrics()
    syncer = Syncer(CONFIG, ipt)
    loop = SyncLoop(state, tracker, syncer, metrics, "node-a", min_sync_period=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: syncer.in_sync, 120, interval=0.2, what="convergence")
    finally:
        stop.set()
        thread.join(30)
    assert ipt.refused >= 2 and metrics.failures._value.get() == ipt.refused
    committed = ipt.calls - ipt.refused
    assert committed <= 7, committed  # 6 transactions, each committed once (+1 of slack)
    assert syncer.verify().drift == ()  # the kernel holds exactly what was rendered
    dump = ipt.save()
    consistent(dump)
    assert len(re.findall(r"^:KUBE-SVC-", dump, re.M)) == 1000


@pytest.mark.parametrize("variant", ["legacy", "nft"])
def test_stop_during_a_full_sync_leaves_consistent_rules(ns: str, variant: str) -> None:
    state = ClusterState()
    state.apply(objects(600, 2))
    old = FakeIptables(real=Iptables(variant, "ipv4", ns))
    Syncer(CONFIG, old, chunk=100).sync(state.snapshot())  # a previous daemon's rules
    state.apply(objects(600, 3))  # every service changed while no daemon ran
    ipt = FakeIptables(real=Iptables(variant, "ipv4", ns))
    stop = threading.Event()
    ipt.after_restore = lambda _: len(ipt.texts) == 3 and stop.set()  # SIGTERM, mid-sync
    syncer = Syncer(CONFIG, ipt, chunk=100)
    with pytest.raises(SyncInterrupted):
        syncer.sync(state.snapshot(), stop=stop)
    assert len(ipt.texts) == 3  # head and two chunks of 100 services, then it stopped
    consistent(ipt.save())
    restarted = Syncer(CONFIG, FakeIptables(real=Iptables(variant, "ipv4", ns)), chunk=100)
    restarted.sync(state.snapshot())
    assert restarted.verify().drift == ()
    assert len(re.findall(r"^:KUBE-SEP-", ipt.save("nat"), re.M)) == 600 * 3  # no stale ones


def manifest(services: int, endpoints: int = 5) -> str:
    docs = []
    for i in range(services):
        name = f"svc-{i}"
        port = {"name": "http", "port": 80, "targetPort": 8080}
        docs.append({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": name, "namespace": "ns"},
                     "spec": {"clusterIP": ip(i, 96), "ports": [port]}})  # fmt: skip
        docs.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                     "metadata": {"name": f"{name}-1", "namespace": "ns",
                                  "labels": {"kubernetes.io/service-name": name}},
                     "addressType": "IPv4",
                     "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                     "endpoints": [{"addresses": [ip(i * endpoints + k, 200)]}
                                   for k in range(endpoints)]})  # fmt: skip
    return yaml.safe_dump_all(docs)


def test_sigterm_during_a_full_sync_stops_between_chunks(ns: str, tmp_path: Path) -> None:
    """The daemon gets SIGTERM once the first transaction of a 3,000-service full sync (nft
    variant, 12 chunks of services) is in: it exits at once, with a consistent rule set, and
    the next daemon finishes the job."""
    (tmp_path / "all.yaml").write_text(manifest(3000))
    log = tmp_path / "daemon.log"
    argv = [NETPLANE, "-v", "proxy", "run", "--manifests", str(tmp_path), "--node", "node-a",
            "--iptables-variant", "nft", "--metrics-addr", "127.0.0.1:10249",
            "--healthz-addr", "127.0.0.1:10256"]  # fmt: skip
    with log.open("w") as out:
        proc = netns.popen(ns, argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        # the head transaction (KUBE-MARK-MASQ & co.) is the first of the full sync's 13
        mark_masq = ["iptables-nft", "-t", "nat", "-S", "KUBE-MARK-MASQ"]
        wait_for(lambda: netns.run(ns, mark_masq, check=False), 120, interval=0.02,
                 what="the first chunk")  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        assert proc.wait(30) == 0
        print(f"exit {time.monotonic() - sent:.2f} s after SIGTERM")  # the benchmark's figure
    finally:
        netns.stop(proc)
    text = log.read_text()
    assert "stopped during a sync" in text and "Traceback" not in text, text
    dump = netns.run(ns, ["iptables-nft-save"])
    consistent(dump)
    assert dump.count(":KUBE-SVC-") < 3000  # it did stop part-way
    with log.open("a") as out:
        proc = netns.popen(ns, argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: netns.run(ns, ["iptables-nft-save", "-t", "nat"]).count(":KUBE-SVC-")
                 == 3000 and "full sync" in log.read_text().split("proxy for node")[-1],
                 120, interval=0.2, what="the restarted daemon's full sync")  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    consistent(netns.run(ns, ["iptables-nft-save"]))


class QuietWindow:
    """Drives a SyncLoop whose first harmless foreign write opens a quiet window far longer
    than any wait here (VERIFY_BUDGET raised), counting the read-backs it runs."""

    def __init__(self, syncer, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(daemon, "VERIFY_BUDGET", 10_000_000)  # window: 1e6 x read-back CPU
        self.state = ClusterState()
        tracker = self.state.tracker()
        self.state.apply(objects(50))
        self.state.mark_synced()
        self.syncer = syncer
        self.read_backs = 0
        verify = syncer.verify

        def counted(stop=None):
            result = verify(stop)
            self.read_backs += 1
            return result

        syncer.verify = counted
        self.loop = SyncLoop(
            self.state, tracker, syncer, Metrics(), "node-a", 0.05, verify_period=3600,
            probe_period=0.2,
        )  # fmt: skip
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> QuietWindow:
        self.thread.start()
        wait_for(lambda: self.syncer.in_sync, 60, interval=0.1, what="the first sync")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)

    def open(self, foreign_write: Callable[[int], None]) -> None:
        """A foreign write read back without drift opens the window; more foreign writes
        inside it run no read-back (only the sentinel)."""
        foreign_write(0)
        wait_for(lambda: self.read_backs == 1, 30, interval=0.1, what="the read-back")
        for i in range(1, 4):
            foreign_write(i)
            time.sleep(0.5)  # 2-3 probes each
        assert self.read_backs == 1


def test_flush_inside_the_quiet_window_is_repaired_at_once(
    ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CNI plugin's masquerade rules (harmless) open the quiet window; `iptables -t nat
    -F` inside it takes the built-in jumps with it, which the sentinel sees: repaired
    within the bound here, not when the window ends (it was 30-130 s at 10k services)."""
    ipt = Iptables("nft", "ipv4", ns)
    with QuietWindow(Syncer(CONFIG, ipt), monkeypatch) as quiet:

        def masquerade(i: int) -> None:
            netns.run(ns, ["iptables-nft", "-w", "10", "-t", "nat", "-A", "POSTROUTING",
                           "-s", f"10.99.{i}.0/24", "-j", "MASQUERADE"])  # fmt: skip

        quiet.open(masquerade)
        netns.run(ns, ["iptables-nft", "-w", "10", "-t", "nat", "-F"])
        wait_for(lambda: not quiet.syncer._look_up_jumps()
                 and len(ipt.list_rules("nat", "KUBE-SERVICES") or ()) >= 50,
                 30, interval=0.1, what="the repair of the flushed nat table")  # fmt: skip
    assert quiet.syncer.verify().drift == ()


def test_a_flush_right_after_our_commit_is_not_taken_for_ours(ns: str) -> None:
    """The bench's 139 s flush-resync at 10k: its flush landed between our restore's commit
    and our look at the generation, which then counted it as ours. Our own syncs, full and
    partial, still leave `kernel_changed()` quiet (the nft variant's commits are counted)."""
    ipt = FakeIptables(real=Iptables("nft", "ipv4", ns))
    state = ClusterState()
    tracker = state.tracker()
    state.apply(objects(50))
    syncer = Syncer(CONFIG, ipt)
    syncer.sync(state.snapshot(), None)
    assert not syncer.kernel_changed()
    state.apply(objects(51)[-2:])  # one more service
    syncer.sync(state.snapshot(), tracker.pop())
    assert not syncer.kernel_changed()

    def flush(_text: str) -> None:
        ipt.after_restore = None
        ipt.foreign("*nat\n-F\nCOMMIT\n")

    ipt.after_restore = flush
    state.apply(objects(52)[-2:])
    syncer.sync(state.snapshot(), tracker.pop())
    assert syncer.kernel_changed()
    assert syncer.verify().drift  # the probe's read-back finds the flush and repairs it
    assert not syncer.kernel_changed() and syncer.verify().drift == ()
