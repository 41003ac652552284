"""Addresses asked for (`podman run --ip`, Multus, `CNI_ARGS IP=`) and runtime ranges: netplane-ipam
answers as host-local does, side by side with the real binary on the same requests."""

from __future__ import annotations

import os

import pytest
from cniutil import OURS_IPAM, REF_DIR, invoke, store_files

PLUGINS = {"ours": OURS_IPAM, "host-local": os.path.join(REF_DIR, "host-local")}
V4 = [{"subnet": "10.86.0.0/28"}]
V6 = [{"subnet": "fd00:86::/124"}]


def _conf(data_dir: str, ranges: list | None = None, **top: object) -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": "nptest",
        "ipam": {"type": "x", "dataDir": data_dir, "ranges": ranges or [V4]},
        **top,
    }


def _both(tmp_path, calls) -> dict[str, list]:
    """Run CALLS [(container, conf extras, CNI_ARGS)] against each plugin in its own store:
    per plugin the replies (the addresses, or the error message) and the store's files."""
    seen: dict[str, list] = {}
    for name, binary in PLUGINS.items():
        replies: list = []
        for cid, ranges, top, args in calls:
            c = _conf(str(tmp_path / name), ranges, **top)
            r = invoke("ADD", c, binary=binary, container_id=cid, args=args, sandbox="unused")
            replies.append([ip["address"] for ip in r.out["ips"]] if r.rc == 0 else r.out["msg"])
        seen[name] = [replies, store_files(str(tmp_path / name))]
    return seen


@pytest.mark.parametrize(
    ("ranges", "top", "args"),
    [
        (None, {"runtimeConfig": {"ips": ["10.86.0.5"]}}, ""),
        (None, {"runtimeConfig": {"ips": ["10.86.0.5/28"]}}, ""),  # ip.IP takes a prefix too
        (None, {"args": {"cni": {"ips": ["10.86.0.6"]}}}, ""),
        (None, {}, "IgnoreUnknown=1;IP=10.86.0.7"),
        ([V4, V6], {"runtimeConfig": {"ips": ["fd00:86::9", "10.86.0.9"]}}, ""),
        ([V4, V6], {"runtimeConfig": {"ips": ["fd00:86::9"]}}, ""),  # the v4 set allocates
        (None, {"runtimeConfig": {"ips": ["10.86.0.1"]}}, ""),  # the gateway
        (None, {"runtimeConfig": {"ips": ["10.86.0.0"]}}, ""),  # the network's own address
        (None, {"runtimeConfig": {"ips": ["10.99.0.1"]}}, ""),  # in no range set
        (None, {"runtimeConfig": {"ips": ["fd00:86::9"]}}, ""),  # no v6 set
        ([V4, V6], {"args": {"cni": {"ips": ["fd00:86::7"]}}}, "IgnoreUnknown=1;IP=10.86.0.7"),
        (None, {"runtimeConfig": {"ipRanges": [[{"subnet": "10.87.0.0/29"}]]}}, ""),
        (None, {"runtimeConfig": {"ipRanges": [[{"subnet": "10.86.0.0/29"}]]}}, ""),  # overlap
        ([V4, [{"subnet": "10.86.0.8/29"}]], {}, ""),  # two configured sets overlapping
    ],
)
def test_one_request_as_host_local(tmp_path, ranges, top, args):
    seen = _both(tmp_path, [("c1", ranges, top, args)])
    assert seen["ours"] == seen["host-local"]


def test_requests_among_other_attachments_as_host_local(tmp_path):
    """A taken address is refused and leaks nothing; the same attachment may ask for a second
    address (host-local checks duplicates only when it picks the address itself); the
    round-robin goes on from the last address reserved, asked for or not."""
    ask = {"runtimeConfig": {"ips": ["10.86.0.5"]}}
    seen = _both(
        tmp_path,
        [
            ("a", None, ask, ""),
            ("b", None, ask, ""),
            ("a", None, {"runtimeConfig": {"ips": ["10.86.0.9"]}}, ""),
            ("a", None, {}, ""),
            ("c", None, {}, ""),
        ],
    )
    assert seen["ours"] == seen["host-local"]
    replies, files = seen["ours"]
    assert replies[0] == ["10.86.0.5/28"] and "not available" in replies[1]
    assert replies[4] == ["10.86.0.10/28"]
    assert files == {"10.86.0.5", "10.86.0.9", "10.86.0.10", "last_reserved_ip.0"}


def test_two_requests_for_one_range_set_are_refused_by_both(tmp_path):
    """host-local takes one of the two (which one: Go's map order), we take the first; both
    refuse the ADD, naming the other, and release what they had reserved."""
    ask = {"runtimeConfig": {"ips": ["10.86.0.5", "10.86.0.6"]}}
    for replies, files in _both(tmp_path, [("c1", None, ask, "")]).values():
        assert replies[0] in (f"failed to allocate all requested IPs: 10.86.0.{n}" for n in (5, 6))
        assert files == {"last_reserved_ip.0"}


@pytest.mark.parametrize(
    ("top", "args", "needle"),
    [
        ({"runtimeConfig": {"ips": ["nope"]}}, "", "invalid IP address"),
        ({"runtimeConfig": {"ips": "10.86.0.5"}}, "", "runtimeConfig.ips"),
        ({}, "IgnoreUnknown=1;IP=10.86.0", "invalid IP address"),
    ],
)
def test_malformed_requests_are_refused_by_both(tmp_path, top, args, needle):
    for name, binary in PLUGINS.items():
        c = _conf(str(tmp_path / name), None, **top)
        r = invoke("ADD", c, binary=binary, args=args, sandbox="unused")
        assert r.rc != 0 and needle in r.out["msg"], (name, r)
        assert store_files(str(tmp_path / name)) == set()
