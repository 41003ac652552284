"""`netplane bench sync` and `bench dataplane`: plans, pure helpers, and smoke runs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from netplane.bench._results import load_result
from netplane.bench._scenario import ABSENT, CHANGES, cycle
from netplane.bench.dataplane import dispatch_order
from netplane.bench.sync import MAX_TOTAL_ENDPOINTS, SyncPlan
from netplane.cli import cli

try:
    import netplane.proxy.sync  # noqa: F401

    SYNCER = None
except ImportError as e:  # the proxy's syncer is written concurrently
    SYNCER = f"netplane.proxy.sync is not importable yet: {e}"

needs_kernel = pytest.mark.skipif(
    os.geteuid() != 0 or SYNCER is not None, reason=SYNCER or "needs root for namespaces"
)


@pytest.fixture
def made(monkeypatch):
    """The namespaces the benchmark creates; at the end none of them may be left."""
    from netplane.bench import _netns

    names: list[str] = []
    original = _netns.unique_name

    def recording() -> str:
        names.append(original())
        return names[-1]

    monkeypatch.setattr(_netns, "unique_name", recording)
    yield names
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not {line.split()[0] for line in out.splitlines()} & set(names)


def test_plan_is_bounded_and_validated():
    full = SyncPlan.make(quick=False)
    assert all(s * e <= MAX_TOTAL_ENDPOINTS for s, e in full.points)
    assert (10000, 100) not in full.points and (10000, 10) in full.points
    quick = SyncPlan.make(quick=True)
    assert quick.points == ((100, 1),) and quick.repeat >= 3 and quick.flush_repeat == 1
    assert SyncPlan.make(True, (5, 5), (2,), ("nft", "nft"), 4).points == ((5, 2),)
    with pytest.raises(ValueError, match="positive"):
        SyncPlan.make(True, (0,))


@pytest.mark.parametrize("endpoints", [1, 3])
def test_every_transition_is_observable(endpoints):
    """What the probe waits for is false before each transition and true after it."""
    state = ABSENT
    for step in cycle(endpoints):
        for new, expect in step.transitions:
            assert not expect.holds(state), (step.change, expect)
            assert expect.holds(new), (step.change, expect)
            state = new
    assert state == ABSENT  # a cycle can repeat
    assert set(CHANGES) >= {
        "add-service",
        "remove-service",
        "endpoint-add",
        "endpoint-remove",
        "endpoint-flap",
        "readiness",
        "noop-resync",
        "flush-resync",
    }


def test_endpoint_changes_keep_the_service_up():
    """E -> E+1 and back: the common case, where KUBE-SERVICES need not change."""
    steps = {s.change: s for s in cycle(3)}
    ((state, _),) = steps["endpoint-add"].transitions
    assert state.endpoints == (0, 1, 2, 3)
    ((state, _),) = steps["endpoint-remove"].transitions
    assert state.endpoints == (0, 1, 2) and state.reachable


def test_dispatch_order_reads_kube_services():
    lines = (
        '-A KUBE-SERVICES -m comment --comment "a" -d 10.96.1.5/32 -p tcp --dport 80 -j X',
        '-A KUBE-SERVICES -m comment --comment "b" -d 10.96.1.2/32 -p tcp --dport 80 -j Y',
        "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS",
    )
    assert dispatch_order(lines) == ["10.96.1.5", "10.96.1.2"]


def test_peer_rewrites_top_level_chains_and_only_changed_services():
    from netplane.bench._inproc import peer_partial

    before = {
        "nat": {
            "KUBE-SERVICES": ("-A KUBE-SERVICES -j KUBE-SVC-A",),
            "KUBE-SVC-A": ("-A KUBE-SVC-A -j KUBE-SEP-A",),
            "KUBE-SEP-A": (),
            "KUBE-SVC-B": (),
        },
        "filter": {"KUBE-SERVICES": ()},
    }
    after = {
        "nat": {
            "KUBE-SERVICES": ("-A KUBE-SERVICES -j KUBE-SVC-A",),
            "KUBE-SVC-A": ("-A KUBE-SVC-A -j KUBE-SEP-A",),
            "KUBE-SEP-A": (),
        },
        "filter": {"KUBE-SERVICES": ()},
    }
    text = peer_partial(before, after, {"KUBE-SVC-B"})
    assert ":KUBE-SERVICES - [0:0]" in text and "-X KUBE-SVC-B" in text
    assert "KUBE-SVC-A - [0:0]" not in text  # unchanged service: not rewritten
    assert text.index("*filter") < text.index("*nat")


def test_emulated_runs_skip_kernel_benchmarks_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("NETPLANE_BENCH_EMULATED", "qemu-user")
    for cmd in ("sync", "dataplane"):
        result = CliRunner().invoke(cli, ["bench", cmd, "--quick", "--output-dir", str(tmp_path)])
        assert result.exit_code == 0, result.output
        assert "qemu-user cannot pass netfilter netlink" in result.output
    for path in tmp_path.glob("*.json"):
        r = load_result(path)
        assert r.emulated and r.series == () and len(r.skipped) == len(r.parameters["backends"])


@pytest.mark.slow
@needs_kernel
def test_quick_sync_run_in_namespaces(tmp_path, made):
    result = CliRunner().invoke(
        cli, ["bench", "sync", "--quick", "--repeat", "3", "--output-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert len(made) >= 4  # e2e + three for the per-sync part, per backend
    (path,) = tmp_path.glob("sync-*.json")
    r = load_result(path)
    assert not r.skipped, r.skipped
    by = {
        (s.metric, s.labels["impl"], s.labels["backend"], s.labels.get("change")): s
        for s in r.series
    }
    for backend in ("legacy", "nft"):
        for change in CHANGES:
            if change != "noop-resync":
                assert len(by["latency", "netplane", backend, change].values) >= 1
            for metric, impl in (
                ("sync", "netplane"),
                ("compute", "netplane"),
                ("bytes", "netplane"),
                ("restore", "floor"),
                ("restore", "kube-proxy-equivalent"),
            ):
                assert by[metric, impl, backend, change].values, (metric, impl, change)
        assert by["daemon_peak_rss", "netplane", backend, None].values[0] > 0
    for change in CHANGES:  # the nftables backend: netplane and its floor
        if change != "noop-resync":
            assert len(by["latency", "netplane", "nftables", change].values) >= 1
        for metric, impl in (("sync", "netplane"), ("restore", "floor")):
            assert by[metric, impl, "nftables", change].values, (metric, impl, change)
    assert by["daemon_peak_rss", "netplane", "nftables", None].values[0] > 0
    assert all(v >= 0 for s in r.series for v in s.values)


@needs_kernel
def test_a_rejected_probe_is_refused_every_time_in_a_burst(made):
    """200 probes back to back at a REJECT, 4x the kernel's ICMP burst: each is refused
    (rate-limited, one would wait for a SYN retransmit), and only the benchmark's
    namespace stops rate-limiting."""
    from netplane.bench import _workload as w
    from netplane.bench._netns import netns
    from netplane.bench._probe import REFUSED, probe, setup_probing

    root_mask = Path("/proc/sys/net/ipv4/icmp_ratemask").read_text()
    ip = w.cluster_ip(0)
    with netns() as ns:
        setup_probing(ns)
        ns.exec("nft", "-f", "-", input=(
            "table ip probe_test {\n chain out {\n  type filter hook output priority 0\n"
            f"  ip daddr {ip} tcp dport {w.SERVICE_PORT} reject\n }}\n}}\n"
        ))  # fmt: skip

        answers = ns.call(lambda: [probe(ip, timeout=0.5)[0] for _ in range(200)])
    assert answers == [REFUSED] * 200, answers  # a lost refusal shows as a timeout
    assert Path("/proc/sys/net/ipv4/icmp_ratemask").read_text() == root_mask


@pytest.mark.slow
@needs_kernel
def test_quick_dataplane_run_in_namespaces(tmp_path, made):
    result = CliRunner().invoke(
        cli,
        [
            "bench",
            "dataplane",
            "--services",
            "5",
            "--services",
            "50",
            "--repeat",
            "20",
            "--output-dir",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert made
    (path,) = tmp_path.glob("dataplane-*.json")
    targets = {
        (s.labels["backend"], s.labels["services"], s.labels["target"]): len(s.values)
        for s in load_result(path).series
    }
    assert len(targets) == 3 * 2 * 4 and set(targets.values()) == {20}


@pytest.mark.slow
@needs_kernel
def test_sigterm_stops_a_run_cleanly(tmp_path):
    """Interrupted mid-point: the daemon and every namespace go, and no result is faked."""
    import secrets
    import signal
    import sys
    import time

    prefix = f"npbt{secrets.token_hex(2)}"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "NETPLANE_BENCH_NETNS_PREFIX": prefix, "TMPDIR": str(tmp)}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from netplane.cli import main; main()", "bench", "sync",
         "--quick", "--backend", "legacy", "--repeat", "20", "--output-dir", str(tmp_path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip

    def ours() -> list[str]:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]

    def daemons() -> str:  # the proxy daemon follows manifests under our TMPDIR
        return subprocess.run(["pgrep", "-f", "--", f"--manifests {tmp}"], capture_output=True,
                              text=True).stdout  # fmt: skip

    try:
        deadline = time.monotonic() + 240
        while not daemons() and time.monotonic() < deadline:  # the end-to-end part runs
            time.sleep(0.2)
        assert daemons() and ours(), "the benchmark never got to its end-to-end part"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # the test failed: do by hand what the benchmark did not
            proc.kill()
            proc.wait()
            for name in ours():
                subprocess.run(["ip", "netns", "del", name], check=False)
    assert proc.returncode != 0, out
    assert "Aborted!" in out  # click reports the KeyboardInterrupt SIGTERM became
    assert ours() == [] and daemons() == "", out
    assert not any(tmp.iterdir())  # the manifest work directory is gone too
    assert list(tmp_path.glob("*.json")) == []  # nothing finished, nothing written


def test_addresses_stay_in_their_ranges_at_the_largest_scale():
    """Every endpoint of the biggest cluster is a pod address, distinct, and never the
    probe's source; out-of-range indexes are refused rather than wrapped."""
    import ipaddress

    from netplane.bench import _workload as w
    from netplane.bench._probe import PROBE_SOURCE

    last = w.MAX_SERVICES - 1
    corners = {w.pod_ip(i, j) for i in (0, 1, last) for j in (0, w.MAX_ENDPOINTS_PER_SERVICE - 1)}
    assert len(corners) == 6 and PROBE_SOURCE not in corners
    assert all(ipaddress.ip_address(ip) in w.POD_NET for ip in (*corners, PROBE_SOURCE))
    assert ipaddress.ip_address(w.cluster_ip(last)) in w.SERVICE_NET
    assert w.pod_ip(0, w.MAX_ENDPOINTS_PER_SERVICE - 1) != w.pod_ip(1, 0)
    with pytest.raises(ValueError):
        w.pod_ip(w.MAX_SERVICES, 0)
    with pytest.raises(ValueError):
        SyncPlan.make(True, (100,), (w.MAX_ENDPOINTS_PER_SERVICE,))


def test_peer_full_sync_is_one_restore_plus_jumps():
    from netplane.bench._inproc import _peer_full

    jumps = (
        "*nat\n-I OUTPUT -j KUBE-SERVICES\nCOMMIT\n*mangle\n:KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n"
    )
    applied = {"nat": {"KUBE-SERVICES": ("-A KUBE-SERVICES -j KUBE-SVC-A",), "KUBE-SVC-A": ()}}
    assert _peer_full(["*nat\n:X - [0:0]\n-I OUTPUT -j X\nCOMMIT\n"], applied)[0].startswith(
        "*nat\n:X"
    )  # netplane's single restore already is kube-proxy's
    chunks = [
        "*nat\n:KUBE-SVC-A - [0:0]\nCOMMIT\n",
        "*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n",
        jumps,
    ]
    whole, tail = _peer_full(chunks, applied)
    assert ":KUBE-SERVICES - [0:0]" in whole and ":KUBE-SVC-A - [0:0]" in whole
    assert tail == jumps
