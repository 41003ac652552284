"""`netplane proxy run` as a real process inside the node namespace, fed by manifest files."""

from __future__ import annotations

import collections
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from netplane.netns import run
from netplane.testing.lab import Lab, probe, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.root]

NETPLANE = str(Path(sys.executable).with_name("netplane"))
CLUSTER_IP = "10.96.0.10"


def manifests(name: str, ip: str, pods, port: int = 80) -> list[dict]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "clusterIP": ip,
                "ports": [{"name": "http", "port": port, "targetPort": 8080}],
            },
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{name}-1",
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": name},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": [p.ip], "conditions": {"ready": True}, "nodeName": "node-a"}
                for p in pods
            ],
        },
    ]


def write(path: Path, docs: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump_all(docs))
    tmp.replace(path)


class Daemon:
    def __init__(self, lab: Lab, directory: Path, variant: str, log: Path) -> None:
        self.lab, self.log = lab, log
        addr = lab.node_ip
        self.argv = [NETPLANE, "-v", "proxy", "run", "--manifests", str(directory),
                     "--node", "node-a", "--cluster-cidr", lab.pod_cidr,
                     "--iptables-variant", variant, "--metrics-addr", f"{addr}:10249",
                     "--healthz-addr", f"{addr}:10256", "--min-sync-period", "0.2",
                     "--sync-period", "5"]  # fmt: skip
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        out = self.log.open("a")
        self.proc = self.lab.start(self.lab.node, self.argv, stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)

    def get(self, port: int, path: str) -> tuple[int, str]:
        # from the external namespace: the daemon listens on the node's uplink address
        script = (
            "import sys, urllib.request, urllib.error\n"
            "try:\n r = urllib.request.urlopen(sys.argv[1], timeout=3); print(r.status)\n"
            "except urllib.error.HTTPError as e:\n r = e; print(e.code)\n"
            "print(r.read().decode())"
        )
        url = f"http://{self.lab.node_ip}:{port}{path}"
        out = run(self.lab.external, [sys.executable, "-c", script, url], check=False)
        code, _, body = out.partition("\n")
        return (int(code) if code.isdigit() else 0), body


def served_by(lab: Lab, count: int = 30) -> set[str]:
    lines = probe(lab.pods["client"].ns, CLUSTER_IP, 80, count=count)
    return {line.split()[0] for line in lines}


def rules(lab: Lab, variant: str) -> list[str]:
    """The rule set without counters and comments, for comparing two moments."""
    text = run(lab.node, [f"iptables-{variant}-save"])
    return sorted(re.sub(r"\[\d+:\d+\]", "", line) for line in text.splitlines()
                  if not line.startswith("#"))  # fmt: skip


@pytest.mark.parametrize("variant", ["legacy", "nft"])
def test_daemon_follows_manifests_and_survives_restart(variant: str, tmp_path: Path) -> None:
    directory = tmp_path / "manifests"
    directory.mkdir()
    log = tmp_path / "daemon.log"
    with Lab() as lab:
        pods = [lab.add_pod(n, 10 + i, serve_port=8080) for i, n in enumerate("abc")]
        lab.add_pod("client", 5)
        write(directory / "web.yaml", manifests("web", CLUSTER_IP, pods))
        daemon = Daemon(lab, directory, variant, log)
        daemon.start()
        try:
            wait_for(lambda: daemon.get(10256, "/healthz")[0] == 200, 30, what="healthz 200")
            body = json.loads(daemon.get(10256, "/healthz")[1])
            assert body["nodeEligible"] is True and body["lastUpdated"]
            wait_for(lambda: served_by(lab) == {"a", "b", "c"}, 20, what="all endpoints")

            # an endpoint removed from the watched manifests stops receiving traffic
            write(directory / "web.yaml", manifests("web", CLUSTER_IP, pods[:2]))
            wait_for(lambda: lab.pods["c"].ip not in "".join(rules(lab, variant)), 20,
                     what="endpoint c removed")  # fmt: skip
            assert served_by(lab, 40) == {"a", "b"}

            code, metrics = daemon.get(10249, "/metrics")
            assert code == 200
            for name in ("kubeproxy_sync_proxy_rules_duration_seconds_count",
                         "kubeproxy_sync_full_proxy_rules_duration_seconds_count",
                         "kubeproxy_sync_partial_proxy_rules_duration_seconds_count",
                         "kubeproxy_network_programming_duration_seconds_count",
                         "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                         'kubeproxy_sync_proxy_rules_iptables_total{table="nat"}',
                         "kubeproxy_sync_proxy_rules_endpoint_changes_total",
                         "kubeproxy_sync_proxy_rules_iptables_restore_failures_total"):  # fmt: skip
                assert name in metrics, name
            changes = re.search(r"^kubeproxy_sync_proxy_rules_endpoint_changes_total (\S+)",
                                metrics, re.M)  # fmt: skip
            assert float(changes.group(1)) >= 1

            # bad input: reported, and everything else keeps being served
            (directory / "broken.yaml").write_text("kind: Service\nmetadata: [unclosed\n")
            bad_ip = manifests("bad-ip", "10.96.0.300", pods)[:1]
            duplicate = manifests("dup", "10.96.0.12", pods)[:1]
            duplicate[0]["spec"]["ports"].append(dict(duplicate[0]["spec"]["ports"][0]))
            unknown = manifests("unknown", "10.96.0.13", pods)[:1]
            unknown[0]["spec"]["bogusField"] = 1
            write(directory / "bad-ip.yaml", bad_ip)
            write(directory / "dup.yaml", duplicate)
            write(directory / "unknown.yaml", unknown)
            write(directory / "more.yaml", manifests("more", "10.96.0.11", pods[2:]))
            expected = ("broken.yaml", "is not a valid IP", "duplicate port", "unknown field")
            wait_for(lambda: all(e in log.read_text() for e in expected), 20,
                     what="errors logged")  # fmt: skip
            wait_for(lambda: probe(lab.pods["client"].ns, "10.96.0.11", 80)[0].startswith("c "),
                     20, what="the good new service")  # fmt: skip
            assert served_by(lab, 20) == {"a", "b"}
            assert daemon.proc.poll() is None

            # SIGTERM: clean exit, rules stay, traffic keeps flowing
            before = rules(lab, variant)
            assert daemon.stop() == 0
            assert rules(lab, variant) == before
            assert served_by(lab, 20) == {"a", "b"}
            # a restarted daemon's first sync writes the same rules
            daemon.start()

            def restarted_and_synced() -> bool:
                runs = log.read_text().split("proxy for node")
                return len(runs) == 3 and "full sync" in runs[2]

            wait_for(restarted_and_synced, 30, what="first sync after restart")
            assert rules(lab, variant) == before
        finally:
            if daemon.proc and daemon.proc.poll() is None:
                assert daemon.stop() == 0
        text = log.read_text()
        assert "manifest error" in text and "Traceback" not in text, text
        assert collections.Counter(re.findall(r"SIGTERM", text))["SIGTERM"] == 2


def test_daemon_keeps_serving_while_its_manifests_are_gone(tmp_path: Path) -> None:
    """The manifest directory deleted and re-created 3 s later, and a file caught
    half-written between its two documents: the rules never lose a service or an endpoint
    (sampled while it happens), and the source reports itself stale meanwhile."""
    directory = tmp_path / "manifests"
    directory.mkdir()
    log = tmp_path / "daemon.log"
    with Lab() as lab:
        pods = [lab.add_pod(n, 10 + i, serve_port=8080) for i, n in enumerate("ab")]
        lab.add_pod("client", 5)
        write(directory / "web.yaml", manifests("web", CLUSTER_IP, pods))
        daemon = Daemon(lab, directory, "nft", log)
        daemon.start()
        try:
            wait_for(lambda: served_by(lab) == {"a", "b"}, 30, what="both endpoints")
            before = rules(lab, "nft")

            def stale() -> float:
                text = daemon.get(10249, "/metrics")[1]
                return float(re.search(r"^netplane_source_stale (\S+)", text, re.M).group(1))

            assert stale() == 0
            samples = []
            (directory / "web.yaml").rename(tmp_path / "web.yaml")
            directory.rmdir()
            end = time.monotonic() + 3
            while time.monotonic() < end:
                samples.append(rules(lab, "nft"))
            assert stale() == 1
            directory.mkdir()
            (tmp_path / "web.yaml").rename(directory / "web.yaml")
            wait_for(lambda: stale() == 0, 20, what="the source readable again")
            gone = len(samples)
            # written in place, caught between its documents (the slice comes 0.5 s later)
            with (directory / "web.yaml").open("w") as out:
                docs = yaml.safe_dump_all(manifests("web", CLUSTER_IP, pods)).split("---\n")
                out.write(docs[0] + "---\n")
                out.flush()
                end = time.monotonic() + 0.5
                while time.monotonic() < end:
                    samples.append(rules(lab, "nft"))
                out.write(docs[1])
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                samples.append(rules(lab, "nft"))
            changed = [i for i, s in enumerate(samples) if s != before]
            assert not changed, f"rules changed in samples {changed} (of {len(samples)}, {gone})"
            assert served_by(lab) == {"a", "b"}
        finally:
            if daemon.proc and daemon.proc.poll() is None:
                assert daemon.stop() == 0
        text = log.read_text()
        assert "is stale" in text and "readable again" in text, text
