"""Real stub resolvers (glibc via getent, busybox nslookup) in a network namespace of ours.

The namespace gets the lab's cluster DNS address on its loopback, the server listens
there on port 53, and /etc/netns/<ns>/resolv.conf (which `ip netns exec` bind-mounts over
/etc/resolv.conf) is the one `netplane dns resolv-conf` writes for namespace default.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netplane.testing.procs import stop_process

NETPLANE = str(Path(sys.executable).with_name("netplane"))
DNS_IP = "10.96.0.10"
pytestmark = [pytest.mark.slow, pytest.mark.root]


def _run(*cmd: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout)


@pytest.fixture(scope="module")
def netns(tmp_path_factory, k8s):
    name = f"npdns-{secrets.token_hex(3)}"
    etc = Path("/etc/netns") / name
    made_etc_netns = not etc.parent.exists()  # then remove it again: leave the host as found
    proc = None
    try:
        _run("ip", "netns", "add", name)
        _run("ip", "-n", name, "link", "set", "lo", "up")
        _run("ip", "-n", name, "addr", "add", f"{DNS_IP}/32", "dev", "lo")
        manifests = tmp_path_factory.mktemp("glibc") / "lab.json"
        k8s.write_manifests(manifests, k8s.lab_objects())
        conf = _run(NETPLANE, "dns", "resolv-conf", "--namespace", "default",
                    "--cluster-dns", DNS_IP, "--host-resolv", "/dev/null").stdout  # fmt: skip
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text(conf)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", name, NETPLANE, "dns", "serve", "--manifests", str(manifests),
             "--listen", f"{DNS_IP}:53", "--workers", "1"],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            dig = ("dig", "+short", "+time=1", "+tries=1", f"@{DNS_IP}")
            out = _run(
                "ip",
                "netns",
                "exec",
                name,
                *dig,
                "kubernetes.default.svc.cluster.local.",
                check=False,
            )
            if out.stdout.strip() == "10.96.0.1":
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)
        yield name
    finally:
        if proc is not None:
            stop_process(proc)
        _run("ip", "netns", "del", name, check=False)
        shutil.rmtree(etc, ignore_errors=True)
        if made_etc_netns:
            with contextlib.suppress(OSError):
                etc.parent.rmdir()


def _getent(ns: str, database: str, name: str) -> set[str]:
    out = _run("ip", "netns", "exec", ns, "getent", database, name, check=False)
    return {line.split()[0] for line in out.stdout.splitlines()}


def test_resolv_conf_is_the_labs(netns):
    text = (Path("/etc/netns") / netns / "resolv.conf").read_text()
    assert text.splitlines() == [
        "search default.svc.cluster.local svc.cluster.local cluster.local",
        f"nameserver {DNS_IP}",
        "options ndots:5",
    ]


@pytest.mark.parametrize(
    ("name", "ip"),
    [
        ("blue", "10.108.244.161"),
        ("blue.default", "10.108.244.161"),
        ("thesvc.other", "10.100.0.5"),
        ("kubernetes.default.svc", "10.96.0.1"),
        ("blue.default.svc.cluster.local.", "10.108.244.161"),
    ],
)
def test_getent_through_search_path(netns, name, ip):
    assert _getent(netns, "ahosts", name) == {ip}


def test_getent_headless_200_endpoints_over_tcp(netns):
    assert len(_getent(netns, "ahostsv4", "big")) == 200


def test_getent_unknown_name_fails(netns):
    out = _run("ip", "netns", "exec", netns, "getent", "ahosts", "nosuchservice", check=False)
    assert out.returncode == 2 and not out.stdout


def test_busybox_nslookup(netns):
    out = _run("ip", "netns", "exec", netns, "busybox", "nslookup",
               "blue.default.svc.cluster.local", DNS_IP, check=False)  # fmt: skip
    assert "10.108.244.161" in out.stdout
    out = _run("ip", "netns", "exec", netns, "busybox", "nslookup", "-type=SRV",
               "_https._tcp.kubernetes.default.svc.cluster.local", DNS_IP, check=False)  # fmt: skip
    assert "443" in out.stdout and "kubernetes.default.svc.cluster.local" in out.stdout


def test_lookup_command_shows_the_walk(netns):
    out = _run("ip", "netns", "exec", netns, NETPLANE, "dns", "lookup", "thesvc.other",
               "--namespace", "default", "--server", f"{DNS_IP}:53")  # fmt: skip
    lines = out.stdout.splitlines()
    assert lines[0].split()[:2] == ["thesvc.other.default.svc.cluster.local.", "NXDOMAIN"]
    assert lines[1].split()[:3] == ["thesvc.other.svc.cluster.local.", "NOERROR", "A"]
    assert len(lines) == 2
