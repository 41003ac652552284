"""End-to-end network programming latency of the real daemon (`netplane proxy run`).

The daemon runs in its own namespace and follows a manifest directory, exactly as in
production. The benchmark writes a manifest and probes the kernel until the rule answers
(see _probe): the time includes the source noticing the file, parsing, the change
tracker, rendering, iptables-restore and the kernel, and trusts nothing the daemon reports.
CPU time (the daemon and the iptables tools it waited for) comes from /proc.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from netplane.bench import _workload as w
from netplane.bench._netns import Netns, netns
from netplane.bench._probe import Listener, ProbeTimeout, setup_probing, wait_for
from netplane.bench._results import Label, Series, Skipped
from netplane.bench._scenario import ABSENT, FLUSH, Expect, ProbeService, cycle

NOOP_WINDOW = 0.5  # seconds of daemon CPU counted after rewriting an unchanged manifest


def process_cpu(pid: int) -> float:
    """utime+stime of PID and of the children it waited for (iptables-restore), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def process_peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _await_canary(ns: Netns, variant: str, deadline: float) -> None:
    """Wait until the daemon's resync is complete (its canary, written last, is back).

    The nat rules answer the probe before the resync's last table is committed; flushing
    again in between would leave the canary standing on empty tables, a state the daemon
    (checking only the canary) never repairs. Not what this benchmark measures.
    """
    while time.monotonic() < deadline:
        listing = ns.exec(f"iptables-{variant}", "-w", "10", "-t", "mangle", "-S", check=False)
        if "KUBE-PROXY-CANARY" in listing:
            return
        time.sleep(0.05)
    raise ProbeTimeout("the daemon never restored its canary chain after a flush")


class Daemon:
    """`netplane proxy run` inside NS, stopped with SIGTERM (then SIGKILL) on close."""

    def __init__(self, ns_name: str, manifests: Path, variant: str, log: Path) -> None:
        backend = (
            ("--backend", "nftables") if variant == "nftables" else ("--iptables-variant", variant)
        )
        argv = [
            *("ip", "netns", "exec", ns_name, sys.executable, "-c"),
            "from netplane.cli import main; main()",
            *("-v", "proxy", "run", "--manifests", str(manifests), "--node", "bench-node"),
            *("--cluster-cidr", str(w.POD_NET), *backend),
            *("--metrics-addr", "127.0.0.1:10249", "--healthz-addr", "127.0.0.1:10249"),
            *("--min-sync-period", "0", "--sync-period", "3600"),
        ]
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)

    def check(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the proxy daemon exited ({self.proc.returncode}):\n{tail}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


def run_e2e(
    variant: str,
    services: int,
    endpoints: int,
    repeat: int,
    flush_repeat: int,
    timeouts: tuple[float, float],
    workdir: Path,
) -> tuple[list[Series], list[Skipped]]:
    """Latency and daemon CPU per change kind at one scale on one iptables variant."""
    start_timeout, change_timeout = timeouts
    labels: dict[str, Label] = {
        "backend": variant,
        "services": services,
        "endpoints": endpoints,
        "impl": "netplane",
    }
    latency: dict[str, list[float]] = defaultdict(list)
    cpu: dict[str, list[float]] = defaultdict(list)
    skipped: list[Skipped] = []
    manifests = workdir / f"e2e-{variant}-{services}x{endpoints}"
    manifests.mkdir(parents=True)
    probe_file = manifests / "probe.json"
    w.write_manifest(manifests / "background.json", w.cluster_docs(services, endpoints))
    probe_ip = w.cluster_ip(services)
    steps = cycle(endpoints)
    up = steps[0].transitions[0][0]
    peak = 0

    def write(state: ProbeService) -> None:
        w.write_manifest(probe_file, state.docs(services))

    write(ABSENT)
    with netns() as ns:
        setup_probing(ns)
        listener = Listener(ns)
        daemon = Daemon(ns.name, manifests, variant, workdir / f"{manifests.name}.log")
        try:
            deadline = time.monotonic() + start_timeout
            while True:  # the first full sync: a background service answers
                daemon.check()
                try:
                    ns.call(
                        wait_for,
                        w.cluster_ip(0),
                        Expect("open"),
                        min(deadline, time.monotonic() + 1),
                    )
                    break
                except ProbeTimeout:
                    if time.monotonic() > deadline:
                        raise
            for _ in range(repeat):
                for step in steps:
                    t0, c0 = time.monotonic(), process_cpu(daemon.proc.pid)
                    for state, expect in step.transitions:
                        write(state)
                        t1 = ns.call(
                            wait_for,
                            probe_ip,
                            expect,
                            t0 + change_timeout,
                            listener,
                            w.pod_ip(services, expect.endpoint) if expect.endpoint >= 0 else "",
                            len(state.endpoints) + 1,
                            cancel=ns.closing,
                        )
                    latency[step.change].append(t1 - t0)
                    cpu[step.change].append(process_cpu(daemon.proc.pid) - c0)
                c0 = process_cpu(daemon.proc.pid)
                write(ABSENT)  # unchanged content, new file: parsed again, nothing to sync
                time.sleep(NOOP_WINDOW)
                cpu["noop-resync"].append(process_cpu(daemon.proc.pid) - c0)
            write(up)
            ns.call(
                wait_for,
                probe_ip,
                Expect("open"),
                time.monotonic() + change_timeout,
                cancel=ns.closing,
            )
            for _ in range(flush_repeat):
                t0, c0 = time.monotonic(), process_cpu(daemon.proc.pid)
                if variant == "nftables":
                    ns.exec("nft", "flush", "ruleset")
                else:
                    ns.exec(f"iptables-{variant}-restore", "-w", "10", input=FLUSH)
                end = t0 + change_timeout
                # no waiting to see it refused first: the flush has committed when the tool
                # returns, and a proxy that polls the kernel may repair it before our first
                # probe (the nftables backend's check comes at any moment of its second)
                t1 = ns.call(wait_for, probe_ip, Expect("open"), end, cancel=ns.closing)
                latency["flush-resync"].append(t1 - t0)
                cpu["flush-resync"].append(process_cpu(daemon.proc.pid) - c0)
                if variant != "nftables":  # nftables repairs in one transaction
                    _await_canary(ns, variant, end)
            peak = process_peak_rss(daemon.proc.pid)
            daemon.check()
        except (ProbeTimeout, RuntimeError) as e:  # keep the other points' figures
            skipped.append(Skipped(f"e2e {variant} {services}x{endpoints}", str(e)))
        finally:
            daemon.close()
            listener.close()
    series = [
        *(Series("latency", "s", {**labels, "change": c}, tuple(v)) for c, v in latency.items()),
        *(Series("daemon_cpu", "s", {**labels, "change": c}, tuple(v)) for c, v in cpu.items()),
    ]
    if peak:
        series.append(Series("daemon_peak_rss", "bytes", labels, (float(peak),)))
    return series, skipped
