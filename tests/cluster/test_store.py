"""The daemon's object store as the API's watch sees it (pure: no cluster)."""

from __future__ import annotations

from netplane.cluster.daemon import store as store_module
from netplane.cluster.daemon.store import ObjectStore
from netplane.cluster.statedir import StateDir


def pod(name: str, phase: str = "Pending") -> dict:
    return {"kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "status": {"phase": phase}}  # fmt: skip


def test_watch_events_follow_every_write(tmp_path):
    s = ObjectStore(StateDir(tmp_path))
    key = ("Pod", "default", "a")
    s.put(key, pod("a"))
    s.put(key, pod("a"))  # unchanged: no new revision, no event
    s.put(key, pod("a", "Running"))
    assert s.pop(("Pod", "default", "nope")) is None  # nothing removed: no event
    s.pop(key)
    events = s.events_since(0, timeout=0)
    assert [(r, kind) for r, kind, _, _ in events] == [
        (1, "ADDED"),
        (2, "MODIFIED"),
        (3, "DELETED"),
    ]
    # the delete event carries the object as it was, at the deletion's revision
    assert events[2][3]["status"]["phase"] == "Running"
    assert events[2][3]["metadata"]["resourceVersion"] == "3"
    assert s.events_since(1, timeout=0) == events[1:]
    assert s.events_since(3, timeout=0) == []  # nothing new (after waiting TIMEOUT)


def test_a_watch_too_far_behind_must_list_again(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "HISTORY", 3)
    s = ObjectStore(StateDir(tmp_path))
    for i in range(5):
        s.put(("Pod", "default", f"p{i}"), pod(f"p{i}"))
    assert s.events_since(1, timeout=0) is None  # revision 2 is no longer kept: 410 Gone
    assert [e[0] for e in s.events_since(2, timeout=0)] == [3, 4, 5]
