"""The manifest source keeps its last good objects while its files are gone, unreadable or
caught half-written; only an object really removed from a present, readable source goes."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from netplane.sources import ManifestSource, start_source
from netplane.state import ClusterState

SVC = "kind: Service\napiVersion: v1\nmetadata: {name: %s}\nspec: {ports: [{port: %d}]}\n"
SLICE = (
    "kind: EndpointSlice\napiVersion: discovery.k8s.io/v1\n"
    "metadata: {name: %s-1, labels: {kubernetes.io/service-name: %s}}\n"
    "addressType: IPv4\nendpoints: [{addresses: [10.0.0.1]}]\n"
)


def both(name: str, port: int = 80) -> str:
    return SVC % (name, port) + "---\n" + SLICE % (name, name)


def names(state: ClusterState) -> set[str]:
    snap = state.snapshot()
    return {n for _, n in snap.services} | {f"{n}-slice" for (_, n) in snap.slices}


def test_directory_gone_keeps_everything_until_it_is_back(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "a.yaml").write_text(both("a"))
    (d / "b.yaml").write_text(both("b"))
    state = ClusterState()
    source = ManifestSource(d, settle=0)
    source.sync_once(state)
    assert names(state) == {"a", "a-slice", "b", "b-slice"} and source.stale is None
    shutil.rmtree(d)
    source.sync_once(state)
    assert names(state) == {"a", "a-slice", "b", "b-slice"}  # served as last seen
    assert "no such file" in source.stale
    d.mkdir()  # back, with b really removed
    (d / "a.yaml").write_text(both("a", 81))
    source.sync_once(state)
    assert source.stale is None
    assert names(state) == {"a", "a-slice"}
    assert state.snapshot().services[("default", "a")].ports[0].port == 81


def test_single_file_gone_keeps_its_objects(tmp_path):
    f = tmp_path / "all.yaml"
    f.write_text(both("a"))
    state = ClusterState()
    source = ManifestSource(f, settle=0)
    source.sync_once(state)
    f.unlink()
    source.sync_once(state)
    assert names(state) == {"a", "a-slice"} and source.stale
    f.write_text(SVC % ("a", 80))  # back, without the slice: that is a real removal
    source.sync_once(state)
    assert names(state) == {"a"} and source.stale is None


def test_unreadable_file_keeps_its_objects(tmp_path):
    real = tmp_path / "real.yaml"
    real.write_text(both("a"))
    link = tmp_path / "m" / "a.yaml"
    link.parent.mkdir()
    link.symlink_to(real)  # a ConfigMap-style link
    state = ClusterState()
    source = ManifestSource(link.parent, settle=0)
    source.sync_once(state)
    real.unlink()  # the link dangles: listed, but cannot be read
    source.sync_once(state)
    assert names(state) == {"a", "a-slice"}
    assert "cannot be read" in source.stale and "a.yaml" in source.stale
    assert any("cannot read" in str(e) for e in source.errors)
    real.write_text(both("a", 82))
    source.sync_once(state)
    assert source.stale is None and source.errors == ()
    assert state.snapshot().services[("default", "a")].ports[0].port == 82


_AS_NOBODY = textwrap.dedent("""
    import os, pathlib, shutil, sys, tempfile
    from netplane.sources import ManifestSource
    from netplane.state import ClusterState
    svc = sys.argv[1]
    d = pathlib.Path(tempfile.mkdtemp())
    (d / "sub").mkdir()
    (d / "a.yaml").write_text(svc % ("a", 80))
    (d / "sub" / "b.yaml").write_text(svc % ("b", 80))
    state = ClusterState()
    source = ManifestSource(d, settle=0)
    source.sync_once(state)
    os.chmod(d / "a.yaml", 0)       # no permission to read a file
    os.chmod(d / "sub", 0)          # nor to list a directory
    source.sync_once(state)
    print(sorted(n for _, n in state.snapshot().services), bool(source.stale))
    os.chmod(d / "a.yaml", 0o644)
    os.chmod(d / "sub", 0o755)
    source.sync_once(state)
    print(sorted(n for _, n in state.snapshot().services), bool(source.stale))
    os.chmod(d, 0)                  # the whole directory
    source.sync_once(state)
    print(sorted(n for _, n in state.snapshot().services), bool(source.stale))
    os.chmod(d, 0o755)
    shutil.rmtree(d)
""")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root")
def test_permission_denied_keeps_objects():
    """Root reads anything: the source runs as nobody here, on files nobody owns."""
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
            sys.executable, "-c", _AS_NOBODY, SVC]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "['a', 'b'] True",  # a unreadable, sub unlistable: both kept, stale
        "['a', 'b'] False",
        "['a', 'b'] True",  # the directory itself
    ], out.stdout + out.stderr


def test_half_written_file_between_documents_removes_nothing(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text(both("a"))
    state = ClusterState()
    source = ManifestSource(tmp_path, settle=30)
    source.sync_once(state)
    with f.open("w") as out:  # rewritten in place, caught right after the `---`
        out.write(SVC % ("a", 81) + "---\n")
        out.flush()
        source.sync_once(state)
        assert names(state) == {"a", "a-slice"}  # the slice waits
        assert state.snapshot().services[("default", "a")].ports[0].port == 81
        out.write(SLICE % ("a", "a"))
    source.sync_once(state)
    assert names(state) == {"a", "a-slice"} and not source._vanished


def test_half_written_file_inside_a_document_removes_nothing(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text(both("a"))
    state = ClusterState()
    source = ManifestSource(tmp_path, settle=0)
    source.sync_once(state)
    f.write_text(both("a")[:-20])  # cut inside the slice: not valid YAML any more
    source.sync_once(state)
    assert names(state) == {"a", "a-slice"}
    assert "not valid YAML" in str(source.errors[0])


@contextlib.contextmanager
def following(path, **kw):
    state = ClusterState()
    tracker = state.tracker()
    source = ManifestSource(path, **kw)
    thread, stop = start_source(source, state)
    try:
        assert state.wait_synced(5)
        tracker.pop()
        yield state, source
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()


def _watch(state: ClusterState, seconds: float) -> list[set[str]]:
    """What the state served, sampled every 10 ms for SECONDS."""
    seen = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seen.append(names(state))
        time.sleep(0.01)
    return seen


def test_directory_recreated_and_refilled_removes_nothing(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    for n in "abc":
        (d / f"{n}.yaml").write_text(both(n))
    everything = {"a", "a-slice", "b", "b-slice", "c", "c-slice"}
    with following(d, settle=1.5, poll_interval=0.02) as (state, source):
        assert names(state) == everything
        shutil.rmtree(d)
        seen = _watch(state, 0.5)
        assert source.stale
        d.mkdir()  # re-created empty, refilled file by file
        for n in "abc":
            seen += _watch(state, 0.2)
            (d / f"{n}.yaml").write_text(both(n))
        seen += _watch(state, 2.0)
        assert all(s == everything for s in seen), [s for s in seen if s != everything][:3]
        assert source.stale is None


def test_real_removal_happens_once_the_source_is_quiet(tmp_path):
    (tmp_path / "a.yaml").write_text(both("a"))
    (tmp_path / "b.yaml").write_text(SVC % ("b", 80))
    with following(tmp_path, settle=0.3, rescan_interval=30) as (state, source):
        (tmp_path / "a.yaml").write_text(SVC % ("a", 80))  # the slice really goes
        (tmp_path / "b.yaml").unlink()  # and a whole file
        end = time.monotonic() + 10
        while names(state) != {"a"} and time.monotonic() < end:
            time.sleep(0.02)
        assert names(state) == {"a"} and source.stale is None
