"""The same config through the reference bridge + host-local and through netplane-bridge, each in
its own host namespace: the resulting kernel state and the results must be equivalent."""

from __future__ import annotations

import copy
import json
import re
import subprocess

import pytest
from cniutil import REF, bridge_conf, invoke, links, nat_rules, ns_json, store_files

VARIANTS = {
    "gateway-masq-hairpin-mtu": {"mtu": 1400},
    "default-gateway": {
        "isDefaultGateway": True,
        "ipMasq": False,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.88.0.0/24"}]],
        },
    },
    "legacy-0.3.1": {"cniVersion": "0.3.1", "hairpinMode": False, "promiscMode": True},
    "dual-stack": {
        "isDefaultGateway": True,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.88.0.0/24"}], [{"subnet": "fd00:88::/64"}]],
        },
    },
    "layer2": {"isGateway": False, "ipMasq": False, "ipam": {}},
    "macspoofchk": {"macspoofchk": True},
}


def bridge_nat(ns: str) -> list:
    """`table bridge nat` (macspoofchk's), handles dropped and what is random per run (host
    veth names, the container's MAC) made equal."""
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "bridge", "nat"],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    if not out:
        return []
    entries = []
    for entry in json.loads(out)["nftables"]:
        body = next(iter(entry.values()))
        if isinstance(body, dict):
            body.pop("handle", None)
        text = json.dumps(entry, sort_keys=True)
        text = re.sub(r'"veth[0-9a-f]+"', '"veth"', text)
        entries.append(re.sub(r'"([0-9a-f]{2}:){5}[0-9a-f]{2}"', '"mac"', text))
    return sorted(e for e in entries if '"metainfo"' not in e)


def host_state(ns: str) -> dict:
    state = {}
    for name, link in links(ns).items():
        slave = link.get("linkinfo", {}).get("info_slave_data", {})
        key = "veth" if name.startswith("veth") else name
        state.setdefault(key, []).append(
            (
                link["mtu"],
                link.get("master"),
                slave.get("hairpin"),
                "PROMISC" in link["flags"],
                "UP" in link["flags"],
                link.get("linkinfo", {}).get("info_kind"),
            )
        )
    addrs = {
        a["ifname"]: sorted(
            (i["local"], i["prefixlen"], i.get("broadcast"))
            for i in a["addr_info"]
            if i.get("scope") == "global"
        )
        for a in ns_json(ns, "addr", "show")
    }
    forward = subprocess.run(
        ["ip", "netns", "exec", ns, "sysctl", "-n", "net.ipv4.ip_forward"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return {
        "links": state,
        "addrs": {k: v for k, v in addrs.items() if v},
        "forward": forward,
        "nat": sorted(nat_rules(ns)),
        "bridge_nat": bridge_nat(ns),
    }


def sandbox_state(ns: str) -> dict:
    eth = links(ns)["eth0"]
    addrs = sorted(
        (i["local"], i["prefixlen"], i.get("broadcast"))
        for i in ns_json(ns, "addr", "show", "eth0")[0]["addr_info"]
        if i.get("scope") == "global"
    )
    routes = sorted(
        (r["dst"], r.get("gateway"), r["dev"], r.get("protocol"), r.get("scope"))
        for family in ("-4", "-6")
        for r in ns_json(ns, family, "route", "show")
    )
    return {"mtu": eth["mtu"], "up": "UP" in eth["flags"], "addrs": addrs, "routes": routes}


def normalise(result: dict) -> dict:
    out = copy.deepcopy(result)
    out.pop("dns", None)
    for iface in out.get("interfaces", []):
        iface.pop("mac", None)
        iface.pop("sandbox", None)
        if iface["name"].startswith("veth"):
            iface["name"] = "veth"
    return out


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_equivalent_state(netns, tmp_path, variant):
    seen = {}
    for who, binary, ipam_type in (("ref", REF, "host-local"), ("ours", None, "netplane-ipam")):
        host, sandbox = netns.new(), netns.new()
        conf = bridge_conf(str(tmp_path / who), **copy.deepcopy(VARIANTS[variant]))
        if conf["ipam"]:
            conf["ipam"].setdefault("dataDir", str(tmp_path / who))
            conf["ipam"]["type"] = ipam_type
        kw = {"binary": binary} if binary else {}
        add = invoke("ADD", conf, host=host, sandbox=sandbox, **kw)
        assert add.rc == 0, (who, add)
        seen[who] = {
            "result": normalise(add.out),
            "host": host_state(host),
            "sandbox": sandbox_state(sandbox),
            "store": store_files(str(tmp_path / who)),
        }
        for _ in range(2):
            assert (
                invoke("DEL", {**conf, "prevResult": add.out}, host=host, sandbox=sandbox, **kw).rc
                == 0
            )
        seen[who]["after_del"] = (
            host_state(host),
            set(links(sandbox)),
            store_files(str(tmp_path / who)),
        )
    assert seen["ours"]["result"] == seen["ref"]["result"]
    assert seen["ours"]["sandbox"] == seen["ref"]["sandbox"]
    assert seen["ours"]["host"] == seen["ref"]["host"]
    assert seen["ours"]["store"] == seen["ref"]["store"]
    assert seen["ours"]["after_del"] == seen["ref"]["after_del"]
