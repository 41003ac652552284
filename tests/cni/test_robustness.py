"""Concurrency, crash and cleanup behaviour of netplane-bridge (in-process mode)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from cniutil import OURS, bridge_conf, invoke, links, nat_rules, netns_path, store_files


@pytest.mark.slow
def test_fifty_concurrent_adds_share_one_bridge(netns, data_dir):
    host = netns.new()
    sandboxes = [netns.new() for _ in range(50)]
    conf = bridge_conf(data_dir)

    def add(i: int):
        return invoke("ADD", conf, host=host, sandbox=sandboxes[i], container_id=f"pod{i}")

    with ThreadPoolExecutor(50) as pool:
        replies = list(pool.map(add, range(50)))
    assert all(r.rc == 0 for r in replies), [r for r in replies if r.rc][:1]
    addresses = {r.out["ips"][0]["address"] for r in replies}
    assert len(addresses) == 50
    host_links = links(host)
    assert [
        n for n, link in host_links.items() if link.get("linkinfo", {}).get("info_kind") == "bridge"
    ] == ["npbr0"]
    assert sum(1 for link in host_links.values() if link.get("master") == "npbr0") == 50
    assert len(store_files(data_dir)) == 51

    def delete(i: int):
        return invoke("DEL", conf, host=host, sandbox=sandboxes[i], container_id=f"pod{i}")

    with ThreadPoolExecutor(10) as pool:
        assert all(r.rc == 0 for r in pool.map(delete, range(50)))
    assert set(links(host)) == {"lo", "npbr0"}
    assert store_files(data_dir) == {"last_reserved_ip.0"}
    assert nat_rules(host) == []


def _env(conf_sandbox: str, cid: str) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": netns_path(conf_sandbox),
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/usr/lib/cni",
        "NETPLANE_CNI_SOCKET": "",
    }


@pytest.mark.slow
@pytest.mark.parametrize("cleanup", ["DEL", "DEL-without-netns", "GC"])
def test_kill_during_add_leaves_nothing_del_or_gc_cannot_clean(netns, data_dir, cleanup):
    import json

    host = netns.new()
    conf = bridge_conf(data_dir, cniVersion="1.1.0")
    # Kill at increasing delays so the kill lands at different points of the ADD.
    for n, delay in enumerate((0.05, 0.12, 0.18, 0.25, 0.35, 2.0)):
        sandbox, cid = netns.new(), f"killed{n}"
        proc = subprocess.Popen(
            ["ip", "netns", "exec", host, OURS],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=_env(sandbox, cid),
            start_new_session=True,
        )
        proc.stdin.write(json.dumps(conf).encode())
        proc.stdin.close()
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if cleanup == "GC":
            reply = invoke("GC", {**conf, "cni.dev/valid-attachments": []}, host=host)
        else:
            kept = sandbox if cleanup == "DEL" else None
            reply = invoke("DEL", conf, host=host, sandbox=kept, container_id=cid)
        assert reply.rc == 0, reply
        assert set(links(host)) <= {"lo", "npbr0"}, (delay, links(host).keys())
        if cleanup != "GC":
            assert set(links(sandbox)) == {"lo"}
        assert store_files(data_dir) <= {"last_reserved_ip.0"}
        assert nat_rules(host) == []
