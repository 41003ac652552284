"""The gratuitous ARP that ADD sends for the pod's IPv4 address, as captured on the wire.

No real client looks at this frame, so scapy sniffs it in the test's host namespace and
dissects it; the reference `bridge` plugin's frame for the same config is the yardstick.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

import pytest
from cniutil import REF, bridge_conf, invoke
from scapy.error import Scapy_Exception
from scapy.layers.l2 import ARP, Ether
from scapy.sendrecv import AsyncSniffer
from scapy.supersocket import SimpleSocket

from netplane.netns import entered

ETH_P_ALL = 0x0003
BROADCAST = "ff:ff:ff:ff:ff:ff"


@contextlib.contextmanager
def arp_sniffer(ns: str) -> Iterator[AsyncSniffer]:
    """Sniff the first ARP frame on any interface of NS, including ones made after the start.

    The packet socket is opened inside NS (it stays there) and left unbound, so it sees the
    bridge and veth that ADD is about to create; scapy's own L2 sockets bind one named
    interface, which does not exist yet.
    """
    with entered(ns):
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock = SimpleSocket(raw, basecls=Ether)
    sniffer = AsyncSniffer(opened_socket=sock, lfilter=lambda p: ARP in p, count=1, store=True)
    sniffer.start()
    try:
        yield sniffer
    finally:
        with contextlib.suppress(Scapy_Exception):  # it may have stopped on its own meanwhile
            sniffer.stop()
        sock.close()


def add_and_capture(netns, conf: dict, binary: str | None) -> tuple[dict, Ether]:
    """ADD in a fresh host/sandbox pair (then DEL); the ADD result and the first ARP frame
    seen in the host namespace: the pod's announcement, on its way in through the veth."""
    host, sandbox = netns.new(), netns.new()
    kw = {"binary": binary} if binary else {}
    with arp_sniffer(host) as sniffer:
        add = invoke("ADD", conf, host=host, sandbox=sandbox, **kw)
        assert add.rc == 0, add
        sniffer.join(timeout=10)  # returns as soon as the frame is seen
    assert sniffer.results, "no ARP frame within 10 s of ADD"
    invoke("DEL", {**conf, "prevResult": add.out}, host=host, sandbox=sandbox, **kw)
    return add.out, sniffer.results[0]


def fields(frame: Ether) -> dict:
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
    result, frame = add_and_capture(netns, conf, None)
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
        result, frame = add_and_capture(netns, conf, binary)
        assert frame[ARP].hwsrc == result["interfaces"][2]["mac"], who
        seen[who] = fields(frame)
    assert seen["ours"] == seen["ref"]
