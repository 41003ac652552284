"""The node agent, the static launcher a node runs, and `netplane cni install`/`uninstall`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from cniutil import (
    NETPLANE,
    VENV_BIN,
    Agents,
    bridge_conf,
    invoke,
    links,
    nat_rules,
    nft_ruleset,
    session_pids,
    store_files,
    wait_gone,
)

from netplane.cni.launcher import binary
from netplane.cni.spec import SUPPORTED_VERSIONS


@pytest.fixture(scope="module")
def launcher() -> str:
    return binary()


@pytest.fixture
def agents():
    a = Agents()
    try:
        yield a
    finally:
        a.stop_all()


@pytest.fixture
def agent(agents, netns, tmp_path):
    """An agent running in a fresh host netns; yields (host, socket path)."""
    host = netns.new()
    sock = str(tmp_path / "run" / "cni.sock")
    agents.start(host, sock)
    yield host, sock
    agents.stop_all()
    assert not os.path.exists(sock), "agent must remove its socket on SIGTERM"


@pytest.mark.parametrize("through", ["launcher", "console-script"])
def test_agent_serves_add_del(agent, netns, data_dir, launcher, through):
    host, sock = agent
    conf = bridge_conf(data_dir, macspoofchk=True)  # 8 nft transactions at once too
    sandboxes = [netns.new() for _ in range(8)]
    kw = {"env": {"NETPLANE_CNI_SOCKET": sock}}
    if through == "launcher":
        kw["binary"] = launcher

    def add(i):
        return invoke("ADD", conf, host=host, sandbox=sandboxes[i], container_id=f"a{i}", **kw)

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(add, range(8)))
    assert all(r.rc == 0 for r in replies), replies
    assert len({r.out["ips"][0]["address"] for r in replies}) == 8
    assert {r.out["interfaces"][2]["sandbox"] for r in replies} == {
        f"/var/run/netns/{s}" for s in sandboxes
    }
    assert sum(1 for link in links(host).values() if link.get("master") == "npbr0") == 8
    assert all(nft_ruleset(host).count(f"macspoofchk-a{i}-eth0") == 4 for i in range(8))
    # errors come back through the agent with their codes
    bad = invoke("ADD", {**conf, "cniVersion": "7.0.0"}, host=host, sandbox=sandboxes[0], **kw)
    assert bad.rc != 0 and bad.out["code"] == 1
    for i in range(8):
        reply = invoke("DEL", conf, host=host, sandbox=sandboxes[i], container_id=f"a{i}", **kw)
        assert reply.rc == 0, reply
    assert set(links(host)) == {"lo", "npbr0"}
    assert store_files(data_dir) == {"last_reserved_ip.0"}
    assert nat_rules(host) == []
    assert "macspoofchk" not in nft_ruleset(host)


def test_caller_in_another_netns_is_declined(agent, netns, data_dir, launcher):
    """The agent acts on its own namespace only: the launcher then says "try again later",
    the console script (netplane installed on this host) runs in-process."""
    agent_host, sock = agent
    other_host, sandbox = netns.new(), netns.new()
    conf = bridge_conf(data_dir)
    env = {"NETPLANE_CNI_SOCKET": sock}
    refused = invoke("ADD", conf, host=other_host, sandbox=sandbox, env=env, binary=launcher)
    assert refused.rc == 1 and refused.out["code"] == 11, refused
    assert "another network namespace" in refused.out["details"]
    reply = invoke("ADD", conf, host=other_host, sandbox=sandbox, env=env)
    assert reply.rc == 0, reply
    assert "npbr0" in links(other_host) and "npbr0" not in links(agent_host)


def test_launcher_without_agent_fails_fast_with_try_again_later(
    netns, data_dir, launcher, tmp_path
):
    host, sandbox = netns.new(), netns.new()
    env = {"NETPLANE_CNI_SOCKET": str(tmp_path / "none.sock")}
    for command in ("ADD", "DEL", "CHECK"):
        conf = bridge_conf(data_dir, cniVersion="0.4.0")
        reply = invoke(command, conf, host=host, sandbox=sandbox, env=env, binary=launcher)
        assert reply.rc == 1, reply
        assert reply.out == {
            "cniVersion": "0.4.0",
            "code": 11,
            "msg": "netplane CNI agent not available, try again later",
            "details": f"{env['NETPLANE_CNI_SOCKET']}: No such file or directory",
        }
    assert set(links(host)) == {"lo"}
    # VERSION needs no agent and matches the plugin's own answer
    for asked in ("0.3.1", "1.1.0", "9.9.9"):
        ours = invoke("VERSION", {"cniVersion": asked}, env=env, binary=launcher)
        python = invoke("VERSION", {"cniVersion": asked})
        assert ours.rc == python.rc == 0 and ours.out == python.out
    assert ours.out["supportedVersions"] == list(SUPPORTED_VERSIONS)


def test_new_agent_takes_the_socket_over(agents, netns, data_dir, launcher, tmp_path):
    host, sandbox = netns.new(), netns.new()
    sock = str(tmp_path / "cni.sock")
    first = agents.start(host, sock)
    second = agents.start(host, sock)  # replaces the path while the first still runs
    conf = bridge_conf(data_dir)
    env = {"NETPLANE_CNI_SOCKET": sock}
    first.terminate()
    first.wait(timeout=30)
    assert os.path.exists(sock), "the old agent must leave the new agent's socket alone"
    add = invoke("ADD", conf, host=host, sandbox=sandbox, env=env, binary=launcher)
    assert add.rc == 0, add
    assert invoke("DEL", conf, host=host, sandbox=sandbox, env=env, binary=launcher).rc == 0
    second.terminate()
    second.wait(timeout=30)
    assert not os.path.exists(sock)


def test_workers_die_with_the_agent(agents, netns, tmp_path):
    host = netns.new()
    sock = str(tmp_path / "cni.sock")
    proc = agents.start(host, sock, "--workers", "3")
    deadline = time.monotonic() + 30
    while len(session_pids(proc.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    # `ip netns exec` execs the agent: the session is the agent and its two workers
    family = session_pids(proc.pid)
    assert len(family) == 3, family
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert wait_gone(family, 30) == [], "workers outlived their parent"


def test_add_interrupted_by_a_crash_is_redone_on_retry(agent, netns, data_dir, launcher):
    """The agent killed mid-ADD: the retry rolls back what the first attempt left and adds
    afresh, instead of failing with "already exists" until the runtime's DEL."""
    host, sock = agent
    sandbox = netns.new()
    conf = bridge_conf(data_dir)
    env = {"NETPLANE_CNI_SOCKET": sock}
    first = invoke("ADD", conf, host=host, sandbox=sandbox, container_id="c1", env=env)
    assert first.rc == 0, first
    # a duplicate ADD of a live attachment is still refused, as the spec says
    dup = invoke("ADD", conf, host=host, sandbox=sandbox, container_id="c1", env=env)
    assert dup.rc == 1 and "already exists" in dup.out["msg"], dup
    # what a kill in the middle leaves: the work done, the in-progress marker still there
    state = os.environ["NETPLANE_CNI_STATE_DIR"]
    marker = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            host,
            os.path.join(VENV_BIN, "python"),
            "-c",
            "import sys; from netplane.cni.inflight import _marker; print(_marker(*sys.argv[1:]))",
            conf["name"],
            "c1",
            "eth0",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "NETPLANE_CNI_STATE_DIR": state},
    ).stdout.strip()
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    open(marker, "w").close()
    retry = invoke("ADD", conf, host=host, sandbox=sandbox, container_id="c1", env=env)
    assert retry.rc == 0, retry
    assert retry.out["ips"][0]["address"] != first.out["ips"][0]["address"]  # round robin
    assert len(store_files(data_dir)) == 2  # the first address was released
    assert not os.path.exists(marker)
    assert invoke("DEL", conf, host=host, sandbox=sandbox, container_id="c1", env=env).rc == 0
    assert set(links(host)) == {"lo", "npbr0"} and set(links(sandbox)) == {"lo"}
    assert nat_rules(host) == []


# The agent with a pause between an ADD's work and its reply, announced in the file argv[1].
_SLOW_REPLY = """
import sys, time
import netplane.cni.agent as agent
work, replying = agent.answer, sys.argv.pop(1)
def answer(*args):
    reply = work(*args)
    open(replying, "w").close()
    time.sleep(60)
    return reply
agent.answer = answer
from netplane.cli import main
main()
"""


@pytest.mark.slow
def test_agent_killed_between_the_work_and_the_reply_then_retry_succeeds(
    agents, netns, data_dir, launcher, tmp_path
):
    """The ADD's work is done when the agent dies, its result not sent: the launcher tells the
    runtime to try again (code 11), so the retry must succeed, not meet "already exists"."""
    host, sandbox = netns.new(), netns.new()
    sock, replying = str(tmp_path / "run" / "cni.sock"), tmp_path / "replying"
    python = os.path.join(VENV_BIN, "python")
    slow = agents.start(host, sock, netplane=(python, "-c", _SLOW_REPLY, str(replying)))
    conf, env = bridge_conf(data_dir), {"NETPLANE_CNI_SOCKET": sock}
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            invoke, "ADD", conf, host=host, sandbox=sandbox, container_id="w1", env=env,
            binary=launcher,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not replying.exists():
            assert time.monotonic() < deadline and not pending.done(), pending
            time.sleep(0.01)
        os.killpg(slow.pid, signal.SIGKILL)
        first = pending.result()
    slow.wait()
    assert first.rc == 1 and first.out["code"] == 11, first
    assert "eth0" in links(sandbox)  # the work of the first ADD is there
    agents.start(host, sock)
    retry = invoke("ADD", conf, host=host, sandbox=sandbox, container_id="w1", env=env)
    assert retry.rc == 0, retry
    assert invoke("DEL", conf, host=host, sandbox=sandbox, container_id="w1", env=env).rc == 0
    assert set(links(host)) <= {"lo", "npbr0"} and set(links(sandbox)) == {"lo"}
    assert store_files(data_dir) <= {"last_reserved_ip.0"}
    assert nat_rules(host) == []


@pytest.mark.slow
def test_agent_killed_at_any_point_of_add_then_retry_succeeds(agents, netns, data_dir, launcher):
    """The real thing: kill -9 the whole agent while ADDs are in flight, start a new one,
    retry each ADD: every retry succeeds and DEL leaves nothing."""
    host = netns.new()
    sock = os.path.join(data_dir + "-run", "cni.sock")
    conf = bridge_conf(data_dir)
    env = {"NETPLANE_CNI_SOCKET": sock}
    for n, delay in enumerate((0.0, 0.005, 0.01, 0.02, 0.04)):
        proc = agents.start(host, sock)
        sandbox, cid = netns.new(), f"k{n}"
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                invoke, "ADD", conf, host=host, sandbox=sandbox, container_id=cid, env=env,
                binary=launcher,
            )  # fmt: skip
            time.sleep(delay)
            os.killpg(proc.pid, signal.SIGKILL)
            first = pending.result()
        proc.wait()
        assert first.rc == 0 or first.out["code"] == 11, first
        agents.start(host, sock)
        retry = invoke("ADD", conf, host=host, sandbox=sandbox, container_id=cid, env=env)
        if first.rc == 0:  # it finished before the kill: a second ADD is a duplicate
            assert retry.rc == 1 and "already exists" in retry.out["msg"], retry
        else:
            assert retry.rc == 0, (delay, retry)
        assert invoke("DEL", conf, host=host, sandbox=sandbox, container_id=cid, env=env).rc == 0
        assert set(links(host)) <= {"lo", "npbr0"} and set(links(sandbox)) == {"lo"}
        assert store_files(data_dir) <= {"last_reserved_ip.0"}
        assert nat_rules(host) == []
        agents.stop_all()


def test_install_writes_launcher_and_conflist(netns, tmp_path, launcher, agents):
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    out = subprocess.run(
        [NETPLANE, "cni", "install", "--bin-dir", str(bin_dir), "--conf-dir", str(conf_dir),
         "--subnet", "10.98.0.0/24", "--subnet", "fd00:98::/64"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.split() == [
        str(bin_dir / "netplane-bridge"),
        str(conf_dir / "10-netplane.conflist"),
    ]
    conflist = json.loads((conf_dir / "10-netplane.conflist").read_text())
    plugin = conflist["plugins"][0]
    assert plugin["type"] == "netplane-bridge" and plugin["ipam"]["type"] == "netplane-ipam"
    assert plugin["ipam"]["ranges"] == [[{"subnet": "10.98.0.0/24"}], [{"subnet": "fd00:98::/64"}]]
    installed = bin_dir / "netplane-bridge"
    with open(launcher, "rb") as f:
        assert installed.read_bytes() == f.read()
    # static: runs with no interpreter, no netplane, no shared libraries
    assert b"ld-linux" not in installed.read_bytes()[:4096]
    # as a runtime calls it, with the agent the DaemonSet runs
    host, sandbox = netns.new(), netns.new()
    sock = str(tmp_path / "run" / "cni.sock")
    agents.start(host, sock)
    net = {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **plugin}
    net["ipam"]["dataDir"] = str(tmp_path / "ipam")
    kw = {"binary": str(installed), "cni_path": str(bin_dir), "env": {"NETPLANE_CNI_SOCKET": sock}}
    add = invoke("ADD", net, host=host, sandbox=sandbox, **kw)
    assert add.rc == 0, add
    assert [ip["address"] for ip in add.out["ips"]] == ["10.98.0.2/24", "fd00:98::2/64"]
    assert invoke("DEL", net, host=host, sandbox=sandbox, **kw).rc == 0


def test_uninstall_leaves_the_node_clean(netns, tmp_path, launcher, agents):
    bin_dir, conf_dir, data = tmp_path / "bin", tmp_path / "net.d", tmp_path / "ipam"
    subprocess.run(
        [NETPLANE, "cni", "install", "--bin-dir", str(bin_dir), "--conf-dir", str(conf_dir),
         "--subnet", "10.97.0.0/24", "--bridge", "npbr0"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    net = json.loads((conf_dir / "10-netplane.conflist").read_text())
    plugin = {"cniVersion": net["cniVersion"], "name": net["name"], **net["plugins"][0]}
    plugin["ipam"]["dataDir"] = str(data)
    host = netns.new()
    sock = str(tmp_path / "cni.sock")
    agents.start(host, sock)
    kw = {"binary": str(bin_dir / "netplane-bridge"), "env": {"NETPLANE_CNI_SOCKET": sock}}
    for i in range(3):  # pods still running at uninstall
        assert (
            invoke("ADD", plugin, host=host, sandbox=netns.new(), container_id=f"u{i}", **kw).rc
            == 0
        )
    agents.stop_all()
    assert nat_rules(host) and "npbr0" in links(host)
    out = subprocess.run(
        ["ip", "netns", "exec", host, NETPLANE, "cni", "uninstall", "--bin-dir", str(bin_dir),
         "--conf-dir", str(conf_dir), "--bridge", "npbr0", "--data-dir", str(data)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "bridge npbr0" in out.stdout, out.stdout
    assert set(links(host)) == {"lo"}
    assert nat_rules(host) == []
    assert os.listdir(bin_dir) == [] and os.listdir(conf_dir) == []
    assert not (data / "netplane").exists()


def test_install_refuses_a_bad_subnet(tmp_path):
    proc = subprocess.run(
        [NETPLANE, "cni", "install", "--bin-dir", str(tmp_path / "b"), "--conf-dir",
         str(tmp_path / "c"), "--subnet", "10.98.0.1/24"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode != 0 and "--subnet" in proc.stderr
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
