"""Which Kubernetes client should feed netplane: CPU and memory of list + watch, measured.

A fake API server (netplane.testing.fakeapi) runs in its own process with S services and S
EndpointSlices of E endpoints, and changes one EndpointSlice RATE times a second. Each
client runs in a fresh process (so its imports and peak RSS are its own) and does what the
source must do: list both kinds in pages of 500, turn every item into netplane's model
objects with the same parser, put them into a ClusterState, then watch both kinds for W
seconds. Figures per client: RSS after import, list wall and CPU time, RSS after the list,
peak RSS, CPU share while following RATE events/s, events received.

    .venv/bin/python -m netplane.bench.kube_client [--services 10000] [--endpoints 5]
        [--rate 100] [--watch-seconds 10] [--repeat 1] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netplane.bench._results import DEFAULT_OUTPUT_DIR, Series, new_result, write_result

if TYPE_CHECKING:  # the clients compared measure their own imports
    from netplane.model import KubeObject, ObjectKey
    from netplane.state import Stored

CLIENTS = (
    "urllib3-raw",
    "netplane",
    "kubernetes-typed-raw",
    "kubernetes-models",
    "lightkube-models",
)
KINDS = {
    "Service": ("v1", "/api/v1/services"),
    "EndpointSlice": ("discovery.k8s.io/v1", "/apis/discovery.k8s.io/v1/endpointslices"),
}


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- the server process ------------------------------------------------------------------


def serve(services: int, endpoints: int, rate: float) -> None:
    from netplane.testing.fakeapi import FakeApiServer, make_slice, synthetic_cluster

    api = FakeApiServer(history=100_000, bookmark_interval=5.0).start()
    cluster = synthetic_cluster(services, endpoints)
    api.load(cluster)
    slices = [o for o in cluster if o["kind"] == "EndpointSlice"]
    print(api.port, flush=True)
    rng = random.Random(1)
    n, start = 0, time.monotonic()
    while True:  # runs until the parent kills it
        n += 1
        s = rng.choice(slices)
        meta = s["metadata"]
        ips = [f"10.250.{n // 256 % 256}.{n % 256}", *(e["addresses"][0] for e in s["endpoints"])]
        api.put(
            make_slice(
                meta["namespace"],
                meta["labels"]["kubernetes.io/service-name"],
                meta["name"],
                ips[:endpoints],
            )
        )
        time.sleep(max(0.0, start + n / rate - time.monotonic()))


# ---- the client processes ----------------------------------------------------------------


class _Counting:
    """A ClusterState whose apply() calls are counted (one per watch event)."""

    def __init__(self) -> None:
        from netplane.state import ClusterState

        self.state = ClusterState()
        self.calls = 0
        original = self.state.apply

        def apply(upserts: Iterable[Stored] = (), deletes: Iterable[ObjectKey] = ()) -> int:
            self.calls += 1
            return original(upserts, deletes)

        self.state.apply = apply  # type: ignore[method-assign]


def _parse(item: dict, kind: str) -> list[KubeObject]:
    from netplane.model import parse_object

    item.setdefault("kind", kind)
    item.setdefault("apiVersion", KINDS[kind][0])
    return parse_object(item)


def _run_netplane(kubeconfig: str, target: _Counting, stop: threading.Event) -> None:
    from netplane.kube import api_client
    from netplane.kube.source import KubeApiSource
    from netplane.sources import start_source

    source = KubeApiSource(api_client(kubeconfig=kubeconfig), set(KINDS))
    _, stop_source = start_source(source, target.state)
    target.state.wait_synced()
    target.listed = time.perf_counter(), time.process_time()  # type: ignore[attr-defined]
    stop.wait()
    stop_source.set()


def _run_urllib3(server: str, target: _Counting, stop: threading.Event) -> None:
    import urllib3

    pool = urllib3.PoolManager()
    versions = {}
    for kind, (_, path) in KINDS.items():
        token = ""
        objects: list[KubeObject] = []
        while True:
            url = f"{server}{path}?limit=500" + (f"&continue={token}" if token else "")
            page = json.loads(pool.request("GET", url).data)
            objects.extend(o for item in page["items"] for o in _parse(item, kind))
            token = page["metadata"].get("continue")
            if not token:
                break
        target.state.apply(objects)
        versions[kind] = page["metadata"]["resourceVersion"]
    target.listed = time.perf_counter(), time.process_time()  # type: ignore[attr-defined]

    def watch(kind: str) -> None:
        url = f"{server}{KINDS[kind][1]}?watch=1&allowWatchBookmarks=true"
        resp = pool.request("GET", f"{url}&resourceVersion={versions[kind]}", preload_content=False)
        _follow_raw(resp, kind, target)

    for kind in KINDS:
        threading.Thread(target=watch, args=(kind,), daemon=True).start()
    stop.wait()


def _follow_raw(response: Any, kind: str, target: _Counting) -> None:
    pending = b""
    for chunk in response.stream(amt=None):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            event = json.loads(line)
            if event["type"] in ("ADDED", "MODIFIED"):
                target.state.apply(_parse(event["object"], kind))


def _kubernetes_calls(kubeconfig: str) -> tuple[Any, dict[str, Any]]:
    """The official client's API client and its list calls of the kinds we read."""
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=kubeconfig)
    calls: dict[str, Any] = {
        "Service": client.CoreV1Api(api).list_service_for_all_namespaces,
        "EndpointSlice": client.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces,
    }
    return api, calls


def _kubernetes_list(
    calls: dict[str, Any],
    target: _Counting,
    fetch: Callable[[Any, str | None], tuple[list[Any], str | None, str]],
) -> dict[str, str]:
    """List each kind of CALLS page by page (FETCH(call, continue token) -> (raw items, next
    token, resource version)) into TARGET's state; the resource versions to watch from."""
    versions = {}
    for kind, call in calls.items():
        token = None
        objects: list[KubeObject] = []
        while True:
            items, token, version = fetch(call, token)
            objects.extend(o for item in items for o in _parse(item, kind))
            if not token:
                break
        target.state.apply(objects)
        versions[kind] = version
    target.listed = time.perf_counter(), time.process_time()  # type: ignore[attr-defined]
    return versions


def _run_kubernetes_typed_raw(kubeconfig: str, target: _Counting, stop: threading.Event) -> None:
    """The typed methods with `_preload_content=False`: raw JSON, but pydantic-validated calls."""
    _api, calls = _kubernetes_calls(kubeconfig)

    def fetch(call: Any, token: str | None) -> tuple[list[Any], str | None, str]:
        page = json.loads(call(limit=500, _continue=token, _preload_content=False).data)
        meta = page["metadata"]
        return page["items"], meta.get("continue"), meta["resourceVersion"]

    versions = _kubernetes_list(calls, target, fetch)
    for kind, call in calls.items():
        response = call(
            watch=True,
            allow_watch_bookmarks=True,
            resource_version=versions[kind],
            _preload_content=False,
        )
        threading.Thread(target=_follow_raw, args=(response, kind, target), daemon=True).start()
    stop.wait()


def _run_kubernetes_models(kubeconfig: str, target: _Counting, stop: threading.Event) -> None:
    from kubernetes import watch

    api, calls = _kubernetes_calls(kubeconfig)

    def fetch(call: Any, token: str | None) -> tuple[list[Any], str | None, str]:
        page = call(limit=500, _continue=token)
        items = [api.sanitize_for_serialization(item) for item in page.items]
        return items, page.metadata._continue, page.metadata.resource_version

    versions = _kubernetes_list(calls, target, fetch)

    def follow(kind: str) -> None:
        for event in watch.Watch().stream(
            calls[kind], resource_version=versions[kind], allow_watch_bookmarks=True
        ):
            if event["type"] in ("ADDED", "MODIFIED"):
                raw = api.sanitize_for_serialization(event["object"])
                target.state.apply(_parse(raw, kind))

    for kind in calls:
        threading.Thread(target=follow, args=(kind,), daemon=True).start()
    stop.wait()


def _run_lightkube(kubeconfig: str, target: _Counting, stop: threading.Event) -> None:
    from lightkube import ALL_NS, Client, KubeConfig
    from lightkube.resources.core_v1 import Service
    from lightkube.resources.discovery_v1 import EndpointSlice

    kc = KubeConfig.from_file(kubeconfig)
    resources: dict[str, Any] = {"Service": Service, "EndpointSlice": EndpointSlice}
    versions = {}
    for kind, res in resources.items():
        listing: Any = Client(config=kc).list(res, namespace=ALL_NS, chunk_size=500)
        objects = [o for item in listing for o in _parse(item.to_dict(), kind)]
        target.state.apply(objects)
        versions[kind] = listing.resourceVersion

    target.listed = time.perf_counter(), time.process_time()  # type: ignore[attr-defined]

    def follow(kind: str) -> None:
        watcher: Any = Client(config=kc).watch(
            resources[kind], namespace=ALL_NS, resource_version=versions[kind]
        )
        for event_type, obj in watcher:
            if event_type in ("ADDED", "MODIFIED"):
                target.state.apply(_parse(obj.to_dict(), kind))

    for kind in resources:
        threading.Thread(target=follow, args=(kind,), daemon=True).start()
    stop.wait()


def run_client(name: str, kubeconfig: str, server: str, watch_seconds: float) -> dict:
    t_import = time.perf_counter()
    if name in ("kubernetes-models", "kubernetes-typed-raw", "netplane"):
        import kubernetes.client  # noqa: F401
    elif name == "lightkube-models":
        import lightkube  # noqa: F401
    else:
        import urllib3  # noqa: F401
    import netplane.model
    import netplane.state  # noqa: F401

    figures = {"import_s": time.perf_counter() - t_import, "rss_import_mb": _rss_mb()}
    target, stop = _Counting(), threading.Event()
    runner = {
        "urllib3-raw": lambda: _run_urllib3(server, target, stop),
        "netplane": lambda: _run_netplane(kubeconfig, target, stop),
        "kubernetes-typed-raw": lambda: _run_kubernetes_typed_raw(kubeconfig, target, stop),
        "kubernetes-models": lambda: _run_kubernetes_models(kubeconfig, target, stop),
        "lightkube-models": lambda: _run_lightkube(kubeconfig, target, stop),
    }[name]
    wall0, cpu0 = time.perf_counter(), time.process_time()
    thread = threading.Thread(target=runner, daemon=True)
    thread.start()
    while not hasattr(target, "listed"):
        time.sleep(0.01)
    wall1, cpu1 = target.listed
    snap = target.state.snapshot()
    figures |= {
        "list_s": wall1 - wall0,
        "list_cpu_s": cpu1 - cpu0,
        "rss_listed_mb": _rss_mb(),
        "services": len(snap.services),
        "slices": sum(len(s) for s in snap.slices.values()),
    }
    time.sleep(1.0)  # let the watches catch up with what happened during the list
    calls0, cpu0, wall0 = target.calls, time.process_time(), time.perf_counter()
    time.sleep(watch_seconds)
    calls1, cpu1, wall1 = target.calls, time.process_time(), time.perf_counter()
    figures |= {
        "watch_cpu_pct": 100 * (cpu1 - cpu0) / (wall1 - wall0),
        "watch_events_per_s": (calls1 - calls0) / (wall1 - wall0),
        "rss_peak_mb": _peak_mb(),
    }
    stop.set()
    return figures


# ---- the driver -------------------------------------------------------------------------

_UNITS = {"_s": "s", "_mb": "MiB", "_pct": "%", "_per_s": "1/s"}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--services", type=int, default=10_000)
    p.add_argument("--endpoints", type=int, default=5, help="endpoints per service")
    p.add_argument("--rate", type=float, default=100.0, help="watch events per second")
    p.add_argument("--watch-seconds", type=float, default=10.0)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--clients", default=",".join(CLIENTS))
    p.add_argument("--out", default=str(DEFAULT_OUTPUT_DIR))
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--client", help=argparse.SUPPRESS)
    p.add_argument("--kubeconfig", help=argparse.SUPPRESS)
    p.add_argument("--server", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.services, args.endpoints, args.rate)
        return
    if args.client:
        figures = run_client(args.client, args.kubeconfig, args.server, args.watch_seconds)
        print(json.dumps(figures), flush=True)
        os._exit(0)  # watch threads of some clients cannot be stopped cleanly

    from netplane.testing.fakeapi import write_kubeconfig  # here: clients measure their imports

    me = [sys.executable, "-m", "netplane.bench.kube_client"]
    sizes = ["--services", str(args.services), "--endpoints", str(args.endpoints)]
    server = subprocess.Popen(
        [*me, "--serve", *sizes, "--rate", str(args.rate)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    series: list[Series] = []
    try:
        assert server.stdout is not None  # piped
        url = f"http://127.0.0.1:{server.stdout.readline().strip()}"
        with tempfile.TemporaryDirectory() as tmp:
            kubeconfig = write_kubeconfig(Path(tmp) / "kubeconfig", url)
            runs: dict[str, list[dict]] = {}
            for _ in range(args.repeat):
                for name in args.clients.split(","):
                    out = subprocess.run(
                        [*me, "--client", name, "--kubeconfig", kubeconfig,
                         "--server", url, "--watch-seconds", str(args.watch_seconds)],
                        capture_output=True, text=True, timeout=900, check=True,
                    ).stdout  # fmt: skip
                    runs.setdefault(name, []).append(json.loads(out.strip().splitlines()[-1]))
    finally:
        server.kill()
        server.wait()
    labels = {"services": args.services, "endpoints": args.services * args.endpoints}
    print(
        f"{args.services} services / {args.services * args.endpoints} endpoints, watch "
        f"{args.rate:g} events/s for {args.watch_seconds:g} s (median of {args.repeat})"
    )
    header = ["client", *runs[next(iter(runs))][0]]
    print(" | ".join(header))
    for name, samples in runs.items():
        med = {k: sorted(s[k] for s in samples)[len(samples) // 2] for k in samples[0]}
        print(" | ".join([name, *(f"{v:.3g}" if isinstance(v, float) else str(v)
                                  for v in med.values())]))  # fmt: skip
        for metric in samples[0]:
            unit = next((u for suffix, u in _UNITS.items() if metric.endswith(suffix)), "")
            series.append(
                Series(
                    metric,
                    unit,
                    {**labels, "client": name, "rate": args.rate},
                    tuple(float(s[metric]) for s in samples),
                )
            )
    result = new_result("kube_client", vars(args) | {"serve": None}, series)
    print("wrote", write_result(result, args.out))


if __name__ == "__main__":
    main()
