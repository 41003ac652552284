"""The emulated cluster's benchmark: `netplane up` to all pods ready, and the failover gap.

Run: `python -m netplane.bench.cluster_up [--quick] [--output-dir DIR]` (root). Scenarios:
- lab: the default two-node lab plus the course's `blue` deployment and service
  (target < 5 s), with our CNI plugin and, as the floor in the same run, the reference
  bridge/host-local plugins;
- scale: 3 nodes, 100 pods (50 deployments x 2), 50 services (target < 30 s), then the
  time until a service answers through the proxies;
- failover: a probe every 50 ms from a node through blue's ClusterIP while its only pod is
  deleted: failed requests and the gap between the last answer of the old pod and the first
  of the new one.
Every cluster lives in namespaces under its own id and is removed with `netplane down`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NETPLANE = str(Path(sys.executable).parent / "netplane")
BLUE = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: blue}
spec:
  replicas: 1
  selector: {matchLabels: {app: blue}}
  template:
    metadata: {labels: {app: blue}}
    spec: {containers: [{name: color, image: jpetazzo/color}]}
---
apiVersion: v1
kind: Service
metadata: {name: blue}
spec:
  selector: {app: blue}
  ports: [{port: 80}]
"""


class Cluster:
    def __init__(self, root: Path) -> None:
        self.state = root / secrets.token_hex(3)
        self.env = {**os.environ, "NETPLANE_STATE_DIR": str(self.state)}

    def np(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        proc = subprocess.run(
            [NETPLANE, *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if check and proc.returncode:
            raise RuntimeError(f"netplane {' '.join(args)}: {proc.stdout}{proc.stderr}")
        return proc.stdout

    def up(self, *args: str) -> float:
        t = time.monotonic()
        self.np("up", "--wait", "240", *args)
        return time.monotonic() - t

    def down(self) -> None:
        self.np("down", check=False)

    @property
    def node_ns(self) -> str:
        topo = json.loads((self.state / "topology.json").read_text())
        return f"{topo['id']}-{topo['nodes'][-1][0]}"

    def cluster_ip(self, name: str) -> str:
        return json.loads(self.np("get", "svc", name, "-o", "json"))["spec"]["clusterIP"]


def scale_manifests(deployments: int, replicas: int) -> str:
    docs = []
    for i in range(deployments):
        name = f"app-{i}"
        docs.append(BLUE.replace("blue", name).replace("replicas: 1", f"replicas: {replicas}"))
    return "\n---\n".join(docs)


def lab_up(root: Path, cni: str, manifest: Path) -> float:
    c = Cluster(root)
    try:
        return c.up("--cni", cni, "-f", str(manifest))
    finally:
        c.down()


def scale_up(root: Path, manifest: Path, last: str) -> tuple[float, float]:
    c = Cluster(root)
    try:
        ready = c.up("--nodes", "3", "-f", str(manifest))
        t = time.monotonic()
        ip = c.cluster_ip(last)
        deadline = t + 60
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["ip", "netns", "exec", c.node_ns, "curl", "-s", "-m", "1", f"http://{ip}/"],
                capture_output=True,
                text=True,
            )
            if out.stdout.startswith("This is pod"):
                break
            time.sleep(0.05)
        return ready, ready + time.monotonic() - t
    finally:
        c.down()


def failover(root: Path, manifest: Path, repeats: int) -> list[tuple[int, float]]:
    c = Cluster(root)
    out = []
    try:
        c.up("-f", str(manifest))
        ip = c.cluster_ip("blue")
        for _ in range(repeats):
            (pod,) = [
                p["metadata"]["name"]
                for p in json.loads(c.np("get", "pods", "-o", "json"))["items"]
                if not p["metadata"].get("deletionTimestamp")
            ]
            loop = subprocess.Popen(
                [
                    "nsenter",
                    f"--net=/var/run/netns/{c.node_ns}",
                    sys.executable,
                    "-m",
                    "netplane.testing.probe",
                    f"http://{ip}/",
                    "--count",
                    "200",  # 10 s: on a loaded machine the new pod can take seconds
                    "--interval",
                    "0.05",
                    "--timeout",
                    "1",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(1.0)
            c.np("delete", "pod", pod)
            lines = [json.loads(x) for x in loop.communicate(timeout=120)[0].splitlines()]
            found = [re.search(r"pod (\S+) on", x.get("body", "")) for x in lines]
            names = [m[1] if m else None for m in found]
            old = f"default/{pod}"
            last_old = max(i for i, n in enumerate(names) if n == old)
            first_new = next(
                (i for i, n in enumerate(names) if n and n != old and i > last_old), None
            )
            # no answer from the new pod within the probe window: the whole window is the gap
            end = lines[first_new]["t"] if first_new is not None else lines[-1]["t"]
            out.append((sum(1 for x in lines if not x["ok"]), end - lines[last_old]["t"]))
            c.np("get", "pods")  # settle: the new pod is the only one left
            time.sleep(1.5)
    finally:
        c.down()
    return out


def run(quick: bool) -> dict[str, Any]:
    repeats = 1 if quick else 3
    series = []
    with tempfile.TemporaryDirectory(prefix="npbench-cluster-") as tmp:
        root = Path(tmp)
        blue = root / "blue.yaml"
        blue.write_text(BLUE)
        runs: dict[str, list[float]] = {"netplane": [], "reference": []}
        loads: dict[str, list[float]] = {"netplane": [], "reference": []}
        for i in range(repeats):  # interleaved (and alternating first) so load hits both alike
            for cni in ("netplane", "reference") if i % 2 == 0 else ("reference", "netplane"):
                loads[cni].append(os.getloadavg()[0])
                runs[cni].append(lab_up(root, cni, blue))
        for cni, values in runs.items():
            print(f"lab up_to_ready cni={cni}: {values} (load {loads[cni]})", flush=True)
            series.append(
                {
                    "metric": "up_to_ready",
                    "unit": "s",
                    "values": values,
                    "load_avg_1m": loads[cni],
                    "labels": {"scenario": "lab", "nodes": 2, "pods": 3, "cni": cni},
                }
            )
        deployments = 10 if quick else 50
        big = root / "scale.yaml"
        big.write_text(scale_manifests(deployments, 2))
        load = os.getloadavg()[0]
        ready, answering = scale_up(root, big, f"app-{deployments - 1}")
        print(f"scale: ready {ready:.2f} s, answering {answering:.2f} s (load {load:.1f})",
              flush=True)  # fmt: skip
        labels = {
            "scenario": "scale",
            "nodes": 3,
            "pods": deployments * 2 + 2,
            "services": deployments + 2,
            "cni": "netplane",
        }
        series.append({"metric": "up_to_ready", "unit": "s", "values": [ready],
                       "load_avg_1m": [load], "labels": labels})  # fmt: skip
        series.append(
            {
                "metric": "up_to_service_answering",
                "unit": "s",
                "values": [answering],
                "load_avg_1m": [load],
                "labels": labels,
            }
        )
        gaps = failover(root, blue, repeats)
        series.append(
            {
                "metric": "failover_gap",
                "unit": "s",
                "values": [g for _, g in gaps],
                "labels": {"scenario": "pod-delete", "probe_interval_ms": 50},
            }
        )
        series.append(
            {
                "metric": "failover_failed_requests",
                "unit": "requests",
                "values": [f for f, _ in gaps],
                "labels": {"scenario": "pod-delete", "probe_interval_ms": 50},
            }
        )
    # the load average beside every figure (the bench CLI keeps these under parameters.data)
    load_avg = {f"lab-{cni}": values for cni, values in loads.items()} | {"scale": [load]}
    return {"series": series, "quick": quick, "cpus": os.cpu_count(),
            "load_avg_1m": load_avg | {"end": [os.getloadavg()[0]]}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output-dir", default="bench/results")
    args = parser.parse_args()
    result = run(args.quick)
    for s in result["series"]:
        values = ", ".join(f"{v:.2f}" for v in s["values"])
        loads = s.get("load_avg_1m")
        load = f" (load {min(loads):.1f}-{max(loads):.1f})" if loads else ""
        print(f"{s['metric']:<28} {json.dumps(s['labels'])}: {values} {s['unit']}{load}")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"cluster_up-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
