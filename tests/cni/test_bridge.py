"""netplane-bridge by direct invocation of the installed console script: commands and errors."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from cniutil import (
    OURS_IPAM,
    REF_DIR,
    bridge_conf,
    invoke,
    links,
    nat_rules,
    netns_path,
    nft_ruleset,
    ns_json,
    ping,
    store_files,
)


@pytest.fixture
def pair(netns):
    return netns.new(), netns.new()


def test_version_lists_supported_versions():
    reply = invoke("VERSION", {"cniVersion": "0.4.0"}, drop=("CNI_CONTAINERID", "CNI_PATH"))
    assert reply.rc == 0
    assert reply.out["cniVersion"] == "0.4.0"
    assert set(reply.out["supportedVersions"]) >= {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}


def test_add_check_del_roundtrip(pair, data_dir):
    host, sandbox = pair
    conf = bridge_conf(data_dir, isDefaultGateway=True, mtu=1400)
    conf["ipam"].pop("routes")
    add = invoke("ADD", conf, host=host, sandbox=sandbox)
    assert add.rc == 0, add
    result = add.out
    assert result["cniVersion"] == "1.0.0"
    assert [i["name"] for i in result["interfaces"]][::2] == ["npbr0", "eth0"]
    assert result["interfaces"][2]["sandbox"] == netns_path(sandbox)
    assert result["ips"] == [{"address": "10.88.0.2/24", "gateway": "10.88.0.1", "interface": 2}]
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}]

    host_links = links(host)
    veth = result["interfaces"][1]["name"]
    assert host_links[veth]["master"] == "npbr0"
    assert host_links[veth]["mtu"] == 1400
    assert host_links[veth]["linkinfo"]["info_slave_data"]["hairpin"] is True
    bridge_addrs = ns_json(host, "addr", "show", "npbr0")[0]["addr_info"]
    assert {(a["local"], a["prefixlen"]) for a in bridge_addrs if a["family"] == "inet"} == {
        ("10.88.0.1", 24)
    }
    ctr = ns_json(sandbox, "addr", "show", "eth0")[0]
    assert ctr["address"] == result["interfaces"][2]["mac"]
    assert ("10.88.0.2", 24) in {(a["local"], a["prefixlen"]) for a in ctr["addr_info"]}
    routes = ns_json(sandbox, "route", "show")
    assert ("default", "10.88.0.1", "eth0") in {
        (r["dst"], r.get("gateway"), r["dev"]) for r in routes
    }
    assert any("MASQUERADE" in r for r in nat_rules(host))
    assert store_files(data_dir) == {"10.88.0.2", "last_reserved_ip.0"}

    check = invoke("CHECK", {**conf, "prevResult": result}, host=host, sandbox=sandbox)
    assert check.rc == 0, check

    for _ in range(2):  # DEL is idempotent
        delete = invoke("DEL", {**conf, "prevResult": result}, host=host, sandbox=sandbox)
        assert delete.rc == 0, delete
    assert set(links(host)) == {"lo", "npbr0"}
    assert set(links(sandbox)) == {"lo"}
    assert nat_rules(host) == []
    assert store_files(data_dir) == {"last_reserved_ip.0"}


def test_legacy_versions_get_legacy_results(pair, data_dir):
    host, sandbox = pair
    for n, version in enumerate(("0.3.0", "0.3.1", "0.4.0", "1.1.0")):
        conf = bridge_conf(data_dir, cniVersion=version, ipMasq=False)
        reply = invoke("ADD", conf, host=host, sandbox=sandbox, ifname=f"eth{n}")
        assert reply.rc == 0, reply
        assert reply.out["cniVersion"] == version
        assert ("version" in reply.out["ips"][0]) == (version < "1.0.0")


def test_mac_from_args_and_runtime_config(pair, data_dir):
    host, sandbox = pair
    conf = bridge_conf(data_dir, ipMasq=False)
    a = invoke(
        "ADD", conf, host=host, sandbox=sandbox, args="IgnoreUnknown=1;MAC=0a:58:0a:00:00:09"
    )
    assert a.rc == 0 and a.out["interfaces"][2]["mac"] == "0a:58:0a:00:00:09"
    conf["runtimeConfig"] = {"mac": "0a:58:0a:00:00:0a"}
    b = invoke("ADD", conf, host=host, sandbox=sandbox, ifname="net1", container_id="ctr2")
    assert b.rc == 0 and b.out["interfaces"][2]["mac"] == "0a:58:0a:00:00:0a"


def test_layer2_only_without_ipam(pair):
    host, sandbox = pair
    conf = {"cniVersion": "1.0.0", "name": "l2", "type": "netplane-bridge", "bridge": "npl2"}
    reply = invoke("ADD", conf, host=host, sandbox=sandbox)
    assert reply.rc == 0, reply
    assert "ips" not in reply.out and len(reply.out["interfaces"]) == 3
    assert "UP" in links(sandbox)["eth0"]["flags"]
    assert invoke("DEL", conf, host=host, sandbox=sandbox).rc == 0


def test_disable_container_interface_leaves_it_down(pair):
    """The reference's disableContainerInterface (plugins v1.4.1): layer 2 only, the container
    end is created and attached but left down for the workload to bring up."""
    host, sandbox = pair
    conf = {"cniVersion": "1.0.0", "name": "l2", "type": "netplane-bridge", "bridge": "npl2",
            "disableContainerInterface": True}  # fmt: skip
    reply = invoke("ADD", conf, host=host, sandbox=sandbox)
    assert reply.rc == 0, reply
    assert "UP" not in links(sandbox)["eth0"]["flags"]
    assert links(host)[reply.out["interfaces"][1]["name"]]["master"] == "npl2"
    check = invoke("CHECK", {**conf, "prevResult": reply.out}, host=host, sandbox=sandbox)
    assert check.rc == 0, check
    assert invoke("DEL", conf, host=host, sandbox=sandbox).rc == 0
    assert set(links(host)) <= {"lo", "npl2"} and set(links(sandbox)) == {"lo"}


@pytest.mark.parametrize("check", [True, False])
def test_macspoofchk_drops_frames_with_another_source_mac(netns, data_dir, check):
    """With macspoofchk the container reaches its gateway until it changes its MAC; without,
    the same change goes through (the drop is the rule's doing, not a stale neighbour)."""
    host, sandbox = netns.new(), netns.new()
    conf = bridge_conf(data_dir, macspoofchk=check, ipMasq=False)
    add = invoke("ADD", conf, host=host, sandbox=sandbox)
    assert add.rc == 0, add
    assert ping(sandbox, "10.88.0.1")
    in_sandbox = ["ip", "netns", "exec", sandbox, "ip"]
    subprocess.run([*in_sandbox, "link", "set", "eth0", "address", "02:00:5e:00:53:99"], check=True)
    for ns in (host, sandbox):
        subprocess.run(["ip", "netns", "exec", ns, "ip", "neigh", "flush", "all"], check=True)
    assert ping(sandbox, "10.88.0.1") is not check
    assert invoke("DEL", {**conf, "prevResult": add.out}, host=host, sandbox=sandbox).rc == 0
    assert "cni-br-iface" not in nft_ruleset(host) and "macspoofchk" not in nft_ruleset(host)


def test_macspoofchk_del_removes_only_its_own_rules(netns, data_dir, tmp_path):
    host, first, second = netns.new(), netns.new(), netns.new()
    conf = bridge_conf(data_dir, macspoofchk=True, ipMasq=False)
    a = invoke("ADD", conf, host=host, sandbox=first, container_id="one")
    b = invoke("ADD", conf, host=host, sandbox=second, container_id="two")
    assert a.rc == 0 and b.rc == 0, (a, b)
    assert invoke("DEL", conf, host=host, sandbox=first, container_id="one").rc == 0
    listed = nft_ruleset(host)
    assert "macspoofchk-one-eth0" not in listed and "cni-br-iface-one-eth0" not in listed
    assert listed.count("macspoofchk-two-eth0") == 4 and ping(second, "10.88.0.1")
    assert invoke("DEL", conf, host=host, sandbox=second, container_id="two").rc == 0
    assert invoke("DEL", conf, host=host, sandbox=second, container_id="two").rc == 0  # again
    assert "macspoofchk" not in nft_ruleset(host)
    # no nft or iptables on the host: no rule of ours can exist, and a DEL must not fail forever
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "ip").symlink_to(shutil.which("ip") or "/usr/sbin/ip")
    bare = {"PATH": str(tmp_path / "bin")}
    for c in (conf, {**conf, "ipMasq": True}):
        gone = invoke("DEL", c, host=host, container_id="two", env=bare)
        assert gone.rc == 0, gone


def _vlan_filtering_supported(ns: str) -> bool:
    probe = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "ip",
            "link",
            "add",
            "npvlprobe",
            "type",
            "bridge",
            "vlan_filtering",
            "1",
        ],
        capture_output=True,
        check=False,
    )
    subprocess.run(
        ["ip", "netns", "exec", ns, "ip", "link", "del", "npvlprobe"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def test_vlan(pair, data_dir):
    host, sandbox = pair
    conf = bridge_conf(data_dir, vlan=42, preserveDefaultVlan=False, ipMasq=False)
    reply = invoke("ADD", conf, host=host, sandbox=sandbox)
    if not _vlan_filtering_supported(host):
        # This kernel lacks CONFIG_BRIDGE_VLAN_FILTERING: the reference fails too; fail cleanly.
        assert reply.rc != 0 and "VLAN filtering" in reply.out["msg"]
        assert set(links(host)) == {"lo"} and store_files(data_dir) == set()
        return
    assert reply.rc == 0, reply
    veth = reply.out["interfaces"][1]["name"]
    vlans = json.loads(
        subprocess.check_output(["ip", "netns", "exec", host, "bridge", "-j", "vlan"])
    )
    port = next(v for v in vlans if v["ifname"] == veth)
    assert [v["vlan"] for v in port["vlans"]] == [42]


def test_promisc(pair, data_dir):
    host, sandbox = pair
    conf = bridge_conf(data_dir, hairpinMode=False, promiscMode=True, ipMasq=False)
    assert invoke("ADD", conf, host=host, sandbox=sandbox).rc == 0
    assert "PROMISC" in links(host)["npbr0"]["flags"]


@pytest.mark.parametrize(
    ("stdin", "drop", "code"),
    [
        (b"{not json", (), 6),
        (b'{"cniVersion": "1.0.0"}', (), 7),
        (b'{"cniVersion": "9.9.9", "name": "x"}', (), 1),
        (b'{"cniVersion": "1.0.0", "name": "x", "macspoofchk": "yes"}', (), 7),
        (b'{"cniVersion": "1.0.0", "name": "x", "vlanTrunk": [{"id": 5}]}', (), 2),
        (
            b'{"cniVersion": "1.0.0", "name": "x", "disableContainerInterface": true, "ipam": '
            b'{"type": "netplane-ipam"}}',
            (),
            7,
        ),
        (b'{"cniVersion": "1.0.0", "name": "x", "disableContainerInterface": 1}', (), 7),
        (b'{"cniVersion": "1.0.0", "name": "x", "vlan": 5000}', (), 7),
        (b'{"cniVersion": "1.0.0", "name": "x", "hairpinMode": true, "promiscMode": true}', (), 7),
        (b'{"cniVersion": "1.0.0", "name": "x"}', ("CNI_COMMAND",), 4),
        (b'{"cniVersion": "1.0.0", "name": "x"}', ("CNI_CONTAINERID",), 4),
        (b'{"cniVersion": "1.0.0", "name": "x"}', ("CNI_PATH",), 4),
    ],
)
def test_errors_change_nothing(pair, stdin, drop, code):
    host, sandbox = pair
    before = (set(links(host)), set(links(sandbox)))
    reply = invoke("ADD", stdin, host=host, sandbox=sandbox, drop=drop)
    assert reply.rc != 0
    assert reply.out["code"] == code, reply
    assert reply.out["msg"]
    assert (set(links(host)), set(links(sandbox))) == before


def test_command_and_version_gates(pair, data_dir):
    host, sandbox = pair
    assert invoke("BOGUS", bridge_conf(data_dir), host=host, sandbox=sandbox).out["code"] == 4
    old = bridge_conf(data_dir, cniVersion="0.3.1")
    for command in ("CHECK", "GC", "STATUS"):
        assert invoke(command, old, host=host, sandbox=sandbox).out["code"] == 1
    bad_id = invoke("ADD", bridge_conf(data_dir), host=host, sandbox=sandbox, container_id="-x")
    assert bad_id.out["code"] == 4


def test_missing_netns_is_container_unknown(netns, data_dir):
    host = netns.new()
    reply = invoke("ADD", bridge_conf(data_dir), host=host, sandbox="npcni-gone")
    assert reply.rc != 0 and reply.out["code"] == 3
    assert store_files(data_dir) == set()


def test_add_twice_fails_and_keeps_first(pair, data_dir):
    host, sandbox = pair
    conf = bridge_conf(data_dir)
    assert invoke("ADD", conf, host=host, sandbox=sandbox).rc == 0
    again = invoke("ADD", conf, host=host, sandbox=sandbox)
    assert again.rc != 0 and "already exists" in again.out["msg"]
    assert store_files(data_dir) == {"10.88.0.2", "last_reserved_ip.0"}
    assert len(nat_rules(host)) == 4


def test_failure_mid_add_rolls_back(pair, data_dir):
    """host-local refuses a /31 after the bridge and veth exist: all of it must go."""
    host, sandbox = pair
    conf = bridge_conf(data_dir, macspoofchk=True)
    conf["ipam"] = {"type": "host-local", "subnet": "10.88.0.0/31", "dataDir": data_dir}
    reply = invoke("ADD", conf, host=host, sandbox=sandbox)
    assert reply.rc != 0 and "too small" in reply.out["msg"]
    assert set(links(host)) == {"lo"}
    assert set(links(sandbox)) == {"lo"}
    assert "macspoofchk" not in nft_ruleset(host)  # set up before IPAM, removed with the rest
    # ...and a failure after IPAM (the bridge has another address) releases the IP too.
    conf = bridge_conf(data_dir)
    assert invoke("ADD", conf, host=host, sandbox=sandbox).rc == 0
    other = bridge_conf(data_dir, name="other")
    other["ipam"]["ranges"] = [[{"subnet": "10.99.0.0/24"}]]
    reply = invoke("ADD", other, host=host, sandbox=sandbox, ifname="net1")
    assert reply.rc != 0 and "already has an IP address" in reply.out["msg"]
    assert store_files(data_dir, "other") == {"last_reserved_ip.0"}
    assert set(links(sandbox)) == {"lo", "eth0"}
    assert len(nat_rules(host)) == 4


def test_del_without_netns_and_after_netns_is_gone(netns, data_dir):
    host, sandbox = netns.new(), netns.new()
    conf = bridge_conf(data_dir)
    assert invoke("ADD", conf, host=host, sandbox=sandbox).rc == 0
    assert invoke("DEL", conf, host=host, sandbox=None).rc == 0  # NETNS="" like containerd's 2nd
    assert set(links(host)) == {"lo", "npbr0"}
    assert store_files(data_dir) == {"last_reserved_ip.0"} and nat_rules(host) == []
    assert invoke("ADD", conf, host=host, sandbox=sandbox, container_id="c2").rc == 0
    subprocess.run(["ip", "netns", "del", sandbox], check=True)
    assert invoke("DEL", conf, host=host, sandbox=sandbox, container_id="c2").rc == 0
    assert store_files(data_dir) == {"last_reserved_ip.0"} and nat_rules(host) == []


def test_check_detects_drift(pair, data_dir):
    host, sandbox = pair
    conf = bridge_conf(data_dir)
    result = invoke("ADD", conf, host=host, sandbox=sandbox).out
    subprocess.run(
        ["ip", "netns", "exec", sandbox, "ip", "addr", "flush", "dev", "eth0"], check=True
    )
    reply = invoke("CHECK", {**conf, "prevResult": result}, host=host, sandbox=sandbox)
    assert reply.rc != 0 and "missing" in reply.out["msg"]
    assert invoke("CHECK", conf, host=host, sandbox=sandbox).out["code"] == 7


def test_status_and_gc(pair, data_dir):
    host, sandbox = pair
    conf = bridge_conf(data_dir, cniVersion="1.1.0")
    assert invoke("STATUS", conf, host=host).rc == 0
    for cid in ("keep", "drop"):
        assert (
            invoke("ADD", conf, host=host, sandbox=sandbox, container_id=cid, ifname=f"e-{cid}").rc
            == 0
        )
    gc = {**conf, "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "e-keep"}]}
    assert invoke("GC", gc, host=host).rc == 0
    assert store_files(data_dir) == {"10.88.0.2", "last_reserved_ip.0"}
    assert all('id: \\"keep\\"' in r for r in nat_rules(host) if "comment" in r)


def test_ipam_plugin_standalone(data_dir):
    conf = bridge_conf(data_dir)
    reply = invoke("ADD", conf, binary=OURS_IPAM, sandbox="unused")
    assert reply.rc == 0, reply
    assert reply.out["ips"] == [{"address": "10.88.0.2/24", "gateway": "10.88.0.1"}]
    assert invoke("CHECK", conf, binary=OURS_IPAM, sandbox="unused").rc == 0
    assert invoke("DEL", conf, binary=OURS_IPAM).rc == 0
    assert invoke("DEL", conf, binary=OURS_IPAM).rc == 0
    assert invoke("CHECK", conf, binary=OURS_IPAM, sandbox="unused").rc != 0


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_in_a_conflist_with_reference_plugins(pair, data_dir, version):
    """netplane-bridge first, the reference `tuning` after it consuming our prevResult."""
    host, sandbox = pair
    bridge = bridge_conf(data_dir, cniVersion=version)
    tuning = {
        "cniVersion": version,
        "name": "nptest",
        "type": "tuning",
        "sysctl": {"net.ipv4.conf.eth0.rp_filter": "2"},
    }
    first = invoke("ADD", bridge, host=host, sandbox=sandbox)
    assert first.rc == 0, first
    second = invoke(
        "ADD",
        {**tuning, "prevResult": first.out},
        host=host,
        sandbox=sandbox,
        binary=f"{REF_DIR}/tuning",
    )
    assert second.rc == 0, second
    assert second.out["ips"] == first.out["ips"]
    rp = subprocess.run(
        ["ip", "netns", "exec", sandbox, "sysctl", "-n", "net.ipv4.conf.eth0.rp_filter"],
        capture_output=True,
        text=True,
    )
    assert rp.stdout.strip() == "2"
    final = second.out
    assert invoke("CHECK", {**bridge, "prevResult": final}, host=host, sandbox=sandbox).rc == 0
    assert (
        invoke(
            "DEL",
            {**tuning, "prevResult": final},
            host=host,
            sandbox=sandbox,
            binary=f"{REF_DIR}/tuning",
        ).rc
        == 0
    )
    assert invoke("DEL", {**bridge, "prevResult": final}, host=host, sandbox=sandbox).rc == 0
    assert set(links(sandbox)) == {"lo"}


def test_io_failure_and_unusable_store(pair, data_dir, tmp_path):
    host, sandbox = pair
    conf = bridge_conf(data_dir, cniVersion="1.1.0")
    conf["ipam"]["resolvConf"] = str(tmp_path / "missing-resolv.conf")
    reply = invoke("ADD", conf, host=host, sandbox=sandbox)
    assert reply.rc != 0 and reply.out["code"] == 5, reply
    assert store_files(data_dir) == set() and set(links(host)) == {"lo"}
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    conf = bridge_conf(str(blocker), cniVersion="1.1.0")
    reply = invoke("STATUS", conf, host=host)
    assert reply.rc != 0 and reply.out["code"] == 50, reply


def test_port_isolation(pair, data_dir):
    host, sandbox = pair
    reply = invoke("ADD", bridge_conf(data_dir, portIsolation=True), host=host, sandbox=sandbox)
    assert reply.rc == 0, reply
    port = links(host)[reply.out["interfaces"][1]["name"]]
    assert port["linkinfo"]["info_slave_data"]["isolated"] is True
    assert port["linkinfo"]["info_slave_data"]["hairpin"] is True
