"""Generated names the way the Deployment and ReplicaSet controllers make them (pure)."""

from __future__ import annotations

import json
import random

# Kubernetes' "safe" alphabet: no vowels (no words), no look-alike characters.
ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def _fnv32a(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def template_hash(template: dict) -> str:
    """The pod-template-hash label: FNV-32a of the template, its decimal digits mapped to the
    safe alphabet (so "blue" gets e.g. `5c986bd7bf`, stable for the same template)."""
    digits = str(_fnv32a(json.dumps(template, sort_keys=True).encode()))
    return "".join(ALPHABET[int(d) % len(ALPHABET)] for d in digits)


def suffix(rng: random.Random, length: int = 5) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(length))


def uid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"
