"""The manifest source follows file changes and never drops a good object for a typo."""

from __future__ import annotations

import threading

from netplane.sources import ManifestSource, start_source
from netplane.state import ClusterState

SVC = "kind: Service\napiVersion: v1\nmetadata: {name: %s}\nspec: {ports: [{port: %d}]}\n"


def test_initial_load_marks_synced_and_reports_errors(tmp_path):
    (tmp_path / "a.yaml").write_text(SVC % ("a", 80) + "---\n" + SVC % ("bad", 0))
    state = ClusterState()
    source = ManifestSource(tmp_path)
    assert not state.synced
    source.sync_once(state)
    assert state.synced and set(state.snapshot().services) == {("default", "a")}
    assert len(source.errors) == 1 and "spec.ports[0].port" in str(source.errors[0])


def test_only_changes_are_applied(tmp_path):
    (tmp_path / "a.yaml").write_text(SVC % ("a", 80))
    (tmp_path / "b.yaml").write_text(SVC % ("b", 80))
    state = ClusterState()
    source = ManifestSource(tmp_path)
    source.sync_once(state)
    tracker = state.tracker()
    assert source.sync_once(state) is False  # nothing changed on disk
    (tmp_path / "b.yaml").write_text(SVC % ("b", 81))
    assert source.sync_once(state) is True
    assert tracker.pop().services == {("default", "b")}
    (tmp_path / "b.yaml").unlink()
    source.sync_once(state)
    assert tracker.pop().services == {("default", "b")}
    assert set(state.snapshot().services) == {("default", "a")}


def test_invalid_edit_keeps_last_good_version(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text(SVC % ("a", 80))
    state = ClusterState()
    source = ManifestSource(tmp_path)
    source.sync_once(state)
    f.write_text(SVC % ("a", 99999))  # invalid port: the object is rejected, not deleted
    source.sync_once(state)
    assert state.snapshot().services[("default", "a")].ports[0].port == 80
    assert "out of range" in str(source.errors[0])
    f.write_text("kind: Service\nmetadata: {name: [")  # the whole file is unreadable
    source.sync_once(state)
    assert ("default", "a") in state.snapshot().services
    f.write_text(SVC % ("a", 81))
    source.sync_once(state)
    assert state.snapshot().services[("default", "a")].ports[0].port == 81
    assert source.errors == ()


def test_single_file_and_missing_path(tmp_path):
    f = tmp_path / "one.json"
    f.write_text(
        '{"kind": "Service", "apiVersion": "v1", "metadata": {"name": "j"},'
        ' "spec": {"ports": [{"port": 53, "protocol": "UDP"}]}}'
    )
    state = ClusterState()
    ManifestSource(f).sync_once(state)
    assert state.snapshot().services[("default", "j")].ports[0].protocol == "UDP"
    missing = ManifestSource(tmp_path / "nope")
    other = ClusterState()
    missing.sync_once(other)
    assert other.synced and "no such file" in str(missing.errors[0])


def test_background_source_picks_up_changes(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text(SVC % ("a", 80))
    state = ClusterState()
    tracker = state.tracker()
    thread, stop = start_source(ManifestSource(tmp_path, poll_interval=0.02), state)
    try:
        assert state.wait_synced(5)
        tracker.pop()
        f.write_text(SVC % ("a", 8080))
        assert tracker.wait(5)
        assert state.snapshot().services[("default", "a")].ports[0].port == 8080
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert isinstance(stop, threading.Event)
