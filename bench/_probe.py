"""Asking the kernel whether a rule is active, by sending it a connection.

Inside a benchmark namespace every ClusterIP (10.96.0.0/16) and every pod IP
(10.128.0.0/9) is a local address, and one listener accepts on the target port. So a
connection to ClusterIP:80 is *accepted* exactly when a DNAT rule sent it to an endpoint,
and *refused* (RST from the stack, or the proxy's REJECT for a service without endpoints)
otherwise; the listener also sees which endpoint address the DNAT chose. Both answers
come back in tens of microseconds, which makes a probe cheap enough to poll continuously
even with 100k rules, unlike `iptables-save`.
"""

from __future__ import annotations

import errno
import socket
import struct
import threading
import time

from netplane.bench import _workload as w
from netplane.bench._netns import Netns
from netplane.bench._scenario import Expect

# a pod address (in POD_NET, so not masqueraded) that no endpoint index maps to
PROBE_SOURCE = "10.255.255.254"
OPEN, REFUSED = "open", "refused"
AVOID_FACTOR = 20  # misses in a row per endpoint before "avoids" is proven (p < e^-20)
ICMP_DEST_UNREACH = 3  # the ICMP type a REJECT sends, a bit of net.ipv4.icmp_ratemask


class ProbeTimeout(RuntimeError):
    """The expected answer did not come before the deadline."""


def setup_probing(ns: Netns) -> None:
    """Every ClusterIP and pod IP local, and refusals never rate-limited.

    The kernel sends at most 1,000 ICMP errors a second with a burst of 50, loopback
    included (`net.ipv4.icmp_msgs_per_sec` / `_burst`); a probe polling a service without
    endpoints asks for more. The REJECT's port-unreachable is then not sent, the SYN goes
    unanswered and the probe waits for TCP's retransmit: a change measured 1 s late
    (seen as `endpoint-flap` at 1.01 s with one endpoint). `icmp_ratemask` without
    destination-unreachable exempts it, in this namespace only.
    """
    ns.exec("ip", "route", "add", "local", str(w.SERVICE_NET), "dev", "lo")
    ns.exec("ip", "route", "add", "local", str(w.POD_NET), "dev", "lo")
    mask = int(ns.exec("sysctl", "-n", "net.ipv4.icmp_ratemask"))
    ns.exec("sysctl", "-qw", f"net.ipv4.icmp_ratemask={mask & ~(1 << ICMP_DEST_UNREACH)}")


class Listener:
    """Accepts on the target port on its own thread, noting which local address (the
    endpoint the DNAT chose) each client port reached.

    It closes normally (FIN): a reset could reach the client before its connect() returned
    and turn an accepted connection into ECONNRESET. The client side resets instead.
    """

    def __init__(self, ns: Netns, port: int = w.TARGET_PORT) -> None:
        self._sock: socket.socket = ns.call(self._open, port)
        self._cond = threading.Condition()
        self._seen: dict[int, str] = {}  # client port -> endpoint address
        self._thread = threading.Thread(target=self._serve, name="bench-listener", daemon=True)
        self._thread.start()

    @staticmethod
    def _open(port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(1024)
        return s

    def _serve(self) -> None:
        while True:
            try:
                conn, (_, client_port) = self._sock.accept()
            except OSError:
                return  # closed
            with self._cond:
                self._seen[client_port] = conn.getsockname()[0]
                self._cond.notify_all()
            conn.close()

    def forget(self) -> None:
        with self._cond:
            self._seen.clear()

    def endpoint_of(self, client_port: int, timeout: float = 1.0) -> str | None:
        with self._cond:
            self._cond.wait_for(lambda: client_port in self._seen, timeout)
            return self._seen.pop(client_port, None)

    def close(self) -> None:
        self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(5)


def probe(ip: str, listener: Listener | None = None, timeout: float = 1.0) -> tuple[str, str]:
    """(OPEN, endpoint address or "") or (REFUSED / an errno name, ""). Runs on a thread
    inside the namespace."""
    if listener is not None:
        listener.forget()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((PROBE_SOURCE, 0))
        s.settimeout(timeout)
        code = s.connect_ex((ip, w.SERVICE_PORT))
        port = s.getsockname()[1]
    except TimeoutError:
        return "timeout", ""
    finally:
        # linger 0: close with RST, so thousands of probes leave no TIME_WAIT behind
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    if code == 0:
        return OPEN, (listener.endpoint_of(port) or "") if listener is not None else ""
    if code == errno.ECONNREFUSED:
        return REFUSED, ""
    return errno.errorcode.get(code, str(code)), ""


def wait_for(
    ip: str,
    expect: Expect,
    deadline: float,
    listener: Listener | None = None,
    endpoint_ip: str = "",
    width: int = 1,
    cancel: threading.Event | None = None,
) -> float:
    """Probe until EXPECT is observed; the monotonic time it became true.

    WIDTH is how many endpoints share the traffic: `avoids` needs AVOID_FACTOR * WIDTH
    misses in a row, and dates the change at the first miss after the last hit.
    """
    needed = AVOID_FACTOR * max(width, 1)
    misses, first_miss, last = 0, 0.0, ("", "")
    while time.monotonic() < deadline and not (cancel and cancel.is_set()):
        last = probe(ip, listener)
        now = time.monotonic()
        status, reached = last
        if expect.kind == "open" and status == OPEN:
            return now
        if expect.kind == "refused" and status == REFUSED:
            return now
        if expect.kind == "reaches" and reached == endpoint_ip:
            return now
        if expect.kind == "avoids":
            if status in (OPEN, REFUSED) and reached != endpoint_ip:
                misses, first_miss = misses + 1, first_miss if misses else now
                if misses >= needed:
                    return first_miss
            else:
                misses = 0
            continue  # back to back: the run of misses is the evidence
        time.sleep(0.001)
    raise ProbeTimeout(f"{ip}:{w.SERVICE_PORT} last answered {last}, expected {expect}")
