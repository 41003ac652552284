"""Events as the components record them (pure): `kubectl get events` and `describe` read them."""

from __future__ import annotations

import random
import sys

MAX_EVENTS = 1000  # the API server keeps events for an hour; the emulator keeps the newest


def make_event(
    obj: dict,
    reason: str,
    message: str,
    now: str,
    rng: random.Random,
    component: str,
    type_: str = "Normal",
) -> dict:
    meta = obj["metadata"]
    namespace = meta.get("namespace") or "default"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{meta['name']}.{rng.getrandbits(64):016x}",
            "namespace": namespace,
            "creationTimestamp": now,
        },
        "involvedObject": {
            "apiVersion": obj.get("apiVersion", "v1"),
            "kind": obj["kind"],
            "name": meta["name"],
            "namespace": namespace,
            "uid": meta.get("uid", ""),
        },
        "reason": reason,
        "message": message,
        "type": type_,
        "count": 1,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": "",
    }


def oldest_beyond_cap(events: list[tuple[tuple[str, str, str], dict]]) -> list:
    """Keys of the events to drop so that at most MAX_EVENTS remain (oldest first)."""
    if len(events) <= MAX_EVENTS:
        return []
    # an event made in this pass has no resourceVersion yet: it is the newest, not the oldest
    ordered = sorted(
        events, key=lambda kv: int(kv[1]["metadata"].get("resourceVersion") or sys.maxsize)
    )
    return [k for k, _ in ordered[: len(events) - MAX_EVENTS]]
