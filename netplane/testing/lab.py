"""The namespace lab that tests, benchmarks and `netplane demo` share.

`Lab` builds a node namespace with a pod bridge, pod namespaces on it (optionally running
`RESPONDER`) and an external client on the node's uplink; `probe` opens connections from a
namespace and reports who answered and which source address arrived. Built on
`netplane.netns`; nothing here is used by the data plane.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from netplane.netns import (
    NetnsError,
    address,
    bridge,
    create,
    delete,
    ip,
    popen,
    route,
    run,
    stop,
    sysctl,
    unique_name,
    veth,
)

T = TypeVar("T")

# A tiny responder for pods: TCP answers one HTTP/1.0 response, UDP echoes a datagram; both
# say "<pod name> <client ip>" so tests see who answered and which source address arrived.
# A third argument "6" also serves IPv6 (separate v6-only sockets, so IPv4 peers keep
# their plain dotted address).
RESPONDER = r"""
import socket, sys, threading
name, port = sys.argv[1], int(sys.argv[2])
families = [socket.AF_INET] + ([socket.AF_INET6] if sys.argv[3:4] == ["6"] else [])
def sock(family, kind):
    s = socket.socket(family, kind); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    return s
def tcp(s):
    s.listen(256)
    while True:
        c, peer = s.accept()
        try:
            c.settimeout(2); c.recv(4096)
            body = f"{name} {peer[0]}\n".encode()
            c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        except OSError:
            pass
        finally:
            c.close()
def udp(s):
    while True:
        data, addr = s.recvfrom(2048)
        s.sendto(f"{name} {addr[0]}\n".encode(), addr)
servers = [(tcp, sock(f, socket.SOCK_STREAM)) for f in families]
servers += [(udp, sock(f, socket.SOCK_DGRAM)) for f in families]
for serve, s in servers[1:]:
    threading.Thread(target=serve, args=(s,), daemon=True).start()
print("ready", flush=True)
servers[0][0](servers[0][1])
"""


# A client for tests: COUNT fresh connections (or datagrams) to HOST:PORT, one answer line
# each, or "ERR <reason>" (refused is immediate with REJECT, a DROP times out).
PROBE = r"""
import socket, sys
host, proto = sys.argv[1], sys.argv[4]
port, count, timeout = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[5])
sport = int(sys.argv[6])
for _ in range(count):
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, kind); s.settimeout(timeout)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        if sport:
            s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", sport))
        s.connect((host, port))
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            data += chunk
            if not chunk or proto == "udp":
                break
        print(data.decode().splitlines()[-1], flush=True)
    except ConnectionRefusedError:
        print("ERR refused", flush=True)
    except OSError as e:
        print("ERR", type(e).__name__, flush=True)
    finally:
        s.close()
"""


def probe(
    ns: str,
    host: str,
    port: int,
    count: int = 1,
    proto: str = "tcp",
    timeout: float = 5.0,
    sport: int = 0,
) -> list[str]:
    """Answers of COUNT new connections from NS: "<pod> <source seen>" or "ERR <why>".

    SPORT fixes the source port (UDP: every datagram then shares one conntrack entry).
    """
    argv = [sys.executable, "-c", PROBE, host, str(port), str(count), proto, str(timeout)]
    argv.append(str(sport))
    out = run(ns, argv, timeout=30 + count * timeout)
    return out.splitlines()


@dataclass
class Pod:
    name: str
    ns: str
    ip: str
    server: subprocess.Popen | None = None
    ip6: str = ""  # with Lab(ipv6=True)


@dataclass
class Lab:
    """node namespace (bridge `npbr0` with the pods' gateway, uplink `up0`), pods, external.

    Pods are on 10.<net>.1.0/24 behind the bridge; the uplink joins the node to an
    "external" namespace on 172.31.<net>.0/24. Use as a context manager: leaving it stops
    every process it started and deletes every namespace, also after errors.

    IPV6=True adds IPv6 beside IPv4 (ULA only): pods on fd00:<net>:1::/64, the uplink on
    fd00:<net>:ff::/64, forwarding on, responders also listening on IPv6. Addresses skip
    DAD (`nodad`, and accept_dad=0 for the link-local ones) and the lab waits until no
    address is tentative, so the first packet of a test is not lost to DAD.
    """

    prefix: str = "npprx"
    net: int = 244
    ipv6: bool = False
    node: str = ""
    external: str = ""
    pods: dict[str, Pod] = field(default_factory=dict)
    _namespaces: list[str] = field(default_factory=list)
    _procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def node_ip(self) -> str:
        return f"172.31.{self.net}.1"

    @property
    def external_ip(self) -> str:
        return f"172.31.{self.net}.2"

    @property
    def gateway(self) -> str:
        return f"10.{self.net}.1.1"

    @property
    def pod_cidr(self) -> str:
        return f"10.{self.net}.1.0/24"

    @property
    def node_ip6(self) -> str:
        return f"fd00:{self.net}:ff::1"

    @property
    def external_ip6(self) -> str:
        return f"fd00:{self.net}:ff::2"

    @property
    def gateway6(self) -> str:
        return f"fd00:{self.net}:1::1"

    @property
    def pod_cidr6(self) -> str:
        return f"fd00:{self.net}:1::/64"

    def __enter__(self) -> Lab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ns(self, role: str) -> str:
        name = create(unique_name(f"{self.prefix}{role}"))
        self._namespaces.append(name)
        if self.ipv6:  # before any interface exists: link-local addresses skip DAD too
            for conf in ("all", "default"):
                sysctl(name, f"net.ipv6.conf.{conf}.accept_dad", 0)
        return name

    def _build(self) -> None:
        self.node = self._ns("n")
        sysctl(self.node, "net.ipv4.ip_forward", 1)
        sysctl(self.node, "net.ipv4.conf.all.send_redirects", 0)
        bridge(self.node, "npbr0")
        address(self.node, "npbr0", f"{self.gateway}/24")
        # Replies between two pods on the bridge must pass the node's conntrack to be
        # un-DNATed, as on a real node with the bridge CNI plugin.
        with contextlib.suppress(NetnsError):
            sysctl(self.node, "net.bridge.bridge-nf-call-iptables", 1)
        self.external = self._ns("x")
        veth(self.node, "up0", self.external, "eth0")
        address(self.node, "up0", f"{self.node_ip}/24")
        address(self.external, "eth0", f"{self.external_ip}/24")
        route(self.node, "default", self.external_ip)
        if self.ipv6:
            sysctl(self.node, "net.ipv6.conf.all.forwarding", 1)
            with contextlib.suppress(NetnsError):
                sysctl(self.node, "net.bridge.bridge-nf-call-ip6tables", 1)
            address(self.node, "npbr0", f"{self.gateway6}/64")
            address(self.node, "up0", f"{self.node_ip6}/64")
            address(self.external, "eth0", f"{self.external_ip6}/64")
            ip("-6", "-n", self.node, "route", "add", "default", "via", self.external_ip6)
            self._wait_ipv6(self.node, self.external)

    def add_pod(self, name: str, host: int, serve_port: int | None = None) -> Pod:
        """A pod namespace on the bridge at 10.<net>.1.<host>, optionally running RESPONDER."""
        ns = self._ns("p")
        peer = f"npv{host}"
        veth(ns, "eth0", self.node, peer)
        ip("-n", self.node, "link", "set", peer, "master", "npbr0")
        pod_ip = f"10.{self.net}.1.{host}"
        address(ns, "eth0", f"{pod_ip}/24")
        route(ns, "default", self.gateway)
        pod = Pod(name, ns, pod_ip)
        if self.ipv6:
            pod.ip6 = f"fd00:{self.net}:1::{host:x}"
            address(ns, "eth0", f"{pod.ip6}/64")
            ip("-6", "-n", ns, "route", "add", "default", "via", self.gateway6)
            self._wait_ipv6(ns, self.node)
        if serve_port is not None:
            argv = [sys.executable, "-c", RESPONDER, name, str(serve_port)]
            pod.server = self.start(ns, argv + (["6"] if self.ipv6 else []))
            line = pod.server.stdout.readline() if pod.server.stdout else ""
            if "ready" not in line:
                raise NetnsError(f"responder in {ns} did not start")
        self.pods[name] = pod
        return pod

    def _wait_ipv6(self, *namespaces: str) -> None:
        """Until no address is tentative (DAD) or failed DAD: only then can it be used."""
        for ns in namespaces:
            settled = partial(_no_tentative_address, ns)
            wait_for(settled, 10, what=f"IPv6 addresses in {ns}")
            failed = ip("-6", "-n", ns, "addr", "show", "dadfailed").strip()
            if failed:
                raise NetnsError(f"IPv6 duplicate address detection failed in {ns}: {failed}")

    def start(self, ns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        """A process inside NS that `close()` stops (stdout piped unless given)."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("text", True)
        proc = popen(ns, argv, **kwargs)
        self._procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self._procs):
            stop(proc)
        self._procs.clear()
        for ns in reversed(self._namespaces):
            delete(ns)
        self._namespaces.clear()


def _no_tentative_address(ns: str) -> bool:
    return not ip("-6", "-n", ns, "addr", "show", "tentative").strip()


def wait_for(
    predicate: Callable[[], T], timeout: float, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll PREDICATE until it returns a true value (returned) or TIMEOUT passes (raises)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
