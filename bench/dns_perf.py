"""DNS benchmark: `netplane dns serve` versus a straightforward dnslib server, with dnsperf.

Both servers load the same generated cluster (10k services, 50k endpoints; `quick`: 1k /
5k) and answer the same realistic query mix on loopback: hits on service names, search-path
misses (the NXDOMAINs ndots:5 produces), headless services and PTR lookups. Reported: peak
QPS, latency percentiles at half of our peak (from dnsperf -v), memory, start-up time and
where the time goes (py-spy on one worker under load).

    python -m netplane.bench.dns_perf [--quick] [--output-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from netplane.testing.ports import free_port

NETPLANE = str(Path(sys.executable).with_name("netplane"))
PY_SPY = Path(sys.executable).with_name("py-spy")
ZONE = "cluster.local"
Manifest = dict[str, Any]  # one object as JSON


class EventLike(Protocol):
    def set(self) -> None: ...


def make_objects(
    services: int, endpoints_per_service: int = 5, headless_every: int = 20
) -> list[Manifest]:
    """Services spread over 50 namespaces; every `headless_every`-th one headless."""
    objects: list[Manifest] = []
    for i in range(services):
        ns, name = f"ns{i % 50}", f"svc{i}"
        headless = i % headless_every == 0
        spec: Manifest = {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        spec["clusterIP"] = (
            "None" if headless else f"10.{96 + i // 65536}.{i // 256 % 256}.{i % 256}"
        )
        objects += service_manifests(
            ns, name, spec, i * endpoints_per_service, endpoints_per_service
        )
    return objects


def service_manifests(
    ns: str, name: str, spec: Manifest, first: int, endpoints: int, ready: bool | None = None
) -> list[Manifest]:
    """Service NS/NAME with SPEC and its one slice of ENDPOINTS addresses in 10.200/14 from
    index FIRST, each with `conditions.ready` READY (None: no conditions)."""
    eps: list[Manifest] = [
        {"addresses": [f"10.{200 + n // 65536}.{n // 256 % 256}.{n % 256}"]}
        for n in range(first, first + endpoints)
    ]
    if ready is not None:
        for ep in eps:
            ep["conditions"] = {"ready": ready}
    return [
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": name, "namespace": ns}, "spec": spec},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": f"{name}-1", "namespace": ns,
                      "labels": {"kubernetes.io/service-name": name}},
         "addressType": "IPv4", "endpoints": eps,
         "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]},
    ]  # fmt: skip


def make_queries(objects: list[Manifest], count: int, seed: int = 7) -> list[str]:
    """The mix: 45% service hits, 30% search-path misses, 15% headless, 10% PTR."""
    rng = random.Random(seed)
    services = [o for o in objects if o["kind"] == "Service"]
    clusterip = [s for s in services if s["spec"]["clusterIP"] != "None"]
    headless = [s for s in services if s["spec"]["clusterIP"] == "None"]
    lines = []
    for _ in range(count):
        roll = rng.random()
        s = rng.choice(headless if 0.75 <= roll < 0.9 else clusterip)
        fqdn = f"{s['metadata']['name']}.{s['metadata']['namespace']}.svc.{ZONE}"
        if roll < 0.45:
            lines.append(f"{fqdn} A")
        elif roll < 0.75:  # `curl svcN.nsM` from a pod in another namespace: first suffix misses
            asked = f"{s['metadata']['name']}.{s['metadata']['namespace']}"
            lines.append(f"{asked}.ns{rng.randrange(50, 60)}.svc.{ZONE} A")
        elif roll < 0.9:
            lines.append(f"{fqdn} A")
        else:
            ip = s["spec"]["clusterIP"].split(".")
            lines.append(f"{'.'.join(reversed(ip))}.in-addr.arpa PTR")
    return lines


def write_cluster(objects: list[Manifest], directory: Path) -> None:
    """One manifest file per namespace, as a GitOps tree would be (a change re-reads one)."""
    directory.mkdir(parents=True, exist_ok=True)
    by_ns: dict[str, list] = {}
    for o in objects:
        by_ns.setdefault(o["metadata"]["namespace"], []).append(o)
    for ns, items in by_ns.items():
        tmp = directory / f".{ns}.tmp"
        tmp.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
        os.replace(tmp, directory / f"{ns}.json")


def change_latency(
    objects: list[Manifest], directory: Path, host: str, port: int, repeats: int = 5
) -> dict:
    """Manifest change -> first answer with the new service (polled every 2 ms), in ms."""
    from dnslib import DNSRecord

    ns_objects = [o for o in objects if o["metadata"]["namespace"] == "ns1"]
    samples = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        for i in range(repeats):
            name = f"late{i}"
            svc = {"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": name, "namespace": "ns1"},
                   "spec": {"clusterIP": f"10.250.0.{i + 1}", "ports": [{"port": 80}]}}  # fmt: skip
            ns_objects.append(svc)
            query = bytes(DNSRecord.question(f"{name}.ns1.svc.{ZONE}").pack())
            t0 = time.monotonic()
            write_cluster(ns_objects, directory)
            while time.monotonic() - t0 < 10:
                s.sendto(query, (host, port))
                try:
                    reply = s.recv(4096)
                except TimeoutError:
                    continue
                if reply[3] & 0x0F == 0 and reply[7]:  # NOERROR with an answer
                    samples.append(1000 * (time.monotonic() - t0))
                    break
                time.sleep(0.002)
    samples.sort()
    return {"median_ms": round(samples[len(samples) // 2], 1), "max_ms": round(samples[-1], 1),
            "samples": len(samples), "poll_interval_ms": 50}  # fmt: skip


def _field(pattern: str, text: str) -> str:
    """The first group of PATTERN in dnsperf's output; says which figure is missing."""
    m = re.search(pattern, text)
    if m is None:
        raise RuntimeError(f"dnsperf printed no {pattern!r}: {text[-500:]}")
    return m.group(1)


def wait_ready(port: int, proc: subprocess.Popen[Any], timeout: float = 300.0) -> float:
    """When (time.monotonic()) a DNS server's /ready on 127.0.0.1:PORT first said 200,
    polled every 10 ms (a start's time to ready is measured by it); raises if PROC exits
    first or TIMEOUT passes."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited during start-up")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
                if r.status == 200:
                    return time.monotonic()
        except OSError:
            pass
        time.sleep(0.01)
    raise TimeoutError(f"{proc.args!r} not ready after {timeout:g} s")


def _floor_server(manifests: str, host: str, port: int, ready: EventLike) -> None:
    """The straightforward peer: dnslib DNSServer + BaseResolver over the same index."""
    from dnslib.server import BaseResolver, DNSServer

    from netplane.dns.answer import resolve
    from netplane.dns.catalog import build_catalog
    from netplane.dns.records import ZoneConfig
    from netplane.dns.wire import rr
    from netplane.model import load_path
    from netplane.state import ClusterState

    state = ClusterState()
    state.apply(load_path(manifests).objects)
    state.mark_synced()
    index = build_catalog(state.snapshot(), ZoneConfig(), serial=1)

    class Resolver(BaseResolver):
        def resolve(self, request: Any, handler: Any) -> Any:
            reply = request.reply()
            q = request.q
            answer = resolve(index, str(q.qname).rstrip(".").lower(), q.qtype)
            if answer is None:
                reply.header.rcode = 5
                return reply
            reply.header.rcode = answer.rcode
            for name, record in answer.answer:
                reply.add_answer(rr(name, record, 5))
            for name, record in answer.authority:
                reply.add_auth(rr(name, record, 5))
            for name, record in answer.additional:
                reply.add_ar(rr(name, record, 5))
            return reply

    server = DNSServer(Resolver(), port=port, address=host, logger=_Quiet())
    server.start_thread()
    ready.set()
    while server.isAlive():
        time.sleep(0.5)


class _Quiet:
    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *a, **k: None


def dnsperf(
    host: str, port: int, queries: Path, seconds: int, qps: int = 0, verbose: bool = False
) -> dict[str, Any]:
    cmd = ["dnsperf", "-s", host, "-p", str(port), "-d", str(queries), "-l", str(seconds),
           "-c", "8", "-T", "1", "-q", "200", "-t", "2"]  # fmt: skip
    if qps:
        cmd += ["-Q", str(qps)]
    if verbose:
        cmd.append("-v")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    result: dict[str, Any] = {
        "qps": float(_field(r"Queries per second:\s+([\d.]+)", out)),
        "avg_latency_ms": 1000 * float(_field(r"Average Latency \(s\):\s+([\d.]+)", out)),
        "lost": int(_field(r"Queries lost:\s+(\d+)", out)),
        "completed": int(_field(r"Queries completed:\s+(\d+)", out)),
        "rcodes": dict(re.findall(r"(NOERROR|NXDOMAIN|SERVFAIL|REFUSED|FORMERR) (\d+)", out)),
    }
    if verbose:
        lat = sorted(float(x) for x in re.findall(r"^> \S+ \S+ \S+ ([\d.]+)$", out, re.M))
        if lat:
            result["latency_ms"] = {
                p: round(1000 * lat[min(len(lat) - 1, int(len(lat) * p / 100))], 3)
                for p in (50, 90, 99, 99.9)
            }
    return result


def engine_cost(manifests: Path, lines: list[str]) -> dict:
    """In-process CPU cost of loading, indexing and the answer path alone (no sockets);
    hits: best of 5 passes over the mix with a warm cache; misses: a cold cache."""
    from dnslib import DNSRecord

    from netplane.dns.catalog import build_catalog
    from netplane.dns.engine import Engine
    from netplane.dns.records import ZoneConfig
    from netplane.model import load_path
    from netplane.state import ClusterState

    clock = time.process_time  # CPU time: the machine may be shared, wall time would lie
    state = ClusterState()
    t0 = clock()
    state.apply(load_path(manifests).objects)
    state.mark_synced()
    t1 = clock()
    index = build_catalog(state.snapshot(), ZoneConfig(), serial=1)
    t2 = clock()
    engine = Engine(ZoneConfig())
    engine.install(index)
    wires = [bytes(DNSRecord.question(*line.split()).pack()) for line in lines]
    addr = ("127.0.0.1", 5353)
    for w in wires:  # warm the compiled-answer cache
        engine.respond(w, addr)
    best = float("inf")
    for _ in range(5):
        start = clock()
        for w in wires:
            engine.respond(w, addr)
        best = min(best, clock() - start)
    cold = Engine(ZoneConfig())
    cold.install(index)
    start = clock()
    for w in wires[:2000]:
        cold.respond(w, addr)
    miss = (clock() - start) / 2000
    return {
        "load_cpu_s": round(t1 - t0, 2),
        "index_build_cpu_s": round(t2 - t1, 2),
        "reverse_names": len(index.reverse),
        "hit_us_per_query": round(1e6 * best / len(wires), 2),
        "miss_us_per_query": round(1e6 * miss, 1),
    }


def find_coredns() -> str | None:
    """A CoreDNS binary for the optional side-by-side ($NETPLANE_COREDNS, PATH, ~/go/bin)."""
    for candidate in (os.environ.get("NETPLANE_COREDNS"), shutil.which("coredns"),
                      str(Path.home() / "go/bin/coredns")):  # fmt: skip
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def coredns_zone_files(manifests: Path, work: Path, host: str, port: int) -> Path:
    """The same names as zone files (CoreDNS's `file` plugin), and a Corefile serving them."""
    from netplane.dns.records import (
        SOA,
        SRV,
        TXT,
        ZoneConfig,
        service_records,
        static_records,
    )
    from netplane.model import load_path
    from netplane.state import ClusterState

    state = ClusterState()
    state.apply(load_path(manifests).objects)
    state.mark_synced()
    snap = state.snapshot()
    names = static_records(ZoneConfig(), snap.services, 1)
    for key, svc in snap.services.items():
        for name, records in service_records(svc, snap.slices_for(key), ZONE).items():
            names[name] = tuple(dict.fromkeys((*names.get(name, ()), *records)))
    soa = "ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5"
    zones: dict[str, list[str]] = {"cluster.local": [], "10.in-addr.arpa": []}
    for name, records in names.items():
        zone = "cluster.local" if name.endswith("cluster.local") else "10.in-addr.arpa"
        for r in records:
            if r.rtype == SOA:
                continue
            if r.rtype == SRV:
                data = " ".join(str(v) for v in r.value[:3]) + f" {r.value[3]}."
            elif r.rtype == TXT:
                data = f'"{r.value}"'
            else:
                v = str(r.value)
                data = v if ":" in v or v[0].isdigit() else f"{v}."
            kind = {1: "A", 2: "NS", 5: "CNAME", 12: "PTR", 16: "TXT", 28: "AAAA", 33: "SRV"}
            zones[zone].append(f"{name}. 5 IN {kind[r.rtype]} {data}")
    blocks = []
    for zone, lines in zones.items():
        path = work / f"db.{zone}"
        head = [f"{zone}. 5 IN SOA {soa}", f"{zone}. 5 IN NS ns.dns.cluster.local."]
        path.write_text("\n".join(head + lines) + "\n")
        blocks.append(f"{zone}:{port} {{\n    bind {host}\n    file {path} {zone}\n}}\n")
    corefile = work / "Corefile"
    corefile.write_text("".join(blocks))
    return corefile


def _rss_mb(pid: int) -> float:
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    total = 0
    for p in pids:
        m = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{p}/status").read_text())
        total += int(m.group(1)) if m else 0
    return round(total / 1024, 1)


def profile(pid: int, host: str, port: int, queries: Path, seconds: int) -> list[tuple[str, float]]:
    """Self time by line in the serving thread of one worker under load (py-spy raw stacks).

    Idle samples are kept: the serving thread's time in recvfrom() is part of the answer.
    """
    if not PY_SPY.exists():
        return []
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    if not children:
        return []
    worker = children[0]  # the workers are forked from the supervisor (same command line)
    out = Path(tempfile.mkdtemp()) / "stacks.txt"
    spy = subprocess.Popen([str(PY_SPY), "record", "-p", worker, "-d", str(seconds), "-r",
                            "250", "-f", "raw", "-o", str(out), "--nonblocking", "--idle"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    dnsperf(host, port, queries, seconds)
    try:
        spy.wait(seconds + 30)
    except subprocess.TimeoutExpired:  # py-spy is slow to attach under emulation: no profile
        spy.kill()
        spy.wait()
    self_time: Counter = Counter()
    for line in out.read_text().splitlines() if out.exists() else []:
        stack, _, n = line.rpartition(" ")
        if "serve_udp" not in stack:
            continue  # only the serving thread: the others wait on timers
        leaf = stack.split(";")[-1]
        self_time[re.sub(r" \(.*/(netplane|site-packages|lib/python3\.\d+)/", " (", leaf)] += int(n)
    shutil.rmtree(out.parent, ignore_errors=True)
    total = sum(self_time.values()) or 1
    return [(f, round(100 * n / total, 1)) for f, n in self_time.most_common(12)]


def run(quick: bool = False, output_dir: str | Path | None = None, workers: int = 2) -> dict:
    """Run the whole comparison; returns (and writes) the figures."""
    services = 1_000 if quick else 10_000
    seconds = 3 if quick else 10
    work = Path(tempfile.mkdtemp(prefix="npdns-bench-"))
    host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.1"
    results: dict = {"services": services, "endpoints": services * 5, "seconds": seconds,
                     "machine": {"cpus": multiprocessing.cpu_count()}}  # fmt: skip
    try:
        objects = make_objects(services)
        manifests = work / "cluster"
        write_cluster(objects, manifests)
        lines = make_queries(objects, 20_000)
        queries = work / "queries.txt"
        queries.write_text("\n".join(lines) + "\n")
        results["mix"] = dict(Counter(line.split()[1] for line in lines))
        results["engine"] = engine_cost(manifests, lines)

        port, ready_port = free_port(host), free_port("127.0.0.1")
        t0 = time.monotonic()
        proc = subprocess.Popen([NETPLANE, "dns", "serve", "--manifests", str(manifests),
                                 "--listen", f"{host}:{port}", "--workers", str(workers),
                                 "--ready-addr", f"127.0.0.1:{ready_port}",
                                 "--metrics-addr", "off", "--health-addr", "off"])  # fmt: skip
        try:
            wait_ready(ready_port, proc)
            ours: dict[str, Any] = {
                "startup_s": round(time.monotonic() - t0, 2),
                "workers": workers,
            }
            dnsperf(host, port, queries, 2)  # warm the answer caches
            ours["peak"] = dnsperf(host, port, queries, seconds)
            half = int(ours["peak"]["qps"] / 2)
            ours["half_load"] = dnsperf(host, port, queries, seconds, qps=half, verbose=True)
            ours["rss_mb"] = _rss_mb(proc.pid)
            ours["profile_self_pct"] = profile(proc.pid, host, port, queries, min(seconds, 5))
            ours["change_to_answer"] = change_latency(objects, manifests, host, port)
        finally:
            proc.terminate()
            proc.wait(15)
        results["netplane"] = ours

        fport = free_port(host)
        ctx = multiprocessing.get_context("spawn")
        ready = ctx.Event()
        floor = ctx.Process(target=_floor_server, args=(str(manifests), host, fport, ready))
        floor.start()
        try:
            ready.wait(300)
            results["dnslib_floor"] = {"peak": dnsperf(host, fport, queries, seconds)}
            assert floor.pid is not None  # started
            results["dnslib_floor"]["rss_mb"] = _rss_mb(floor.pid)
        finally:
            floor.terminate()
            floor.join(10)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    coredns = find_coredns()
    if coredns:
        results["coredns"] = run_coredns(coredns, quick, host, seconds)
    else:
        results["coredns"] = {"skipped": "no coredns binary (set NETPLANE_COREDNS)"}
    results["series"] = _series(results)
    if output_dir is not None:  # `netplane bench dns` writes its own envelope instead
        out_dir = Path(output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        name = f"dns_perf{'_quick' if quick else ''}.json"
        (out_dir / name).write_text(json.dumps(results, indent=2))
    return results


def run_coredns(binary: str, quick: bool, host: str, seconds: int) -> dict:
    """CoreDNS (file plugin, same names, same query mix) under the same dnsperf load."""
    work = Path(tempfile.mkdtemp(prefix="npdns-coredns-"))
    try:
        objects = make_objects(1_000 if quick else 10_000)
        manifests = work / "cluster"
        write_cluster(objects, manifests)
        queries = work / "queries.txt"
        queries.write_text("\n".join(make_queries(objects, 20_000)) + "\n")
        port = free_port(host)
        corefile = coredns_zone_files(manifests, work, host, port)
        proc = subprocess.Popen([binary, "-conf", str(corefile), "-quiet"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                probe = subprocess.run(["dig", "+short", "+time=1", "+tries=1", "-p", str(port),
                                        f"@{host}", "dns-version.cluster.local", "TXT"],
                                       capture_output=True, text=True)  # fmt: skip
                if probe.stdout.strip():
                    break
                time.sleep(0.2)
            result: dict[str, Any] = {"peak": dnsperf(host, port, queries, seconds)}
            half = int(result["peak"]["qps"] / 2)
            result["half_load"] = dnsperf(host, port, queries, seconds, qps=half, verbose=True)
            result["rss_mb"] = _rss_mb(proc.pid)
            version = subprocess.run([binary, "-version"], capture_output=True, text=True)
            result["version"] = version.stdout.strip().splitlines()[0] if version.stdout else ""
            return result
        finally:
            proc.terminate()
            proc.wait(15)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _series(results: dict) -> list[dict]:
    """The headline figures in the bench framework's series format."""
    series = []
    for server in ("netplane", "dnslib_floor", "coredns"):
        if "peak" in results.get(server, {}):
            peak = results[server]["peak"]["qps"]
            series.append({"metric": "dns_peak_qps", "unit": "queries/s",
                           "labels": {"server": server}, "values": [peak]})  # fmt: skip
    for server in ("netplane", "coredns"):
        for p, ms in results.get(server, {}).get("half_load", {}).get("latency_ms", {}).items():
            series.append({"metric": "dns_latency_half_load", "unit": "ms",
                           "labels": {"server": server, "percentile": str(p)},
                           "values": [ms]})  # fmt: skip
    return series


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output-dir", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(run(args.quick, args.output_dir, args.workers), indent=2))


if __name__ == "__main__":
    main()
