"""A node switching backends: `netplane proxy run` (a real process in the node namespace)
with iptables, then nftables, then iptables again. Each start removes the other backend's
rules after its own first sync, and traffic flows throughout the switch."""

from __future__ import annotations

import collections
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from netplane.netns import run
from netplane.testing.lab import Lab, probe, wait_for

from .test_daemon_netns import CLUSTER_IP, manifests, served_by, write

pytestmark = [pytest.mark.slow, pytest.mark.root]

NETPLANE = str(Path(sys.executable).with_name("netplane"))


def start(lab: Lab, directory: Path, backend: str, log: Path) -> subprocess.Popen:
    argv = [NETPLANE, "-v", "proxy", "run", "--manifests", str(directory), "--node", "node-a",
            "--cluster-cidr", lab.pod_cidr, "--backend", backend, "--iptables-variant", "nft",
            "--metrics-addr", f"{lab.node_ip}:10249", "--healthz-addr", f"{lab.node_ip}:10256",
            "--min-sync-period", "0.2"]  # fmt: skip
    return lab.start(lab.node, argv, stdout=log.open("a"), stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(15)


def iptables_rules(lab: Lab) -> int:
    text = run(lab.node, ["iptables-nft-save"])
    return len(re.findall(r"^-A KUBE-", text, re.M))


def nft_tables(lab: Lab) -> list[str]:
    return re.findall(r"table ip (kube-proxy\S*)", run(lab.node, ["nft", "list", "tables"]))


def test_switching_backends_leaves_nothing_of_the_other(tmp_path: Path) -> None:
    directory = tmp_path / "manifests"
    directory.mkdir()
    log = tmp_path / "daemon.log"
    with Lab() as lab:
        pods = [lab.add_pod(n, 10 + i, serve_port=8080) for i, n in enumerate("abc")]
        lab.add_pod("client", 5)
        write(directory / "web.yaml", manifests("web", CLUSTER_IP, pods))

        daemon = start(lab, directory, "iptables", log)
        wait_for(lambda: served_by(lab) == {"a", "b", "c"}, 30, what="iptables serving")
        assert iptables_rules(lab) > 0 and nft_tables(lab) == []
        assert stop(daemon) == 0

        # a client connecting all along (one connection per probe call, bounded): the old
        # rules serve until the new backend's first sync, both DNAT alike meanwhile
        answers: list[str] = []
        done = threading.Event()

        def keep_probing() -> None:
            for _ in range(400):
                if done.is_set():
                    return
                answers.extend(probe(lab.pods["client"].ns, CLUSTER_IP, 80, count=5, timeout=2))

        prober = threading.Thread(target=keep_probing, daemon=True)
        prober.start()
        try:
            for backend in ("nftables", "iptables"):
                daemon = start(lab, directory, backend, log)
                if backend == "nftables":
                    wait_for(lambda: iptables_rules(lab) == 0, 30, what="iptables rules gone")
                    assert nft_tables(lab) == ["kube-proxy"]
                else:
                    wait_for(lambda: nft_tables(lab) == [], 30, what="nftables table gone")
                    assert iptables_rules(lab) > 0
                assert served_by(lab) == {"a", "b", "c"}
                assert stop(daemon) == 0
        finally:
            done.set()
            prober.join(60)
        assert answers and all(a[0] in "abc" for a in answers), collections.Counter(answers)
        assert "removed the nftables backend's table" in log.read_text()
