"""CNI ADD/DEL latency: netplane-bridge (in-process and via the agent) beside the reference.

Three modes: the reference `bridge` + `host-local` (Debian's containernetworking-plugins),
netplane through the node agent (the static launcher a node runs, forwarding to
`netplane cni agent`), and netplane in-process (the console script, no agent). Four configs:
`plain` (isGateway, no ipMasq: the config most users run), `ipmasq`, `hairpin` and
`macspoofchk` (nftables rules per pod).
Every mode gets its own host network namespace and its own worker threads, each of which
enters that namespace (setns is per thread; the plugins it execs inherit it), so plugins run
as a runtime would call them, with no `ip netns exec` in the timing. The modes are
interleaved (pod by pod, batch by batch) so a change in machine load hits them alike.
Run: `netplane bench cni` or `python -m netplane.bench.cni_latency [--quick] [--config NAME]`.
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from netplane import netns as netplane_netns
from netplane.signals import sigterm_unwinds

REF_DIR = "/usr/lib/cni"
SCRIPTS = os.path.dirname(sys.executable)
CONCURRENCY = 8
CONFIGS: dict[str, dict[str, bool]] = {
    "plain": {},
    "ipmasq": {"ipMasq": True},
    "hairpin": {"hairpinMode": True},
    "macspoofchk": {"macspoofchk": True},
}


@dataclass
class _Mode:
    name: str
    binary: str
    host: str
    env: dict[str, str]
    pods: list[str] = field(default_factory=list)
    pools: dict[int, ThreadPoolExecutor] = field(default_factory=dict)
    # config -> phase -> op -> milliseconds
    samples: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)


def _netns(stack: ExitStack) -> str:
    name = f"npbench-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    stack.callback(subprocess.run, ["ip", "netns", "del", name], capture_output=True, check=False)
    return name


def _conf(kind: str, config: str, data_dir: str) -> bytes:
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "npbench",
            "type": "bridge",
            "bridge": "npbench0",
            "isGateway": True,
            **CONFIGS[config],
            "ipam": {
                "type": "host-local" if kind == "reference" else "netplane-ipam",
                "ranges": [[{"subnet": "10.201.0.0/16"}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": data_dir,
            },
        }
    ).encode()


def _call(binary: str, command: str, conf: bytes, pod: str, env: dict[str, str]) -> float:
    environ = {
        **env,
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": pod,
        "CNI_NETNS": f"/var/run/netns/{pod}",
        "CNI_IFNAME": "eth0",
    }
    start = time.perf_counter()
    proc = subprocess.run([binary], input=conf, env=environ, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{binary} {command} {pod}: {proc.stdout!r} {proc.stderr[-500:]!r}")
    return elapsed * 1000


def _start_agent(mode: _Mode, socket_path: str, stack: ExitStack) -> None:
    agent = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            mode.host,
            os.path.join(SCRIPTS, "netplane"),
            "cni",
            "agent",
            "--socket",
            socket_path,
        ]
    )

    def stop() -> None:
        agent.terminate()
        agent.wait(timeout=30)

    stack.callback(stop)
    deadline = time.monotonic() + 60
    while not os.path.exists(socket_path):
        if time.monotonic() > deadline or agent.poll() is not None:
            raise RuntimeError("agent did not start")
        time.sleep(0.05)


def _setup(kind: str, binary: str, pods: int, workdir: str, stack: ExitStack) -> _Mode:
    socket_path = os.path.join(workdir, f"{kind}.sock")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CNI_PATH": f"{SCRIPTS}:{REF_DIR}",
        "NETPLANE_CNI_SOCKET": socket_path,
    }
    mode = _Mode(kind, binary, _netns(stack), env)
    mode.pods = [_netns(stack) for _ in range(pods)]
    for width in (1, CONCURRENCY):
        pool = ThreadPoolExecutor(width, initializer=netplane_netns.enter, initargs=(mode.host,))
        stack.callback(pool.shutdown)
        mode.pools[width] = pool
    if kind == "agent":
        _start_agent(mode, socket_path, stack)
    return mode


def _phase(modes: list[_Mode], config: str, phase: str, width: int, workdir: str) -> None:
    """ADD every pod, then DEL every pod, `width` at a time, the modes taking turns."""
    confs = {
        m.name: _conf(m.name, config, os.path.join(workdir, m.name, config, phase)) for m in modes
    }
    for command in ("ADD", "DEL"):
        for start in range(0, len(modes[0].pods), width):
            for m in modes:
                batch = m.pods[start : start + width]
                futures = [
                    m.pools[width].submit(_call, m.binary, command, confs[m.name], p, m.env)
                    for p in batch
                ]
                m.samples.setdefault(config, {}).setdefault(phase, {}).setdefault(
                    command, []
                ).extend(f.result() for f in futures)


def _percentiles(samples: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "p50": round(q[49], 2),
        "p95": round(q[94], 2),
        "p99": round(q[98], 2),
        "n": len(samples),
    }


def run(quick: bool, configs: tuple[str, ...] = tuple(CONFIGS)) -> dict[str, Any]:
    """p50/p95/p99 of ADD and DEL, sequential and 8-way, for each config and mode, same run.

    Returns percentiles per config/mode/phase/op, plus the raw samples as `series` in the
    bench framework's format (so `netplane bench compare` can test differences).
    """
    from netplane.cni.launcher import binary

    pods = 16 if quick else 48
    load = os.getloadavg()[0]
    with (
        sigterm_unwinds(),  # the agent, the 3 + 3 x pods namespaces and the work directory go
        tempfile.TemporaryDirectory(prefix="npbench-cni-") as workdir,
        ExitStack() as stack,
    ):
        binaries = {
            "reference": os.path.join(REF_DIR, "bridge"),
            "agent": binary(),  # the static launcher a node runs, forwarding to the agent
            "in-process": os.path.join(SCRIPTS, "netplane-bridge"),
        }
        modes = [_setup(kind, b, pods, workdir, stack) for kind, b in binaries.items()]
        for config in configs:
            _phase(modes, config, "sequential", 1, workdir)
            _phase(modes, config, f"concurrent{CONCURRENCY}", CONCURRENCY, workdir)
        samples = {m.name: m.samples for m in modes}
    results: dict[str, Any] = {
        "pods": pods,
        "cpus": os.cpu_count(),
        "loadavg_before": round(load, 2),
        "loadavg_after": round(os.getloadavg()[0], 2),
        "configs": {name: {"isGateway": True, **CONFIGS[name]} for name in configs},
        "modes": {
            kind: {
                config: {
                    ph: {op: _percentiles(v) for op, v in ops.items()} for ph, ops in phases.items()
                }
                for config, phases in by_config.items()
            }
            for kind, by_config in samples.items()
        },
        "series": [
            {
                "metric": "cni_latency",
                "unit": "ms",
                "labels": {"mode": kind, "config": config, "phase": ph, "op": op},
                "values": v,
            }
            for kind, by_config in samples.items()
            for config, phases in by_config.items()
            for ph, ops in phases.items()
            for op, v in ops.items()
        ],
    }
    _print(results)
    return results


def _print(results: dict[str, Any]) -> None:
    print(
        f"CNI latency, ms ({results['pods']} pods, {results['cpus']} CPUs, load average "
        f"{results['loadavg_before']} -> {results['loadavg_after']})"
    )
    print(f"{'config':<13}{'phase':<14}{'op':<5}{'mode':<12}{'p50':>8}{'p95':>8}{'p99':>8}")
    modes = results["modes"]
    for config in results["configs"]:
        phases = next(iter(modes.values()))[config]
        for phase, ops in phases.items():
            for op in ops:
                for kind in modes:
                    p = modes[kind][config][phase][op]
                    print(
                        f"{config:<13}{phase:<14}{op:<5}{kind:<12}"
                        f"{p['p50']:>8}{p['p95']:>8}{p['p99']:>8}"
                    )


def _write(results: dict[str, Any]) -> None:
    out_dir = os.environ.get(
        "NETPLANE_BENCH_OUT", os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    )
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "cni_latency.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    chosen = tuple(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--config="))
    _write(run(quick="--quick" in sys.argv, configs=chosen or tuple(CONFIGS)))
