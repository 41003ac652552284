"""kube-proxy nftables mode's object names, so `nft list chain ip kube-proxy service-...`
finds the same chain under netplane as under kube-proxy.

A service port's chains are `<prefix><HASH>-<ns>/<name>/<proto>/<port name>`, an endpoint's
`<prefix><HASH>-<ns>/<name>/<proto>/<port name>__<ip>/<port>` (IPv6 colons become dots,
which chain names cannot hold); HASH is the first 8 base32 characters of the sha256 of the
part after it. Tested vectors (kube-proxy's): `service-ULMVA6XW-ns1/svc1/tcp/p80`,
`endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80`.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_PAIRS = [a + b for a in _B32 for b in _B32]  # 10 bits -> 2 characters
_MAX = 256 - 16  # nft's name limit minus the longest prefix, as kube-proxy

SERVICE = "service-"
LOCAL = "local-"
EXTERNAL = "external-"
FIREWALL = "firewall-"
ENDPOINT = "endpoint-"
AFFINITY = "affinity-"


def _hashed(name: str) -> str:
    n = int.from_bytes(hashlib.sha256(name.encode()).digest()[:5], "big")  # 40 bits
    t = _PAIRS
    name = f"{t[n >> 30]}{t[(n >> 20) & 1023]}{t[(n >> 10) & 1023]}{t[n & 1023]}-{name}"
    return name if len(name) <= _MAX else name[: _MAX - 3] + "..."


@lru_cache(maxsize=1 << 16)
def port_base(namespace: str, name: str, proto: str, port_name: str) -> str:
    """`HASH-ns/name/proto/port`: what follows `service-`, `local-`, `external-`,
    `firewall-`."""
    return _hashed(f"{namespace}/{name}/{proto}/{port_name}")


def endpoint_base(namespace: str, name: str, proto: str, port_name: str, ip: str, port: int) -> str:
    """`HASH-ns/name/proto/port__ip/port`: what follows `endpoint-` and `affinity-`."""
    return _hashed(f"{namespace}/{name}/{proto}/{port_name}__{ip.replace(':', '.')}/{port}")
