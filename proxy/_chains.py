"""kube-proxy-compatible chain names: `KUBE-SVC-<16 base32 chars of sha256>` and friends.

The hashes are kube-proxy's own (iptables proxier), so `iptables-save | grep KUBE-SVC-XPGD...`
finds the same chain under netplane as under kube-proxy:

    base32(sha256(svcPortName + protocol))[:16]              KUBE-SVC/SVL/EXT/FW-
    base32(sha256(svcPortName + protocol + "ip:port"))[:16]  KUBE-SEP-

svcPortName is `ns/name:portname`, or `ns/name` when the port is unnamed (kube-proxy's
`ServicePortName.String()`); protocol is lower case; the endpoint is Go's
`net.JoinHostPort` form (`[fd00::1]:80` for IPv6).

Hashing is the most expensive step of rendering a service, so `port_hash` is cached here and
endpoint chain names with the rest of an endpoint's rules (`render._endpoint`); both caches
are bounded, so endpoint churn in a long-running daemon cannot grow them without limit.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

_CACHE = 1 << 18  # 262k entries: 10k services x 5 endpoints uses ~60k
_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"  # RFC 4648 base32 alphabet
_B32_PAIRS = [a + b for a in _B32 for b in _B32]  # 10 bits -> 2 characters


def _b32_16(data: bytes) -> str:
    """base32(data)[:16]: the first 80 bits as 16 characters. Python's base64.b32encode
    is pure Python (~11 us for a sha256 digest); this is ~1 us."""
    n = int.from_bytes(data[:10], "big")
    t = _B32_PAIRS
    return (
        t[n >> 70]
        + t[(n >> 60) & 1023]
        + t[(n >> 50) & 1023]
        + t[(n >> 40) & 1023]
        + t[(n >> 30) & 1023]
        + t[(n >> 20) & 1023]
        + t[(n >> 10) & 1023]
        + t[n & 1023]
    )


def service_port_name(namespace: str, name: str, port_name: str) -> str:
    """kube-proxy's `ServicePortName.String()`: `ns/name:port`, or `ns/name` if unnamed."""
    return f"{namespace}/{name}:{port_name}" if port_name else f"{namespace}/{name}"


@lru_cache(maxsize=_CACHE)
def port_hash(svc_port_name: str, protocol: str) -> str:
    """The 16-character suffix shared by KUBE-SVC-/SVL-/EXT-/FW- of one service port."""
    return _b32_16(hashlib.sha256((svc_port_name + protocol.lower()).encode()).digest())


def endpoint_chain_name(svc_port_name: str, protocol: str, endpoint: str) -> str:
    """KUBE-SEP-<hash> for one endpoint (`ip:port` / `[ip]:port`) of one service port."""
    data = (svc_port_name + protocol.lower() + endpoint).encode()
    return "KUBE-SEP-" + _b32_16(hashlib.sha256(data).digest())
