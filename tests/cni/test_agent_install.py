"""The node agent path, the fast launcher, and `netplane cni install`."""

from __future__ import annotations

import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from cniutil import VENV_BIN, bridge_conf, invoke, links, store_files

NETPLANE = os.path.join(VENV_BIN, "netplane")


@pytest.fixture
def agent(netns, tmp_path):
    """An agent running in a fresh host netns; yields (host, socket path)."""
    host = netns.new()
    sock = str(tmp_path / "run" / "cni.sock")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", host, NETPLANE, "cni", "agent", "--socket", sock],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(sock + ".netns"):
            assert proc.poll() is None and time.monotonic() < deadline, "agent did not start"
            time.sleep(0.05)
        yield host, sock
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert not os.path.exists(sock), "agent must remove its socket on SIGTERM"


def test_agent_serves_add_del(agent, netns, data_dir):
    host, sock = agent
    conf = bridge_conf(data_dir)
    sandboxes = [netns.new() for _ in range(8)]
    env = {"NETPLANE_CNI_SOCKET": sock}

    def add(i):
        return invoke("ADD", conf, host=host, sandbox=sandboxes[i], container_id=f"a{i}", env=env)

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(add, range(8)))
    assert all(r.rc == 0 for r in replies), replies
    assert len({r.out["ips"][0]["address"] for r in replies}) == 8
    assert sum(1 for link in links(host).values() if link.get("master") == "npbr0") == 8
    # errors come back through the agent with their codes
    bad = invoke("ADD", {**conf, "cniVersion": "7.0.0"}, host=host, sandbox=sandboxes[0], env=env)
    assert bad.rc != 0 and bad.out["code"] == 1
    for i in range(8):
        assert (
            invoke("DEL", conf, host=host, sandbox=sandboxes[i], container_id=f"a{i}", env=env).rc
            == 0
        )
    assert set(links(host)) == {"lo", "npbr0"}
    assert store_files(data_dir) == {"last_reserved_ip.0"}


def test_agent_is_not_used_from_another_netns(agent, netns, data_dir):
    """A caller elsewhere must act on its own namespace: the binary runs in-process."""
    agent_host, sock = agent
    other_host, sandbox = netns.new(), netns.new()
    conf = bridge_conf(data_dir)
    reply = invoke("ADD", conf, host=other_host, sandbox=sandbox, env={"NETPLANE_CNI_SOCKET": sock})
    assert reply.rc == 0, reply
    assert "npbr0" in links(other_host) and "npbr0" not in links(agent_host)


def test_install_writes_launchers_and_conflist(netns, tmp_path):
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    out = subprocess.run(
        [
            NETPLANE,
            "cni",
            "install",
            "--bin-dir",
            str(bin_dir),
            "--conf-dir",
            str(conf_dir),
            "--subnet",
            "10.98.0.0/24",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert len(out.stdout.split()) == 3
    conflist = json.loads((conf_dir / "10-netplane.conflist").read_text())
    plugin = conflist["plugins"][0]
    assert plugin["type"] == "netplane-bridge" and plugin["ipam"]["type"] == "netplane-ipam"
    for name in ("netplane-bridge", "netplane-ipam"):
        assert os.access(bin_dir / name, os.X_OK)
    # the installed launcher works as the runtime would call it, agent or not
    host, sandbox = netns.new(), netns.new()
    net = {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **plugin}
    net["ipam"]["dataDir"] = str(tmp_path / "ipam")
    kw = {"binary": str(bin_dir / "netplane-bridge"), "cni_path": str(bin_dir)}
    version = invoke("VERSION", {"cniVersion": "1.0.0"}, **kw)
    assert "1.1.0" in version.out["supportedVersions"]
    add = invoke("ADD", net, host=host, sandbox=sandbox, **kw)
    assert add.rc == 0 and add.out["ips"][0]["address"] == "10.98.0.2/24", add
    assert invoke("DEL", net, host=host, sandbox=sandbox, **kw).rc == 0
    ipam = invoke("ADD", net, binary=str(bin_dir / "netplane-ipam"), sandbox="x", container_id="i")
    assert ipam.rc == 0 and ipam.out["ips"][0]["address"] == "10.98.0.3/24", ipam


def test_install_refuses_a_bad_subnet(tmp_path):
    proc = subprocess.run(
        [
            NETPLANE,
            "cni",
            "install",
            "--bin-dir",
            str(tmp_path / "b"),
            "--conf-dir",
            str(tmp_path / "c"),
            "--subnet",
            "10.98.0.1/24",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "--subnet" in proc.stderr
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
