"""What netplane-bridge puts on the wire, captured and dissected with scapy.

These are frames no real client looks at (a gratuitous ARP; the source address of a pod's
packet after the node's masquerade, one way, with no server or return path), so a sniffer
in the test's own namespace reads them; the reference `bridge` plugin is the yardstick.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Callable, Iterator

import pytest
from cniutil import REF, bridge_conf, invoke
from scapy.error import Scapy_Exception
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet
from scapy.sendrecv import AsyncSniffer
from scapy.supersocket import SimpleSocket

from netplane.netns import entered

ETH_P_ALL = 0x0003
BROADCAST = "ff:ff:ff:ff:ff:ff"


@contextlib.contextmanager
def sniffing(
    ns: str, match: Callable[[Packet], bool], iface: str | None = None
) -> Iterator[AsyncSniffer]:
    """Sniff the first frame that MATCHes in namespace NS, on IFACE or on every interface,
    including ones made after the start.

    The packet socket is opened inside NS (it stays there); scapy's own L2 sockets would be
    opened in the sniffer's thread, in the root namespace, and bind one interface by name,
    which ADD has not made yet.
    """
    with entered(ns):
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        if iface:
            raw.bind((iface, ETH_P_ALL))
    sock = SimpleSocket(raw, basecls=Ether)
    sniffer = AsyncSniffer(opened_socket=sock, lfilter=match, count=1, store=True)
    sniffer.start()
    try:
        yield sniffer
    finally:
        with contextlib.suppress(Scapy_Exception):  # it may have stopped on its own meanwhile
            sniffer.stop()
        sock.close()


def caught(sniffer: AsyncSniffer, what: str) -> Packet:
    sniffer.join(timeout=10)  # returns as soon as the frame is seen
    assert sniffer.results, f"no {what} within 10 s"
    return sniffer.results[0]


# -- the gratuitous ARP after ADD ---------------------------------------------------------
def add_and_capture_arp(netns, conf: dict, binary: str | None) -> tuple[dict, Packet]:
    """ADD in a fresh host/sandbox pair (then DEL); the ADD result and the first ARP frame
    seen in the host namespace: the pod's announcement, on its way in through the veth."""
    host, sandbox = netns.new(), netns.new()
    kw = {"binary": binary} if binary else {}
    with sniffing(host, lambda p: ARP in p) as sniffer:
        add = invoke("ADD", conf, host=host, sandbox=sandbox, **kw)
        assert add.rc == 0, add
        frame = caught(sniffer, "ARP frame after ADD")
    invoke("DEL", {**conf, "prevResult": add.out}, host=host, sandbox=sandbox, **kw)
    return add.out, frame


def arp_fields(frame: Packet) -> dict:
    arp = frame[ARP]
    return {
        "dst": frame.dst,
        "type": frame.type,
        **{f: getattr(arp, f) for f in ("hwtype", "ptype", "hwlen", "plen", "op", "hwdst")},
        "psrc": arp.psrc,
        "pdst": arp.pdst,
        "src_is_sender": frame.src == arp.hwsrc,
        "length": len(frame),
    }


def test_add_announces_the_pod_address(netns, tmp_path):
    conf = bridge_conf(str(tmp_path / "ipam"))
    result, frame = add_and_capture_arp(netns, conf, None)
    pod_ip = result["ips"][0]["address"].split("/")[0]
    pod_mac = result["interfaces"][2]["mac"]
    arp = frame[ARP]
    assert frame.dst == BROADCAST
    assert frame.src == arp.hwsrc == pod_mac
    assert arp.op == 1  # a request, as the reference (and arping -U) sends
    assert arp.psrc == arp.pdst == pod_ip
    assert arp.hwdst == "00:00:00:00:00:00"  # RFC 5227's announcement, as the reference sends


@pytest.mark.skipif(not os.path.exists(REF), reason="no reference bridge plugin")
def test_announcement_matches_the_reference(netns, tmp_path):
    seen = {}
    for who, binary, ipam_type in (("ref", REF, "host-local"), ("ours", None, "netplane-ipam")):
        conf = bridge_conf(str(tmp_path / who))
        conf["ipam"]["type"] = ipam_type
        result, frame = add_and_capture_arp(netns, conf, binary)
        assert frame[ARP].hwsrc == result["interfaces"][2]["mac"], who
        seen[who] = arp_fields(frame)
    assert seen["ours"] == seen["ref"]


# -- ipMasq: a pod's packet leaving the node ----------------------------------------------
UPLINK, OUTSIDE = "198.51.100.1", "198.51.100.2"  # TEST-NET-2, inside our namespaces only


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)


@pytest.mark.parametrize("masq", [True, False], ids=["ipMasq", "no-ipMasq"])
def test_pod_traffic_leaving_the_node(netns, tmp_path, masq):
    """With ipMasq the packet leaves with the node's uplink address (its source port kept, as
    plain MASQUERADE does when it is free); without, with the pod's own."""
    host, sandbox, outside = netns.new(), netns.new(), netns.new()
    ip(host, "link", "add", "npup0", "type", "veth", "peer", "name", "npout0", "netns", outside)
    ip(host, "addr", "add", f"{UPLINK}/24", "dev", "npup0")
    ip(host, "link", "set", "npup0", "up")
    ip(outside, "addr", "add", f"{OUTSIDE}/24", "dev", "npout0")
    ip(outside, "link", "set", "npout0", "up")
    conf = bridge_conf(str(tmp_path / "ipam"), ipMasq=masq)
    add = invoke("ADD", conf, host=host, sandbox=sandbox)
    assert add.rc == 0, add
    pod_ip = add.out["ips"][0]["address"].split("/")[0]

    def ours(p: Packet) -> bool:
        return IP in p and UDP in p and p[IP].dst == OUTSIDE and p[UDP].dport == 9

    with sniffing(outside, ours, iface="npout0") as sniffer:
        with entered(sandbox), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("", 40123))
            s.sendto(b"netplane", (OUTSIDE, 9))
        packet = caught(sniffer, "UDP datagram from the pod")
    assert packet[IP].src == (UPLINK if masq else pod_ip)
    assert packet[UDP].sport == 40123
    assert bytes(packet[UDP].payload) == b"netplane"
    assert invoke("DEL", {**conf, "prevResult": add.out}, host=host, sandbox=sandbox).rc == 0
