"""`netplane proxy run --kubeconfig`: the daemon fed by an API server (list + watch) programs
and updates the node's rules. The fake API server runs in the lab's external namespace, so
that nothing listens or is routed in the host's root namespace."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from netplane.netns import run
from netplane.testing.fakeapi import make_service, make_slice, write_kubeconfig
from netplane.testing.lab import Lab, probe, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.root]

NETPLANE = str(Path(sys.executable).with_name("netplane"))
CLUSTER_IP = "10.96.0.10"
# The fake API server, driven over stdin: one JSON command per line.
API = """
import json, sys
from netplane.testing.fakeapi import FakeApiServer
api = FakeApiServer(host=sys.argv[1], port=6443).start()
print("ready", flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    api.put(cmd["put"]) if "put" in cmd else api.delete(*cmd["delete"])
    print("ok", flush=True)
"""


def test_daemon_follows_the_api_server(tmp_path: Path) -> None:
    with Lab() as lab:
        pods = [lab.add_pod(n, 10 + i, serve_port=8080) for i, n in enumerate("ab")]
        lab.add_pod("client", 5)
        api = lab.start(lab.external, [sys.executable, "-c", API, lab.external_ip],
                        stdin=subprocess.PIPE)  # fmt: skip
        assert api.stdout.readline().strip() == "ready"

        def send(cmd: dict) -> None:
            api.stdin.write(json.dumps(cmd) + "\n")
            api.stdin.flush()
            assert api.stdout.readline().strip() == "ok"

        send({"put": make_service("default", "web", CLUSTER_IP, port=80)})  # targetPort 8080
        send({"put": make_slice("default", "web", "web-1", [p.ip for p in pods], "node-a")})
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", f"http://{lab.external_ip}:6443")
        lab.start(lab.node, [NETPLANE, "proxy", "run", "--kubeconfig", kubeconfig,
                             "--node", "node-a", "--cluster-cidr", lab.pod_cidr,
                             "--metrics-addr", f"{lab.node_ip}:10249",
                             "--healthz-addr", f"{lab.node_ip}:10256", "--min-sync-period", "0.1"],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

        def served_by() -> set[str]:
            return {line.split()[0] for line in probe(lab.pods["client"].ns, CLUSTER_IP, 80,
                                                      count=20)}  # fmt: skip

        wait_for(lambda: served_by() == {"a", "b"}, 30, what="both endpoints via the API")
        # a watch event (endpoint removed) reaches the kernel
        send({"put": make_slice("default", "web", "web-1", [pods[0].ip], "node-a")})
        wait_for(lambda: pods[1].ip not in run(lab.node, ["iptables-save", "-t", "nat"]), 20,
                 what="endpoint b removed")  # fmt: skip
        assert served_by() == {"a"}
