"""netplane's proxy beside the real kube-proxy, on one real API server, in the same run.

A real control plane (netplane.testing.controlplane) holds S selectorless ClusterIP
Services with one hand-made EndpointSlice of 5 endpoints each, created through the API
(listed first: only what is missing is created). Then, one contender at a time, each in a
fresh node namespace of its own on the same API server:

- **full sync**: process start -> every sampled service (the first, the last and every
  S/50th) answers a connection in that namespace's kernel (bench/_probe: ClusterIPs and pod
  IPs are local addresses there, a listener sees which endpoint the DNAT chose);
- **one-endpoint change** (CHANGES times, different services): the PUT of an EndpointSlice
  with one endpoint replaced -> a connection reaches the new endpoint;
- CPU seconds of the proxy and the tools it waited for (iptables-restore, nft), SETTLE
  seconds after the full sync (a tool is counted once reaped) and at the end; peak RSS
  (VmHWM); seconds from SIGTERM to exit.

Each contender runs under its own least-privilege identity: netplane with the
`netplane-proxy` ServiceAccount's token (deploy/rbac.yaml applied to the server), kube-proxy
with a `system:kube-proxy` client certificate (the default `system:node-proxier` binding).
kube-proxy gets a KubeProxyConfiguration that changes no global kernel setting; the root
namespace's sysctls are compared before and after the run.

    netplane bench proxy-sync --peers netplane-nftables,kube-proxy-iptables,kube-proxy-nftables
                              [--services N]
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from netplane.bench import _workload as w
from netplane.bench._bytecode import compile_netplane
from netplane.bench._e2e import process_cpu, process_peak_rss
from netplane.bench._netns import Netns
from netplane.bench._probe import Listener, ProbeTimeout, setup_probing, wait_for
from netplane.bench._results import Label, Series, Skipped
from netplane.bench._scenario import Expect
from netplane.bench._sysctl import SysctlWatch
from netplane.testing.controlplane import ApiError

ENDPOINTS = 5
SCALES = (1000, 5000, 10000)
QUICK_SCALES = (200,)
CHANGES = 20
QUICK_CHANGES = 5
NAMESPACE = w.NAMESPACE
REPO = Path(__file__).resolve().parent.parent
RBAC = REPO / "deploy" / "rbac.yaml"
SETTLE = 2.0  # seconds between the full sync and the first change
GAP = (0.5, 1.5)  # random pause between changes: no phase lock with a proxy's sync timer
CHANGE_TIMEOUT = 120.0
EXIT_TIMEOUT = 60.0


def full_sync_timeout(services: int) -> float:
    """kube-proxy's iptables mode needed 630 s for its one restore at 10k (real-anchors.md)."""
    return 120.0 + 0.1 * services


# ---- contenders --------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """What a contender needs to start on one node."""

    cp: Any  # netplane.testing.controlplane.ControlPlane
    node: Any  # its Node
    workdir: Path


class Contender(Protocol):
    @property
    def name(self) -> str: ...

    def command(self, setup: Setup) -> list[str]: ...


@dataclass(frozen=True)
class NetplaneProxy:
    """`netplane proxy run --kubeconfig` with the shipped ServiceAccount, default timers."""

    name: str
    options: tuple[str, ...] = ()

    def command(self, setup: Setup) -> list[str]:
        kubeconfig = setup.cp.token_kubeconfig("kube-system", "netplane-proxy")
        exe = Path(sys.executable).with_name("netplane")
        launcher = [str(exe)] if exe.exists() else [sys.executable, "-m", "netplane.cli"]
        return [
            *launcher,
            *("proxy", "run", "--kubeconfig", str(kubeconfig), "--node", setup.node.name),
            *("--cluster-cidr", str(w.POD_NET)),
            *("--metrics-addr", "127.0.0.1:10249", "--healthz-addr", "127.0.0.1:10256"),
            *self.options,
        ]


@dataclass(frozen=True)
class KubeProxy:
    """The real kube-proxy in MODE, configured so that it changes no global kernel setting."""

    name: str
    mode: str  # iptables | nftables

    def command(self, setup: Setup) -> list[str]:
        from netplane.testing import anchors

        binary = anchors.require("kube-proxy")["kube-proxy"]
        config = setup.workdir / f"{setup.node.name}.kube-proxy.yaml"
        kubeconfig = setup.cp.kubeconfig("system:kube-proxy")
        config.write_text(yaml.safe_dump(kube_proxy_config(self.mode, setup.node.name, kubeconfig)))
        return [str(binary), f"--config={config}", "--v=1"]


def kube_proxy_config(
    mode: str, node: str, kubeconfig: Path, cluster_cidr: str = str(w.POD_NET)
) -> dict[str, Any]:
    """kube-proxy's defaults, except what would touch the host: conntrack sizes and timeouts
    are global (0 = leave alone), localhostNodePorts would set route_localnet."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": mode,
        "hostnameOverride": node,
        "clusterCIDR": cluster_cidr,
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "metricsBindAddress": "127.0.0.1:10249",
        "healthzBindAddress": "127.0.0.1:10256",
        "oomScoreAdj": 0,
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
            "tcpBeLiberal": False,
            "udpTimeout": "0s",
            "udpStreamTimeout": "0s",
        },
        "iptables": {"localhostNodePorts": False},
    }


CONTENDERS: dict[str, Contender] = {
    c.name: c
    for c in (
        NetplaneProxy("netplane"),
        NetplaneProxy("netplane-nftables", ("--backend", "nftables")),
        KubeProxy("kube-proxy-iptables", "iptables"),
        KubeProxy("kube-proxy-nftables", "nftables"),
    )
}
SUBJECT = "netplane"  # always measured; --peers adds the others


# ---- the cluster -------------------------------------------------------------------------


def service_objects(i: int, addresses: Sequence[str]) -> list[dict[str, Any]]:
    """Service I (selectorless, fixed ClusterIP) and its one EndpointSlice."""
    name = w.service_name(i)
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "clusterIP": w.cluster_ip(i),
            "ports": [{"name": "http", "port": w.SERVICE_PORT, "targetPort": w.TARGET_PORT}],
        },
    }
    return [svc, slice_object(i, addresses)]


def slice_object(i: int, addresses: Sequence[str]) -> dict[str, Any]:
    return w.slice_doc(
        i,
        [
            {"addresses": [a], "conditions": {"ready": True}, "nodeName": "bench-node"}
            for a in addresses
        ],
    )


def original_addresses(i: int) -> list[str]:
    return [w.pod_ip(i, j) for j in range(ENDPOINTS)]


def load_cluster(cp: Any, services: int) -> dict[str, float]:
    """Services 0..S-1 with their slices: created if missing, originals restored if changed
    by an earlier point of this run. Seconds spent, and how many were created."""
    start = time.monotonic()
    cp.ensure_namespace(NAMESPACE)
    objects = [o for i in range(services) for o in service_objects(i, original_addresses(i))]
    created = cp.create_missing(objects, threads=4)
    return {"seconds": time.monotonic() - start, "created": created}


def restore_originals(cp: Any, indices: Sequence[int]) -> None:
    """PUT back the original slices of services INDICES (unchanged ones are no-ops): each
    contender's changes must really change something."""
    path = f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices"
    for i in sorted(set(indices)):
        body = slice_object(i, original_addresses(i))
        cp.api.put(f"{path}/{body['metadata']['name']}", body)


def sample(services: int) -> list[int]:
    step = max(services // 50, 1)
    return sorted({0, services - 1, *range(step - 1, services, step)})


# ---- one contender at one scale -----------------------------------------------------------


@dataclass
class Measurement:
    contender: str
    services: int
    full_sync: float | None = None
    full_sync_cpu: float | None = None
    changes: list[float] = field(default_factory=list)
    cpu: float | None = None
    peak_rss: int | None = None
    sigterm_exit: float | None = None
    error: str = ""

    def series(self) -> list[Series]:
        labels: dict[str, Label] = {
            "impl": self.contender,
            "services": self.services,
            "endpoints": ENDPOINTS,
        }
        out = []
        for metric, unit, values in (
            ("full_sync", "s", [self.full_sync]),
            ("full_sync_cpu", "s", [self.full_sync_cpu]),
            ("endpoint_change", "s", self.changes),
            ("cpu", "s", [self.cpu]),
            ("peak_rss", "bytes", [self.peak_rss]),
            ("sigterm_exit", "s", [self.sigterm_exit]),
        ):
            kept = tuple(float(v) for v in values if v is not None)
            if kept:
                out.append(Series(metric, unit, labels, kept))
        return out


class _Proxy:
    """The contender's process in the node namespace; its output in a log file."""

    def __init__(self, argv: list[str], netns: str, log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", netns, *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd="/",
                start_new_session=True,  # its tools too: see terminate()
            )

    def check(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"exited ({self.proc.returncode}):\n{tail}")

    def terminate(self) -> float | None:
        """Seconds from SIGTERM to exit (None: killed after EXIT_TIMEOUT). Whatever it left
        running is killed too: kube-proxy stopped mid full sync leaves its iptables-restore
        behind (it kept a deleted namespace's 10k-service restore going for 20 minutes)."""
        if self.proc.poll() is not None:
            self._kill_group()
            return None
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(EXIT_TIMEOUT)
            return time.monotonic() - start
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
            return None
        finally:
            self._kill_group()

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def measure(
    cp: Any, contender: Contender, services: int, changes: int, workdir: Path
) -> Measurement:
    """One contender at one scale, in a node namespace of its own (removed afterwards)."""
    m = Measurement(contender.name, services)
    changed = [(j * 7919 + 13) % services for j in range(changes)]
    restore_originals(cp, changed)  # an earlier contender changed them: start from the same state
    node = cp.add_node(f"{contender.name}-{services}-{os.urandom(2).hex()}")
    ns = Netns(node.netns)
    listener = proxy = None
    try:
        setup_probing(ns)
        listener = Listener(ns)
        argv = contender.command(Setup(cp, node, workdir))
        t0 = time.monotonic()
        proxy = _Proxy(argv, node.netns, workdir / f"{node.name}.log")
        pid = proxy.proc.pid
        deadline = t0 + full_sync_timeout(services)
        for i in sample(services):
            while True:
                proxy.check()
                try:
                    done = ns.call(
                        wait_for,
                        w.cluster_ip(i),
                        Expect("open"),
                        min(deadline, time.monotonic() + 2),
                        cancel=ns.closing,
                    )
                    break
                except ProbeTimeout:
                    if time.monotonic() > deadline:
                        raise
        m.full_sync = done - t0
        time.sleep(SETTLE)  # the restore's process may still be exiting when its rules show
        m.full_sync_cpu = process_cpu(pid)
        rng = random.Random(services)
        for j in range(changes):
            proxy.check()
            i = changed[j]
            addresses = original_addresses(i)
            new = w.pod_ip(i, ENDPOINTS + j % 100)
            addresses[j % ENDPOINTS] = new
            body = slice_object(i, addresses)
            path = f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices"
            start = time.monotonic()
            cp.api.put(f"{path}/{body['metadata']['name']}", body)
            seen = ns.call(
                wait_for,
                w.cluster_ip(i),
                Expect("reaches"),
                start + CHANGE_TIMEOUT,
                listener,
                new,
                ENDPOINTS,
                cancel=ns.closing,
            )
            m.changes.append(seen - start)
            time.sleep(rng.uniform(*GAP))
        m.cpu, m.peak_rss = process_cpu(pid), process_peak_rss(pid)
        m.sigterm_exit = proxy.terminate()
    except (ProbeTimeout, RuntimeError, OSError, ApiError) as e:
        step = "full sync" if m.full_sync is None else f"change {len(m.changes) + 1}"
        m.error = f"{step}: {type(e).__name__}: {e}"
    finally:
        if proxy is not None:
            proxy.terminate()
        if listener is not None:
            listener.close()
        ns.close()
        try:
            cp.remove_node(node.name)
        except (OSError, ApiError) as e:  # the next point still runs; its namespace is gone
            m.error += f" (removing the node: {e})"
    return m


# ---- the whole run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    scales: tuple[int, ...]
    contenders: tuple[str, ...]
    changes: int

    @classmethod
    def make(
        cls, quick: bool, scales: Sequence[int], peers: Sequence[str], changes: int | None
    ) -> Plan:
        unknown = [p for p in peers if p not in CONTENDERS]
        if unknown:
            raise ValueError(
                f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(CONTENDERS)}"
            )
        names = tuple(dict.fromkeys((SUBJECT, *peers)))
        default_changes = QUICK_CHANGES if quick else CHANGES
        return cls(
            tuple(sorted(scales or (QUICK_SCALES if quick else SCALES))),
            names,
            changes if changes is not None else default_changes,
        )


def run(
    plan: Plan, checkpoint: Callable | None = None, log: Callable = print, cp: Any = None
) -> tuple:
    """(parameters, series, skipped) in bench/_results terms; scales ascending so that each
    point only adds services to the previous one. A fresh control plane unless CP is given
    (tests share theirs)."""
    from netplane.testing.controlplane import ControlPlane

    compile_netplane()  # timed starts run on bytecode, as from an install
    params: dict[str, Any] = {
        "scales": list(plan.scales),
        "contenders": list(plan.contenders),
        "changes": plan.changes,
        "endpoints": ENDPOINTS,
        "load_before": os.getloadavg(),
        "points": [],
    }
    series: list[Series] = []
    skipped: list[Skipped] = []
    workdir = Path(tempfile.mkdtemp(prefix="netplane-proxy-peers-"))
    sysctls = SysctlWatch()
    try:
        with contextlib.nullcontext(cp) if cp else ControlPlane(prefix="npbpp") as cp:
            cp.apply_manifest(RBAC)
            for services in plan.scales:
                loaded = load_cluster(cp, services)
                log(f"{services} services: loaded in {loaded['seconds']:.1f} s "
                    f"({loaded['created']} objects created)")  # fmt: skip
                for name in plan.contenders:
                    load = os.getloadavg()[0]
                    m = measure(cp, CONTENDERS[name], services, plan.changes, workdir)
                    point = {**m.__dict__, "load_1m": [load, os.getloadavg()[0]]}
                    params["points"].append(point)
                    series += m.series()
                    if m.error:
                        skipped.append(Skipped(f"{name} at {services} services", m.error))
                    log(format_point(m, point["load_1m"]))
                    if checkpoint:
                        checkpoint(params, series, skipped)
        params["total_seconds"] = sum(
            (p["full_sync"] or 0) + sum(p["changes"]) for p in params["points"]
        )
    finally:
        params["sysctl_changed"] = sysctls.changed()
        params["load_after"] = os.getloadavg()
        if params["sysctl_changed"]:
            log(f"WARNING: root namespace sysctls changed: {params['sysctl_changed']}")
        if os.environ.get("NETPLANE_KEEP_BENCH_LOGS") != "1":
            shutil.rmtree(workdir, ignore_errors=True)
    return params, series, skipped


def format_point(m: Measurement, load: Sequence[float]) -> str:
    if m.error and m.full_sync is None:
        return f"{m.contender:22} {m.services:6d}  failed: {m.error.splitlines()[0][:200]}"
    ch = sorted(m.changes)
    stats = "-"
    if ch:
        p90 = ch[min(len(ch) - 1, int(0.9 * len(ch)))]
        stats = f"{statistics.median(ch):.2f}/{p90:.2f}/{ch[-1]:.2f}"
    rss = f"{m.peak_rss / 1e6:.0f}" if m.peak_rss else "-"
    exit_s = "killed" if m.sigterm_exit is None else f"{m.sigterm_exit:.2f}"
    cpu = "-" if m.cpu is None else f"{m.cpu:.1f}"
    return (
        f"{m.contender:22} {m.services:6d}  full {m.full_sync:7.2f} s (cpu {m.full_sync_cpu:.1f})"
        f"  change med/p90/max {stats} s (n={len(ch)})  cpu {cpu} s  rss {rss} MB"
        f"  exit {exit_s}  load {load[0]:.1f}-{load[1]:.1f}"
        + (f"  ERROR {m.error.splitlines()[0][:120]}" if m.error else "")
    )
