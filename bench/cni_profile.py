"""Where the agent path's time goes: launcher start, transport and framing, and the agent's
own work on an ADD and a DEL split into netlink round trips, IPAM store I/O, iptables,
sysctls and the gratuitous ARP.

- `launcher`: the static launcher answering VERSION itself (exec only, no socket);
- `transport`: the launcher forwarding an ADD the agent refuses at once (undecodable stdin,
  code 6): exec, connect, the namespace descriptors, the frame both ways, the agent's decode;
- `ADD`/`DEL` agent-side: `netplane.cni.agent.answer` called in this process, in a thread
  entered into the host namespace, as an agent worker runs it (no socket); wall times first,
  then the same calls again under cProfile for the split (cProfile slows Python code down, so
  the split is a share of the profiled time, not of the wall time).

Run: `python -m netplane.bench.cni_profile [--quick]` (root; every namespace it makes is
removed, also on SIGTERM or Ctrl-C). Same host namespaces and configs as `cni_latency`.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from typing import Any

from netplane.bench.cni_latency import _conf, _setup
from netplane.cni.inflight import STATE_ENV
from netplane.signals import sigterm_unwinds

# what a profiled function is counted as: (module file suffix, function name) -> category
CATEGORIES: dict[tuple[str, str], str] = {
    ("cni/rtnl.py", "request"): "netlink round trips",
    ("cni/ipam.py", "allocate"): "IPAM (store I/O, lock)",
    ("cni/ipam.py", "release"): "IPAM (store I/O, lock)",
    ("cni/masq.py", "setup"): "iptables-restore (ipMasq)",
    ("cni/masq.py", "teardown_known"): "iptables-restore (ipMasq)",
    ("cni/netops.py", "write_sysctl"): "sysctl writes",
    ("cni/netops.py", "gratuitous_arp"): "gratuitous ARP",
    ("cni/inflight.py", "pending"): "in-progress marker",
    ("cni/inflight.py", "forget"): "in-progress marker",
}


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


def _exec(binary: str, env: dict[str, str], stdin: bytes) -> float:
    start = time.perf_counter()
    subprocess.run([binary], input=stdin, env=env, capture_output=True, check=False)
    return time.perf_counter() - start


def _frame(command: str, pod: str, conf: bytes) -> tuple[bytes, list[int]]:
    from netplane.cni.client import encode_request

    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": pod,
        "CNI_NETNS": f"/var/run/netns/{pod}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": os.path.dirname(sys.executable),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    }
    fds = [os.open("/proc/thread-self/ns/net", os.O_RDONLY)]  # the caller: this thread
    fds.append(os.open(env["CNI_NETNS"], os.O_RDONLY))
    return encode_request(env, conf), fds


def _agent_side(pods: list[str], conf: bytes, profile: bool) -> dict[str, Any]:
    """ADD then DEL every pod through agent.answer in this (host-namespace) thread."""
    from netplane.cni.agent import answer

    st = os.stat("/proc/thread-self/ns/net")
    own = (st.st_dev, st.st_ino)
    times: dict[str, list[float]] = {"ADD": [], "DEL": []}
    profilers = {"ADD": cProfile.Profile(), "DEL": cProfile.Profile()}
    for command in ("ADD", "DEL"):
        profiler = profilers[command] if profile else None
        for pod in pods:
            data, fds = _frame(command, pod, conf)
            try:
                if profiler is not None:
                    profiler.enable()
                start = time.perf_counter()
                reply, sent = answer(data, fds, own)
                times[command].append(time.perf_counter() - start)
                if profiler is not None:
                    profiler.disable()
                sent()  # after the reply, as the agent does: not the runtime's wait
            finally:
                for fd in fds:
                    os.close(fd)
            if not reply.startswith(b"0\n"):
                raise RuntimeError(f"{command} {pod}: {reply[:300]!r}")
    return {"times": times, "profiles": profilers}


def _split(profiler: cProfile.Profile, calls: int) -> dict[str, float]:
    """Share (%) of the profiled time per category (`other`: Python work not listed), and
    the netlink requests per call."""
    stats = pstats.Stats(profiler)
    entries: dict[tuple[str, int, str], tuple] = stats.stats  # type: ignore[attr-defined]
    total = stats.total_tt  # type: ignore[attr-defined]
    spent: dict[str, float] = {}
    requests = 0
    for (path, _line, func), (_cc, count, _tt, cumulative, _callers) in entries.items():
        for (suffix, name), category in CATEGORIES.items():
            if func == name and path.endswith(suffix):
                spent[category] = spent.get(category, 0.0) + cumulative
                if category == "netlink round trips":
                    requests += count
    shares = {k: round(100 * v / total, 1) for k, v in sorted(spent.items(), key=lambda i: -i[1])}
    shares["other"] = round(100 - sum(shares.values()), 1)
    shares["netlink requests per call"] = round(requests / calls, 1)
    return shares


def run(quick: bool = False, configs: tuple[str, ...] = ("plain", "ipmasq")) -> dict[str, Any]:
    from netplane.cni.launcher import binary

    pods = 16 if quick else 48
    results: dict[str, Any] = {"pods": pods, "loadavg_before": round(os.getloadavg()[0], 2)}
    with (
        sigterm_unwinds(),
        tempfile.TemporaryDirectory(prefix="npbench-cniprof-") as workdir,
        ExitStack() as stack,
    ):
        mode = _setup("agent", binary(), pods, workdir, stack)
        # this process's in-progress markers (the agent's stay in its default place)
        stack.callback(os.environ.pop, STATE_ENV, None)
        os.environ[STATE_ENV] = workdir
        pool = mode.pools[1]
        version = {**mode.env, "CNI_COMMAND": "VERSION"}
        refused = {
            **mode.env,
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": "refused",
            "CNI_NETNS": f"/var/run/netns/{mode.pods[0]}",
            "CNI_IFNAME": "eth0",
        }
        results["launcher_ms"] = _median_ms(
            [pool.submit(_exec, mode.binary, version, b"{}").result() for _ in range(pods)]
        )
        results["transport_ms"] = _median_ms(
            [pool.submit(_exec, mode.binary, refused, b"{").result() for _ in range(pods)]
        )
        for config in configs:
            for attempt, profile in (("wall", False), ("profiled", True)):
                conf = _conf("agent", config, os.path.join(workdir, config, attempt))
                got = pool.submit(_agent_side, mode.pods, conf, profile).result()
                entry = results.setdefault(config, {})
                if profile:
                    entry["profiled_split_percent"] = {
                        op: _split(got["profiles"][op], pods) for op in ("ADD", "DEL")
                    }
                else:
                    entry.update({f"{op}_ms": _median_ms(v) for op, v in got["times"].items()})
    results["loadavg_after"] = round(os.getloadavg()[0], 2)
    _print(results, configs)
    return results


def _print(results: dict[str, Any], configs: tuple[str, ...]) -> None:
    print(
        f"CNI agent path, p50 ms ({results['pods']} calls each, load average "
        f"{results['loadavg_before']} -> {results['loadavg_after']})"
    )
    print(f"  launcher alone (VERSION):                 {results['launcher_ms']}")
    print(f"  launcher -> agent -> reply (refused ADD): {results['transport_ms']}")
    for config in configs:
        entry = results[config]
        print(f"  {config}: agent-side ADD {entry['ADD_ms']}, DEL {entry['DEL_ms']}")
        for op, split in entry["profiled_split_percent"].items():
            parts = [f"{k} {v}" + ("" if k.endswith("per call") else "%") for k, v in split.items()]
            print(f"    profiled {op}: " + ", ".join(parts))


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
