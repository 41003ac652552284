"""Result files: what every run writes and what `compare` relies on."""

from __future__ import annotations

import json
import os

import pytest

from netplane.bench._results import (
    SCHEMA,
    ResultError,
    Series,
    Skipped,
    load_result,
    new_result,
    platform_info,
    validate,
    write_result,
)


def _result():
    return new_result(
        "sync",
        {"quick": True},
        [Series("latency", "s", {"backend": "legacy", "services": 100}, (0.1, 0.2, 0.3))],
        [Skipped("nft", "not installed")],
    )


def test_platform_names_the_machine_and_tools():
    p = platform_info()
    for key in ("arch", "cpu_model", "cores", "kernel", "distribution", "python", "netplane"):
        assert p[key], key
    assert os.path.isabs(p["python_executable"]) and not os.path.islink(p["python_executable"])
    assert p["cores"] >= 1
    assert "git_commit" in p and "iptables_variant" in p and "nft" in p
    assert p["emulated"] is None  # this host is real hardware (or a VM), not qemu-user


def test_emulation_is_declared_by_the_environment(monkeypatch):
    monkeypatch.setenv("NETPLANE_BENCH_EMULATED", "qemu-user")
    r = _result()
    assert r.emulated
    assert r.to_json()["emulated"] is True
    assert r.platform["emulated"] == "qemu-user"


def test_written_file_round_trips_with_raw_samples(tmp_path):
    r = _result()
    path = write_result(r, tmp_path)
    doc = json.loads(path.read_text())
    assert doc["schema"] == SCHEMA and validate(doc) == []
    assert doc["series"][0]["values"] == [0.1, 0.2, 0.3]
    back = load_result(path)
    assert back.series == r.series and back.skipped == r.skipped
    assert back.platform == r.platform and back.parameters == {"quick": True}


def test_runs_never_overwrite_each_other(tmp_path):
    r = _result()
    assert write_result(r, tmp_path) != write_result(r, tmp_path)
    assert len(list(tmp_path.glob("sync-*.json"))) == 2


def test_emulated_runs_are_named_so(tmp_path, monkeypatch):
    monkeypatch.setenv("NETPLANE_BENCH_EMULATED", "qemu-user")
    assert write_result(_result(), tmp_path).name.endswith("-emulated.json")


def test_bad_files_say_where_and_why(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ResultError, match=r"bad\.json: cannot read"):
        load_result(bad)
    doc = _result().to_json()
    doc["series"][0]["values"] = ["fast"]
    del doc["platform"]["arch"]
    bad.write_text(json.dumps(doc))
    with pytest.raises(ResultError) as e:
        load_result(bad)
    assert "series[0].values" in str(e.value) and "platform.arch" in str(e.value)


def test_validate_rejects_other_documents():
    assert validate([]) == ["top level is not an object"]
    problems = validate({"schema": "x"})
    assert any("schema" in p for p in problems) and any("series" in p for p in problems)


def test_commit_is_read_in_a_clone_and_in_a_worktree(tmp_path):
    """Read from .git without git; in a worktree .git is a file and the branch lives in the
    main repository's refs (loose, then packed)."""
    import shutil
    import subprocess

    from netplane.bench._results import git_commit

    if shutil.which("git") is None:
        pytest.skip("git is needed to make the repositories")

    def git(*args: str, cwd=tmp_path / "main") -> str:
        env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
               "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"}  # fmt: skip
        return subprocess.run(["git", *args], cwd=cwd, env=env, check=True,
                              capture_output=True, text=True).stdout.strip()  # fmt: skip

    (tmp_path / "main").mkdir()
    git("init", "-q", "-b", "main")
    git("commit", "-q", "--allow-empty", "-m", "one")
    git("worktree", "add", "-q", "-b", "side", str(tmp_path / "side"))
    git("commit", "-q", "--allow-empty", "-m", "two", cwd=tmp_path / "side")
    assert git_commit(tmp_path / "main") == git("rev-parse", "HEAD")
    assert git_commit(tmp_path / "side") == git("rev-parse", "side")
    git("pack-refs", "--all")
    assert git_commit(tmp_path / "side") == git("rev-parse", "side")
    assert git_commit(tmp_path) is None  # not a checkout
