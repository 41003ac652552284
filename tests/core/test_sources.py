"""The manifest source follows file changes and never drops a good object for a typo."""

from __future__ import annotations

import contextlib
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
    source = ManifestSource(tmp_path, settle=0)  # removals at once (see test_sources_stale)
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


@contextlib.contextmanager
def following(path, **kw):
    """A background source on PATH, its first load done and the feed drained; stopped and
    joined on exit. Yields (state, tracker)."""
    state = ClusterState()
    tracker = state.tracker()
    thread, stop = start_source(ManifestSource(path, **kw), state)
    try:
        assert state.wait_synced(5)
        tracker.pop()
        yield state, tracker
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert isinstance(stop, threading.Event)


def test_background_source_picks_up_changes(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text(SVC % ("a", 80))
    with following(tmp_path, poll_interval=0.02) as (state, tracker):
        f.write_text(SVC % ("a", 8080))
        assert tracker.wait(5)
        assert state.snapshot().services[("default", "a")].ports[0].port == 8080


def test_removing_the_first_definition_reveals_the_second(tmp_path):
    (tmp_path / "a.yaml").write_text(SVC % ("dup", 1))
    (tmp_path / "b.yaml").write_text(SVC % ("dup", 2))
    state = ClusterState()
    source = ManifestSource(tmp_path)
    source.sync_once(state)
    assert state.snapshot().services[("default", "dup")].ports[0].port == 1
    assert "defined more than once" in str(source.errors[0])
    (tmp_path / "a.yaml").unlink()
    source.sync_once(state)
    assert state.snapshot().services[("default", "dup")].ports[0].port == 2
    assert source.errors == ()


def test_configmap_volume_symlink_flip_is_followed(tmp_path):
    # kubelet's layout: ..2024_01/svc.yaml, ..data -> ..2024_01, svc.yaml -> ..data/svc.yaml
    (tmp_path / "..v1").mkdir()
    (tmp_path / "..v1" / "svc.yaml").write_text(SVC % ("cm", 80))
    (tmp_path / "..data").symlink_to("..v1")
    (tmp_path / "svc.yaml").symlink_to("..data/svc.yaml")
    with following(tmp_path, rescan_interval=30) as (state, tracker):
        assert list(state.snapshot().services) == [("default", "cm")]  # the hidden copy is skipped
        (tmp_path / "..v2").mkdir()
        (tmp_path / "..v2" / "svc.yaml").write_text(SVC % ("cm", 8080))
        (tmp_path / "..data_tmp").symlink_to("..v2")
        (tmp_path / "..data_tmp").rename(tmp_path / "..data")  # the atomic flip
        assert tracker.wait(5)
        assert state.snapshot().services[("default", "cm")].ports[0].port == 8080


def test_single_file_replaced_by_rename_is_followed(tmp_path):
    f = tmp_path / "one.yaml"
    f.write_text(SVC % ("a", 80))
    with following(f, rescan_interval=30) as (state, tracker):
        (tmp_path / "other.yaml").write_text(SVC % ("ignored", 80))  # not the followed file
        tmp = tmp_path / ".one.yaml.swp"
        tmp.write_text(SVC % ("a", 81))
        tmp.rename(f)  # how editors and `kubectl`-style tools save
        assert tracker.wait(5)
        assert set(state.snapshot().services) == {("default", "a")}
        assert state.snapshot().services[("default", "a")].ports[0].port == 81


def test_directory_created_after_start_is_picked_up(tmp_path):
    missing = tmp_path / "later"
    with following(missing, poll_interval=0.02) as (state, tracker):
        missing.mkdir()
        (missing / "a.yaml").write_text(SVC % ("a", 80))
        assert tracker.wait(5)
        assert ("default", "a") in state.snapshot().services


def test_relative_path_is_followed(tmp_path, monkeypatch):
    """`--manifests ./dir` is how people start daemons; inotify reports absolute paths."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.yaml").write_text(SVC % ("a", 80))
    monkeypatch.chdir(tmp_path)
    with following("m", rescan_interval=30) as (state, tracker):
        for port in (81, 82):  # the second edit proves the watcher survived the first
            (tmp_path / "m" / "a.yaml").write_text(SVC % ("a", port))
            assert tracker.wait(5)
            tracker.pop()
            assert state.snapshot().services[("default", "a")].ports[0].port == port
