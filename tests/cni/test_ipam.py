"""netplane-ipam against host-local: same order, same semantics, one shared on-disk store."""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from cniutil import OURS_IPAM, REF_DIR, invoke, store_files

from netplane.cni.store import Store

HOST_LOCAL = os.path.join(REF_DIR, "host-local")
PLUGINS = {"ours": OURS_IPAM, "host-local": HOST_LOCAL}


def conf(data_dir: str, **ipam) -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": "nptest",
        "ipam": {"type": "x", "dataDir": data_dir, **ipam},
    }


def add(binary: str, c: dict, cid: str, ifname: str = "eth0") -> dict:
    reply = invoke("ADD", c, binary=binary, container_id=cid, ifname=ifname, sandbox="unused")
    assert reply.rc == 0, reply
    return reply.out


def addrs(result: dict) -> list[str]:
    return [ip["address"] for ip in result["ips"]]


@pytest.mark.parametrize(
    "ipam",
    [
        {"ranges": [[{"subnet": "10.90.0.0/29"}]]},
        {"subnet": "10.90.0.0/28", "rangeStart": "10.90.0.5", "rangeEnd": "10.90.0.7"},
        {"ranges": [[{"subnet": "10.90.0.0/30"}, {"subnet": "10.91.0.0/30"}]]},
        {"ranges": [[{"subnet": "10.90.0.0/29", "gateway": "10.90.0.3"}]]},
        {
            "ranges": [[{"subnet": "10.90.0.0/29"}], [{"subnet": "fd00:90::/125"}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
        },
    ],
)
def test_same_sequence_as_host_local(tmp_path, ipam):
    """Allocate until exhaustion, free one, allocate again: identical results and errors."""
    seen = {}
    for name, binary in PLUGINS.items():
        c = conf(str(tmp_path / name), **ipam)
        results = []
        for i in range(8):
            reply = invoke("ADD", c, binary=binary, container_id=f"c{i}", sandbox="unused")
            results.append(reply.out.get("ips") if reply.rc == 0 else "error")
            if reply.rc == 0:
                assert reply.out.get("routes", []) == ipam.get("routes", [])
        assert invoke("DEL", c, binary=binary, container_id="c1").rc == 0
        again = invoke("ADD", c, binary=binary, container_id="again", sandbox="unused")
        results.append(again.out.get("ips") if again.rc == 0 else "error")
        seen[name] = results
        seen[name + "-files"] = store_files(str(tmp_path / name))
    assert seen["ours"] == seen["host-local"]
    assert seen["ours-files"] == seen["host-local-files"]


@pytest.mark.parametrize(("first", "second"), [("ours", "host-local"), ("host-local", "ours")])
def test_store_is_shared(tmp_path, first, second):
    c = conf(str(tmp_path), ranges=[[{"subnet": "10.92.0.0/24"}]])
    a = add(PLUGINS[first], c, "alpha")
    b = add(PLUGINS[second], c, "beta")
    assert addrs(a) == ["10.92.0.2/24"] and addrs(b) == ["10.92.0.3/24"]
    # duplicate (id, ifname) is refused by both, whoever allocated
    dup = invoke("ADD", c, binary=PLUGINS[second], container_id="alpha", sandbox="unused")
    assert dup.rc != 0 and "duplicate allocation" in dup.out["msg"]
    assert invoke("CHECK", c, binary=PLUGINS[second], container_id="alpha", sandbox="x").rc == 0
    assert invoke("DEL", c, binary=PLUGINS[second], container_id="alpha").rc == 0
    assert invoke("DEL", c, binary=PLUGINS[first], container_id="beta").rc == 0
    assert store_files(str(tmp_path)) == {"last_reserved_ip.0"}
    with open(tmp_path / "nptest" / "last_reserved_ip.0") as f:
        assert f.read() == "10.92.0.3"


def test_file_format(tmp_path):
    c = conf(str(tmp_path), ranges=[[{"subnet": "10.93.0.0/24"}]])
    add(OURS_IPAM, c, "ctr-x", "net1")
    with open(tmp_path / "nptest" / "10.93.0.2", "rb") as f:
        assert f.read() == b"ctr-x\r\nnet1"


@pytest.mark.parametrize(
    ("ipam", "needle"),
    [
        ({"ranges": [[{"subnet": "10.94.0.0/31"}]]}, "too small"),
        ({"ranges": [[{"subnet": "10.94.0.1/24"}]]}, ""),
        ({"ranges": [[{"subnet": "10.94.0.0/24", "rangeStart": "10.95.0.1"}]]}, ""),
        ({}, ""),
    ],
)
def test_bad_ranges_are_refused_by_both(tmp_path, ipam, needle):
    for binary in PLUGINS.values():
        reply = invoke("ADD", conf(str(tmp_path), **ipam), binary=binary, sandbox="unused")
        assert reply.rc != 0 and needle in reply.out["msg"], reply
    assert store_files(str(tmp_path)) == set()


def test_concurrent_allocations_are_unique(tmp_path):
    c = conf(str(tmp_path), ranges=[[{"subnet": "10.96.0.0/24"}]])
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: add(OURS_IPAM, c, f"p{i}"), range(24)))
    assert len({addrs(r)[0] for r in results}) == 24


def test_resolv_conf_gives_dns(tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.0.0.10\nsearch a.local b.local\noptions ndots:5\n")
    c = conf(str(tmp_path), subnet="10.97.0.0/24", resolvConf=str(resolv))
    ours, ref = add(OURS_IPAM, c, "d1"), add(HOST_LOCAL, c, "d2")
    assert (
        ours["dns"]
        == ref["dns"]
        == {"nameservers": ["10.0.0.10"], "search": ["a.local", "b.local"], "options": ["ndots:5"]}
    )


_CHURN = """
import sys
from netplane.cni.store import Store
store = Store("nptest", sys.argv[1])
print("go", flush=True)
for n in range(1_000_000):
    with store.locked():
        ip = f"10.99.{n % 200}.{n % 250 + 1}"
        store.reserve(f"owner-{ip}", "eth0", ip, 0)
        store.release(ip)
"""


def test_a_reservation_killed_mid_write_leaves_no_file_without_its_owner(tmp_path):
    """kill -9 while reserving: a file without its owner can never be released by DEL (it
    matches no container), so a claim appears on disk with its owner or not at all; and a
    claim left over from the kill never changes the owner of another address."""
    python = os.path.join(os.path.dirname(OURS_IPAM), "python")
    for n in range(80):
        churn = subprocess.Popen(
            [python, "-c", _CHURN, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        assert churn.stdout.readline() == "go\n"
        time.sleep(0.002 + n % 7 * 0.001)
        churn.kill()
        churn.wait()
        churn.stdout.close()
        left = list(Store("nptest", str(tmp_path)).allocations())
        assert all(cid == f"owner-{ip}" for ip, cid, _ in left), (n, left)


def test_leftovers_of_a_kill_are_dropped_by_the_next_call(tmp_path):
    """Killed between link and unlink, a claim is a second name of its reservation: the next
    call (here DEL, which reserves nothing) removes it without touching what it names."""
    c = conf(str(tmp_path), ranges=[[{"subnet": "10.98.0.0/24"}]])
    kept, gone = addrs(add(OURS_IPAM, c, "kept"))[0], addrs(add(OURS_IPAM, c, "gone"))[0]
    net = tmp_path / "nptest"
    os.link(net / kept.split("/")[0], net / ".claim")
    (net / ".tmp").write_text(gone.split("/")[0])
    reply = invoke("DEL", c, binary=OURS_IPAM, container_id="gone", ifname="eth0", sandbox="unused")
    assert reply.rc == 0, reply
    assert store_files(str(tmp_path)) == {kept.split("/")[0], "last_reserved_ip.0"}
    assert (net / kept.split("/")[0]).read_bytes() == b"kept\r\neth0"
    assert addrs(add(OURS_IPAM, c, "next"))[0] != kept
