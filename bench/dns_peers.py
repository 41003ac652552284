"""DNS beside the real CoreDNS, both fed by one real kube-apiserver (`bench dns --peer coredns`).

One control plane (netplane.testing.controlplane), 10,000 selectorless Services x one
EndpointSlice of 5 endpoints (`quick`: 1,000) created through the API, one query file
(50% service hits, 30% search-path misses, 20% PTR of cluster IPs). Then one server at a
time on a loopback address of its own:
- CoreDNS (the anchor) under its own ServiceAccount with kubeadm's RBAC, with kubeadm's
  default Corefile, minus what would leave the machine or needs it (`forward`, `loop`,
  `reload`) and so minus `fallthrough` (nothing after it);
  kubeadm disables the cache for cluster.local, so every service query runs the
  `kubernetes` plugin;
- CoreDNS with the plain `cache 30` (its README's, caching cluster.local too), the fair
  peer of our answer cache;
- `netplane dns serve --kubeconfig` under the shipped netplane-dns ServiceAccount (RBAC from
  deploy/rbac.yaml), with 1 and 2 workers, TTL 30 and `--pods insecure` as that Corefile.
Measured per server: start -> /ready (wall) and the CPU all its processes used until then,
start -> a service's A answered right over UDP and TCP (CoreDNS's /ready precedes that),
in the measured run and in START_ROUNDS more starts of every server in rotating order;
RSS and PSS summed over all its processes when idle after ready and again after the load;
dnsperf's peak QPS, the server's CPU during that peak and so queries per CPU second (on a
shared machine the peak says how much CPU a server got, this says what it did with it),
and p50/p99 at half of that peak. Servers log to files (an unread pipe fills up and blocks
a server that logs: CoreDNS logs every /ready poll while it starts).
"""

from __future__ import annotations

import contextlib
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netplane.bench._bytecode import compile_netplane
from netplane.bench.dns_perf import dnsperf, find_coredns, service_manifests, wait_ready
from netplane.testing.ports import free_port
from netplane.testing.procs import stop_process

if TYPE_CHECKING:
    from netplane.testing.controlplane import ControlPlane

NETPLANE = str(Path(sys.executable).with_name("netplane"))
NAMESPACES = 50
PREFIX = "dnsb"  # the benchmark's namespaces: dnsb0 ... dnsb49
START_ROUNDS = 4  # starts of each server besides the measured run (`quick`: 1)
REPO = Path(__file__).resolve().parent.parent

COREFILE = """\
.:{port} {{
    bind {host}
    errors
    health 127.0.0.1:{health_port} {{
        lameduck 5s
    }}
    ready 127.0.0.1:{ready_port}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        ttl 30
    }}
    prometheus 127.0.0.1:{metrics_port}
    {cache}
    loadbalance
}}
"""


# CoreDNS's ServiceAccount with the rules kubeadm gives it (ClusterRole system:coredns), so
# both servers list as a workload does: through API priority and fairness, token auth
COREDNS_RBAC = """\
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects:
- {kind: ServiceAccount, name: coredns, namespace: kube-system}
"""

KUBEADM_CACHE = """cache 30 {
        disable success cluster.local
        disable denial cluster.local
    }"""
PLAIN_CACHE = "cache 30"


def cluster_objects(services: int, endpoints: int = 5) -> list[dict]:
    """Namespaces, selectorless Services (every 20th headless) and one slice each; the API
    server allocates the cluster IPs."""
    objects: list[dict] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"{PREFIX}{i}"}}
        for i in range(NAMESPACES)
    ]
    for i in range(services):
        ns, name = f"{PREFIX}{i % NAMESPACES}", f"svc{i}"
        spec: dict = {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        if i % 20 == 0:
            spec["clusterIP"] = "None"
        objects += service_manifests(ns, name, spec, i * endpoints, endpoints, ready=True)
    return objects


def query_lines(cluster_ips: dict[tuple[str, str], str], count: int, seed: int = 7) -> list[str]:
    """50% hits, 30% search-path misses (`svc.ns` asked from another namespace), 20% PTR."""
    rng = random.Random(seed)
    keys = sorted(cluster_ips)
    with_ip = [k for k in keys if cluster_ips[k]]
    lines = []
    for _ in range(count):
        roll = rng.random()
        ns, name = rng.choice(keys)
        if roll < 0.5:
            lines.append(f"{name}.{ns}.svc.cluster.local A")
        elif roll < 0.8:
            other = f"{PREFIX}{rng.randrange(NAMESPACES, NAMESPACES + 10)}"  # no such namespace
            lines.append(f"{name}.{ns}.{other}.svc.cluster.local A")
        else:
            ns, name = rng.choice(with_ip)
            a, b, c, d = cluster_ips[(ns, name)].split(".")
            lines.append(f"{d}.{c}.{b}.{a}.in-addr.arpa PTR")
    return lines


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        with contextlib.suppress(OSError):
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
    return pids


def memory_mb(pid: int) -> dict:
    """RSS and PSS summed over the process and its children (smaps_rollup)."""
    rss = pss = 0
    pids = _tree(pid)
    for p in pids:
        with contextlib.suppress(OSError):
            text = Path(f"/proc/{p}/smaps_rollup").read_text()
            fields = dict(re.findall(r"^(\w+):\s+(\d+) kB", text, re.M))
            rss += int(fields.get("Rss", 0))
            pss += int(fields.get("Pss", 0))
    return {"rss_mb": round(rss / 1024, 1), "pss_mb": round(pss / 1024, 1), "processes": len(pids)}


def cpu_seconds(pid: int) -> float:
    """CPU used by the process and its children, live and reaped."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return round(total / tick, 2)


@dataclass(frozen=True)
class Probe:
    """A service's A question and its cluster IP: answered right over UDP and TCP means
    serving. CoreDNS's /ready says 200 once its informers have synced, but it binds its
    DNS sockets only after every plugin's start-up hook returns, and the kubernetes
    plugin's hook notices the sync on a 100 ms tick; until then queries are refused."""

    host: str
    port: int
    name: str
    address: str

    def answered(self) -> bool:
        from dnslib import QTYPE, DNSError, DNSRecord

        from netplane.dns.forward import exchange

        query = DNSRecord.question(self.name, "A")
        packet = query.pack()
        try:
            replies = [DNSRecord.parse(exchange(packet, self.host, self.port, 0.2, tcp))
                       for tcp in (False, True)]  # fmt: skip
        except (OSError, DNSError):  # not listening yet, or not a DNS reply
            return False
        return all(
            reply.header.id == query.header.id
            and [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A] == [self.address]
            for reply in replies
        )

    def wait(self, proc: subprocess.Popen[Any], timeout: float = 60) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited during start-up")
            if self.answered():
                return time.monotonic()
            time.sleep(0.01)
        raise TimeoutError(f"ready, but {self.name} not answered with {self.address}")


@contextlib.contextmanager
def _serving(
    argv: list[str], ready_port: int, probe: Probe, log: Path, append: bool = False
) -> Iterator[tuple[subprocess.Popen[Any], dict[str, float]]]:
    """ARGV started with its output in LOG (read only on failure) until its /ready says 200
    and PROBE is answered: (the process, {ready_s, cpu_to_ready_s, answers_s} from the
    start); stopped afterwards. CoreDNS is killed (one process; SIGTERM would sit out the
    5 s lameduck of kubeadm's Corefile), netplane stopped as usual (its workers must be
    gone before the next server binds)."""
    t0 = time.monotonic()
    with log.open("ab" if append else "wb") as sink:
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
    try:
        try:
            ready_at = wait_ready(ready_port, proc)
            cpu = cpu_seconds(proc.pid)
            answers_at = probe.wait(proc)
        except (RuntimeError, TimeoutError) as e:
            raise RuntimeError(f"{e}; its log ends:\n{log.read_text()[-2000:]}") from e
        yield proc, {"ready_s": round(ready_at - t0, 2), "cpu_to_ready_s": cpu,
                     "answers_s": round(answers_at - t0, 2)}  # fmt: skip
    finally:
        if Path(argv[0]).name == "coredns":
            proc.kill()
            proc.wait()
        stop_process(proc, 15)


def start_once(argv: list[str], ready_port: int, probe: Probe, log: Path) -> dict[str, float]:
    """Start, wait for /ready and an answer, stop: {ready_s, cpu_to_ready_s, answers_s}."""
    with _serving(argv, ready_port, probe, log, append=True) as (_, started):
        return started


def measure(argv: list[str], ready_port: int, probe: Probe, queries: Path,
            seconds: int, log: Path) -> dict:  # fmt: skip
    host, port = probe.host, probe.port
    load = Path("/proc/loadavg").read_text().split()[:3]
    with _serving(argv, ready_port, probe, log) as (proc, started):
        out: dict = {**started, "starts": []}
        time.sleep(1)
        out["idle"] = memory_mb(proc.pid)
        dnsperf(host, port, queries, 2)  # warm-up (fills whatever caches the server has)
        cpu, start = cpu_seconds(proc.pid), time.monotonic()
        out["peak"] = dnsperf(host, port, queries, seconds)
        cpu, wall = cpu_seconds(proc.pid) - cpu, time.monotonic() - start
        out["peak"]["server_cpu_share"] = round(cpu / wall, 2)  # 1.0 = one core
        out["peak"]["queries_per_cpu_s"] = round(out["peak"]["completed"] / cpu) if cpu else 0
        half = max(100, int(out["peak"]["qps"] / 2))
        out["half_load"] = dnsperf(host, port, queries, seconds, qps=half, verbose=True)
        out["after_load"] = memory_mb(proc.pid)
        out["load_average"] = load + Path("/proc/loadavg").read_text().split()[:3]
        return out


def run(
    quick: bool = False,
    peer: str = "coredns",
    workers: tuple[int, ...] = (1, 2),
    services: int | None = None,
    seconds: int | None = None,
    cp: ControlPlane | None = None,
) -> dict[str, Any]:
    """The comparison on a control plane of its own (or `cp`, with RBAC applied)."""
    from netplane.testing import anchors
    from netplane.testing.controlplane import ControlPlane

    if peer != "coredns":
        raise ValueError(f"unknown DNS peer {peer!r} (known: coredns)")
    compile_netplane()  # timed starts run on bytecode, as from an install
    services = services or (1_000 if quick else 10_000)
    seconds = seconds or (5 if quick else 10)
    try:
        coredns: Path | None = anchors.require("coredns")["coredns"]
    except anchors.AnchorError as e:  # another build of the pin ($NETPLANE_COREDNS), else none
        found = find_coredns()
        coredns = Path(found) if found else None
        print(f"CoreDNS anchor: {e}; using {coredns}", file=sys.stderr)
    results: dict[str, Any] = {"services": services, "endpoints": services * 5,
                               "seconds": seconds, "start_rounds": 1 if quick else START_ROUNDS,
                               "mix": "50% hits, 30% search-path misses, 20% PTR"}  # fmt: skip
    if cp is None:
        with ControlPlane() as own:
            own.apply_manifest(REPO / "deploy" / "rbac.yaml")
            _compare(own, coredns, workers, results)
    else:
        _compare(cp, coredns, workers, results)
    if coredns is not None:
        version = subprocess.run([coredns, "-version"], capture_output=True, text=True).stdout
        results["coredns_version"] = version.split()[0] if version else ""
    results["series"] = series(results)
    return results


def _compare(
    cp: ControlPlane, coredns: Path | None, workers: tuple[int, ...], results: dict[str, Any]
) -> None:
    services, seconds = results["services"], results["seconds"]
    work = Path(tempfile.mkdtemp(prefix="npdns-peers-"))
    t = time.monotonic()
    created = cp.create_missing(cluster_objects(services))
    results["setup"] = {"created": created, "seconds": round(time.monotonic() - t, 1)}
    listed = cp.api.get("/api/v1/services")["items"]
    ips = {(s["metadata"]["namespace"], s["metadata"]["name"]):
           ("" if s["spec"].get("clusterIP") == "None" else s["spec"].get("clusterIP", ""))
           for s in listed if s["metadata"]["namespace"].startswith(PREFIX)}  # fmt: skip
    queries = work / "queries.txt"
    queries.write_text("\n".join(query_lines(ips, 20_000)) + "\n")
    rbac = work / "coredns-rbac.yaml"
    rbac.write_text(COREDNS_RBAC)
    cp.apply_manifest(rbac)
    theirs = cp.token_kubeconfig("kube-system", "coredns", host=True)
    ours = cp.token_kubeconfig("kube-system", "netplane-dns", host=True)
    host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.1"
    servers: dict[str, list[str]] = {}
    port, ready, health, metrics = (free_port(host if i == 0 else "127.0.0.1")
                                    for i in range(4))  # fmt: skip
    if coredns is not None:
        for name, cache in (("coredns", KUBEADM_CACHE), ("coredns-cache", PLAIN_CACHE)):
            corefile = work / f"Corefile-{name}"
            corefile.write_text(COREFILE.format(port=port, host=host, health_port=health,
                                                ready_port=ready, metrics_port=metrics,
                                                kubeconfig=theirs, cache=cache))  # fmt: skip
            servers[name] = [str(coredns), "-conf", str(corefile)]
    else:
        results["coredns"] = {"skipped": "not built (netplane anchors build coredns)"}
    for n in workers:
        servers[f"netplane-{n}w"] = [
            NETPLANE, "dns", "serve", "--kubeconfig", str(ours), "--listen", f"{host}:{port}",
            "--workers", str(n), "--ttl", "30", "--pods", "insecure",
            "--ready-addr", f"127.0.0.1:{ready}", "--health-addr", f"127.0.0.1:{health}",
            "--metrics-addr", f"127.0.0.1:{metrics}",
        ]  # fmt: skip
    ns, name = next(key for key, ip in sorted(ips.items()) if ip)
    probe = Probe(host, port, f"{name}.{ns}.svc.cluster.local.", ips[ns, name])
    results["api_lists"] = api_lists(ours, results["start_rounds"] + 1)
    print("API server alone, both lists at once (request -> last byte):",
          ", ".join(f"{k} {v['median_s']} s ({v['bytes'] >> 20} MB)"
                    for k, v in results["api_lists"].items()), flush=True)  # fmt: skip
    try:
        for name, argv in servers.items():
            log = work / f"{name}.log"
            results[name] = measure(argv, ready, probe, queries, seconds, log)
            print(name, _line(results[name]), flush=True)
        _starts(servers, ready, probe, work, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _starts(servers: dict[str, list[str]], ready_port: int, probe: Probe, work: Path,
            results: dict[str, Any]) -> None:  # fmt: skip
    """START_ROUNDS more starts of every server, the order rotated each round: one start
    is noisy on a shared machine, and a fixed order lets the API server's state after the
    previous server's lists (its garbage, its caches) weigh on the next one."""
    names = list(servers)
    for r in range(results["start_rounds"]):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            results[name]["starts"].append(
                start_once(servers[name], ready_port, probe, work / f"{name}.log")
            )
    for name in names:
        every = [results[name]] + results[name]["starts"]
        for key in ("ready_s", "cpu_to_ready_s", "answers_s"):
            results[name][f"median_{key}"] = statistics.median(x[key] for x in every)
        print(name, "starts: ready", [x["ready_s"] for x in every], "s, answers",
              [x["answers_s"] for x in every], "s, CPU to ready",
              [x["cpu_to_ready_s"] for x in every], "s", flush=True)  # fmt: skip


LISTS = ("/api/v1/services", "/apis/discovery.k8s.io/v1/endpointslices")
FORMATS = {  # what netplane asks for, what CoreDNS (client-go) asks for
    "json": "application/json",
    "protobuf": "application/vnd.kubernetes.protobuf",
}


def api_lists(kubeconfig: Path, rounds: int) -> dict[str, Any]:
    """The API server's own part of a start: request -> last byte of the Service and
    EndpointSlice lists read at once (resourceVersion=0, from the watch cache, as both
    servers list) by a reader that does nothing else, in each server's format; median of
    ROUNDS, formats alternated. No server can be ready sooner after its requests go out."""
    from netplane.kube.transport import ApiError, HttpTransport, load_config

    transport = HttpTransport(load_config(str(kubeconfig)))

    def read(path: str, accept: str, out: list[int], failed: list[str]) -> None:
        try:
            response = transport.get(path, {"resourceVersion": "0"}, (5.0, 60.0), accept)
            try:
                for chunk in response.stream(1 << 16):
                    out.append(len(chunk))
            finally:
                response.release_conn()
        except (ApiError, OSError) as e:
            failed.append(f"{path}: {e}")

    seconds: dict[str, list[float]] = {name: [] for name in FORMATS}
    sizes: dict[str, int] = {}
    for r in range(rounds):
        for name in list(FORMATS) if r % 2 == 0 else list(FORMATS)[::-1]:
            got: list[int] = []
            failed: list[str] = []
            threads = [threading.Thread(target=read, args=(p, FORMATS[name], got, failed))
                       for p in LISTS]  # fmt: skip
            start = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds[name].append(round(time.monotonic() - start, 3))
            if failed:
                raise RuntimeError(f"listing as {name} failed: {'; '.join(failed)}")
            sizes[name] = sum(got)
    return {name: {"median_s": statistics.median(v), "seconds": v, "bytes": sizes[name]}
            for name, v in seconds.items()}  # fmt: skip


def _line(r: dict) -> str:
    lat = r["half_load"].get("latency_ms", {})
    return (f"ready {r['ready_s']} s, answers {r['answers_s']} s, cpu to ready "
            f"{r['cpu_to_ready_s']} s, idle RSS/PSS "
            f"{r['idle']['rss_mb']}/{r['idle']['pss_mb']} MB, QPS {r['peak']['qps']:.0f} "
            f"({r['peak']['server_cpu_share']} CPU, {r['peak']['queries_per_cpu_s']} per CPU s), "
            f"p50/p99 {lat.get(50)}/{lat.get(99)} ms, after load RSS/PSS "
            f"{r['after_load']['rss_mb']}/{r['after_load']['pss_mb']} MB")  # fmt: skip


def series(results: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"metric": "dns_api_lists", "unit": "s", "values": r["seconds"],
         "labels": {"format": name, "services": results["services"], "api": "kube-apiserver"}}
        for name, r in results.get("api_lists", {}).items()
    ]  # fmt: skip
    for server, r in results.items():
        if not isinstance(r, dict) or "peak" not in r:
            continue
        labels = {"server": server, "services": results["services"], "api": "kube-apiserver"}

        def add(
            metric: str, unit: str, value: float, labels: dict[str, Any] = labels, **extra: str
        ) -> None:
            out.append({"metric": metric, "unit": unit, "labels": labels | extra,
                        "values": [value]})  # fmt: skip

        starts = [r, *r.get("starts", ())]  # every start of this server: samples
        for metric, key in (
            ("dns_ready", "ready_s"),
            ("dns_answers", "answers_s"),
            ("dns_cpu_to_ready", "cpu_to_ready_s"),
        ):
            out.append({"metric": metric, "unit": "s", "labels": labels,
                        "values": [x[key] for x in starts]})  # fmt: skip
        add("dns_peak_qps", "queries/s", r["peak"]["qps"])
        add("dns_peak_cpu_share", "cores", r["peak"]["server_cpu_share"])
        add("dns_queries_per_cpu_second", "queries/CPU s", r["peak"]["queries_per_cpu_s"])
        for when in ("idle", "after_load"):
            add("dns_rss", "MB", r[when]["rss_mb"], when=when)
            add("dns_pss", "MB", r[when]["pss_mb"], when=when)
        for p, ms in r["half_load"].get("latency_ms", {}).items():
            add("dns_latency_half_load", "ms", ms, percentile=str(p))
    return out
