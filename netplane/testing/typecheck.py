"""Type-check the product code with mypy (settings in pyproject.toml's [tool.mypy]).

The components live in top-level folders but install as `netplane.proxy`, `netplane.dns`,
... (pyproject's package-dir), and mypy cannot follow the editable install's import hook.
So this lays out the installed package tree as symlinks under `.mypy_cache/tree/` (kept
between runs, so mypy's incremental cache stays valid), runs mypy on it and reports the
errors under the repository's own paths.

    .venv/bin/python -m netplane.testing.typecheck      # exit status 0 when clean
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def package_dirs(root: Path = ROOT) -> dict[str, Path]:
    """{dotted package: source folder} for netplane and the components mapped under it."""
    with open(root / "pyproject.toml", "rb") as f:
        mapping: dict[str, str] = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return {name: root / folder for name, folder in mapping.items()}


def build_tree(tree: Path, root: Path = ROOT) -> dict[Path, Path]:
    """The installed layout as symlinks under TREE; returns {tree folder: source folder}."""
    dirs = package_dirs(root)
    shown: dict[Path, Path] = {}
    for name, source in sorted(dirs.items()):
        target = tree.joinpath(*name.split("."))
        target.mkdir(parents=True, exist_ok=True)
        wanted = {
            p.name: p
            for p in source.iterdir()
            if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))
            and f"{name}.{p.name}" not in dirs
        }
        for entry in target.iterdir():  # links to files since removed or renamed
            if entry.is_symlink() and entry.name not in wanted:
                entry.unlink()
        for entry_name, path in wanted.items():
            link = target / entry_name
            if not (link.is_symlink() and os.readlink(link) == str(path)):
                link.unlink(missing_ok=True)
                link.symlink_to(path)
        shown[target] = source
    return shown


def main(argv: list[str] | None = None) -> int:
    if importlib.util.find_spec("mypy") is None:
        sys.stdout.write("mypy is not installed: .venv/bin/pip install -e '.[test,bench]'\n")
        return 2
    cache = ROOT / ".mypy_cache"
    tree = cache / "tree"
    shown = build_tree(tree)
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]
    cmd += ["--cache-dir", str(cache), "-p", "netplane", *(argv or [])]
    proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    # deepest folders first: netplane/proxy/ before netplane/
    for folder, source in sorted(shown.items(), key=lambda kv: -len(kv[0].parts)):
        rel = folder.relative_to(tree).as_posix() + "/"
        out = out.replace(f"\n{rel}", f"\n{source.relative_to(ROOT).as_posix()}/")
        if out.startswith(rel):
            out = source.relative_to(ROOT).as_posix() + "/" + out[len(rel) :]
    sys.stdout.write(out)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
