"""Real CNI clients drive netplane-bridge: containerd through CRI, and podman's CNI backend.

Both runtimes run inside a network namespace created here (`nsenter --net`, which leaves the
mount namespace alone so cgroups stay visible), so the bridge and host veths they make live
there; every path is private to the test and removed afterwards.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import shutil
import subprocess
import time

import pytest
from cniutil import NETPLANE, Agents, links, ping, store_files
from crihelp import Cri

from netplane.testing.oci import busybox_layer, oci_archive
from netplane.testing.realnode import containerd_config

pytestmark = pytest.mark.slow
IMAGE = "localhost/npcni/busybox:1"


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"not installed: {missing} (bootstrap.sh installs them)")


def _plugin_dir(base: str, network: str, bridge: str, subnet: str) -> tuple[str, str, str]:
    """`netplane cni install` into private dirs, plus a logging wrapper around the plugin that
    points it at the test's agent (`{base}/cni.sock`)."""
    bin_dir, conf_dir, log = f"{base}/bin", f"{base}/net.d", f"{base}/calls.log"
    subprocess.run(
        [
            NETPLANE,
            "cni",
            "install",
            "--bin-dir",
            bin_dir,
            "--conf-dir",
            conf_dir,
            "--subnet",
            subnet,
            "--name",
            network,
            "--bridge",
            bridge,
        ],
        check=True,
        capture_output=True,
    )
    conflist_path = f"{conf_dir}/10-netplane.conflist"
    with open(conflist_path) as f:
        conflist = json.load(f)
    conflist["plugins"][0]["ipam"]["dataDir"] = f"{base}/ipam"
    conflist["plugins"][0]["ipMasq"] = False
    with open(conflist_path, "w") as f:
        json.dump(conflist, f)
    os.rename(f"{bin_dir}/netplane-bridge", f"{bin_dir}/netplane-bridge.real")
    with open(f"{bin_dir}/netplane-bridge", "w") as f:
        f.write(
            f'#!/bin/sh\necho "$CNI_COMMAND netns=$CNI_NETNS" >> {log}\n'
            f"NETPLANE_CNI_SOCKET={base}/cni.sock exec {bin_dir}/netplane-bridge.real\n"
        )
    os.chmod(f"{bin_dir}/netplane-bridge", 0o755)
    for extra in ("loopback", "host-local"):  # containerd always runs loopback
        os.symlink(f"/usr/lib/cni/{extra}", f"{bin_dir}/{extra}")
    return bin_dir, conf_dir, log


def _calls(log: str) -> list[str]:
    with open(log) as f:
        return [line.strip() for line in f]


def _wait_for(path: str, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.1)


@pytest.fixture
def agents():
    a = Agents()
    try:
        yield a
    finally:
        a.stop_all()


@pytest.fixture
def base():
    path = f"/var/tmp/npcni-{secrets.token_hex(3)}"
    os.makedirs(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_containerd_cri_add_and_double_del(netns, base, agents):
    _need("containerd", "ctr", "runc", "busybox")
    host = netns.new()
    tag = secrets.token_hex(2)
    bridge = f"npcd{tag}"
    bin_dir, conf_dir, log = _plugin_dir(base, f"npcd-{tag}", bridge, "10.123.7.0/24")
    agents.start(host, f"{base}/cni.sock")
    sock = f"{base}/state/containerd.sock"
    with open(f"{base}/containerd.toml", "w") as f:
        f.write(containerd_config(f"{base}/root", f"{base}/state", sock, IMAGE, bin_dir, conf_dir))
    with open(f"{base}/containerd.log", "w") as out:
        daemon = subprocess.Popen(
            [
                "nsenter",
                f"--net=/var/run/netns/{host}",
                "containerd",
                "--config",
                f"{base}/containerd.toml",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    cri = None
    try:
        _wait_for(sock, daemon, "containerd")
        oci_archive(f"{base}/image.tar", IMAGE)
        subprocess.run(
            ["ctr", "--address", sock, "-n", "k8s.io", "images", "import", f"{base}/image.tar"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        cri = Cri(sock)
        assert cri("Status")["status"]["conditions"]
        pod = {
            "metadata": {"name": "pod1", "namespace": "default", "uid": f"uid-{tag}"},
            "linux": {},
            "log_directory": f"{base}/podlogs",
        }
        sandbox = cri("RunPodSandbox", {"config": pod})["pod_sandbox_id"]
        ip = cri("PodSandboxStatus", {"pod_sandbox_id": sandbox})["status"]["network"]["ip"]
        assert ip.startswith("10.123.7.")
        assert sum(1 for link in links(host).values() if link.get("master") == bridge) == 1
        assert ping(host, ip)
        cri("StopPodSandbox", {"pod_sandbox_id": sandbox})
        cri("RemovePodSandbox", {"pod_sandbox_id": sandbox})
        calls = [c for c in _calls(log) if not c.startswith("VERSION")]
        assert [c.split()[0] for c in calls] == ["ADD", "DEL", "DEL"], calls
        assert calls[-1] == "DEL netns="  # the second DEL comes without a netns
        assert not any(link.get("master") == bridge for link in links(host).values())
        assert store_files(f"{base}/ipam", f"npcd-{tag}") <= {"last_reserved_ip.0"}
    finally:
        try:
            if cri is not None:
                for item in cri("ListPodSandbox").get("items", []):
                    cri("StopPodSandbox", {"pod_sandbox_id": item["id"]})
                    cri("RemovePodSandbox", {"pod_sandbox_id": item["id"]})
        finally:  # a failing teardown call must not leave containerd running
            daemon.terminate()
            daemon.wait(timeout=30)
        subprocess.run(["umount", "-R", f"{base}/root"], capture_output=True, check=False)
        _remove_empty_dirs(*glob.glob("/sys/fs/cgroup/*/k8s.io"), "/run/containerd")


def _wait_for_processes_using(path: str, timeout: float = 20) -> None:
    """Until no live process mentions `path` on its command line (bounded in time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = False
        for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
            with contextlib.suppress(OSError), open(cmdline, "rb") as f:
                busy = busy or path.encode() in f.read()
        if not busy:
            return
        time.sleep(0.2)


def _remove_empty_dirs(*tops: str) -> None:
    """rmdir depth-first, retrying briefly while the runtime's last processes exit; rmdir never
    removes a cgroup or directory still in use."""
    for _ in range(60):
        for top in tops:
            for root, _dirs, _files in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
                with contextlib.suppress(OSError):
                    os.rmdir(root)
        if not any(os.path.exists(t) for t in tops):
            return
        time.sleep(0.25)


IP_FORMAT = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"


def test_podman_cni_backend_version_add_del(netns, base, agents):
    _need("podman", "conmon", "runc")
    host = netns.new()
    tag = secrets.token_hex(2)
    network = f"nppm-{tag}"
    bin_dir, conf_dir, log = _plugin_dir(base, network, f"nppm{tag}", "10.124.7.0/24")
    agents.start(host, f"{base}/cni.sock")
    with open(f"{base}/containers.conf", "w") as f:
        f.write(f"""[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{base}/tmp"
[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin_dir}"]
network_config_dir = "{conf_dir}"
""")
    with open(f"{base}/storage.conf", "w") as f:
        f.write(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{base}/storage"\n'
            f'runroot = "{base}/runroot"\n'
        )
    env = {
        **os.environ,
        "CONTAINERS_CONF": f"{base}/containers.conf",
        "CONTAINERS_STORAGE_CONF": f"{base}/storage.conf",
    }

    def podman(*args: str, check: bool = True) -> str:
        proc = subprocess.run(
            ["nsenter", f"--net=/var/run/netns/{host}", "podman", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {args}: {proc.stderr}")
        return (proc.stdout if proc.returncode == 0 else proc.stderr).strip()

    try:
        with open(f"{base}/rootfs.tar", "wb") as f:
            f.write(busybox_layer())
        podman("import", "--change", "ENV PATH=/bin", f"{base}/rootfs.tar", IMAGE)
        podman("run", "-d", "--name", f"pm{tag}", "--network", network, IMAGE, "sleep", "600")
        ip = podman("inspect", f"pm{tag}", "--format", IP_FORMAT)
        assert ip.startswith("10.124.7."), ip
        assert ping(host, ip)
        # `--ip`: podman asks for the address, netplane-ipam reserves that one
        fixed = ("--network", network, "--ip", "10.124.7.50", IMAGE, "sleep", "600")
        podman("run", "-d", "--name", f"pq{tag}", *fixed)
        assert podman("inspect", f"pq{tag}", "--format", IP_FORMAT) == "10.124.7.50"
        assert ping(host, "10.124.7.50")
        assert store_files(f"{base}/ipam", network) == {ip, "10.124.7.50", "last_reserved_ip.0"}
        taken = podman("run", "-d", "--name", f"pr{tag}", *fixed, check=False)
        assert "not available" in taken, taken  # refused, and nothing more reserved
        assert store_files(f"{base}/ipam", network) == {ip, "10.124.7.50", "last_reserved_ip.0"}
        podman("rm", "-f", "-i", "-t", "0", f"pm{tag}", f"pq{tag}", f"pr{tag}")
        commands = [c.split()[0] for c in _calls(log)]
        assert commands[:2] == ["VERSION", "ADD"] and "DEL" in commands[2:], commands
        assert store_files(f"{base}/ipam", network) <= {"last_reserved_ip.0"}
    finally:
        podman("rm", "-a", "-f", "-t", "0", check=False)
        podman("rmi", "-a", "-f", check=False)
        # conmon runs `podman container cleanup` after the container exits, asynchronously:
        # wait for it; an exited conmon still pins its cgroup until it is reaped (a few s).
        _wait_for_processes_using(base)
        subprocess.run(
            ["umount", "-R", f"{base}/storage/overlay"], capture_output=True, check=False
        )
        _remove_empty_dirs(*glob.glob("/sys/fs/cgroup/*/libpod_parent"))
