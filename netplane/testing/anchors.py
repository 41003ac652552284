"""The real peers netplane is measured and tested against, built from the Go module proxy.

"Anchors" are pinned releases of etcd, the Kubernetes components and CoreDNS. They are
built once into a cache outside the repository (`NETPLANE_ANCHORS`, default
/var/cache/netplane/anchors) and rebuilt only when their pin changes, so the first test run
on a machine pays for the Go builds and every later run reuses the binaries. Nothing built
here is ever committed or shipped.

`k8s.io/kubernetes` and etcd's server module cannot be `go install`ed: their go.mod replaces
sibling modules with local paths. Each is built from a small wrapper module whose `replace`
lines point every such sibling at its published version instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

KUBERNETES = "v1.33.13"  # the latest v1.33 patch on the module proxy
ETCD = "v3.5.35"  # the etcd line Kubernetes 1.33 is tested with
COREDNS = "v1.15.0"  # a current release; its default plugin set includes `kubernetes`


@dataclass(frozen=True)
class Anchor:
    """One binary: the module it comes from and how to build it."""

    name: str
    module: str  # the module the wrapper requires (or `go install`s)
    version: str
    package: str  # the package main to build
    wrapper: bool  # needs a wrapper module (local `replace` lines in its go.mod)
    ldflags: str = ""
    cgo: bool = False

    @property
    def pin(self) -> str:
        return f"{self.module}@{self.version} {self.package} {self.ldflags} cgo={int(self.cgo)}"


def _kube(name: str) -> Anchor:
    ldflags = " ".join(
        f"-X k8s.io/component-base/version.{key}={value}"
        for key, value in (
            ("gitVersion", KUBERNETES),
            ("gitMajor", KUBERNETES[1:].split(".")[0]),
            ("gitMinor", KUBERNETES.split(".")[1]),
            ("gitTreeState", "clean"),
        )
    )
    return Anchor(
        name, "k8s.io/kubernetes", KUBERNETES, f"k8s.io/kubernetes/cmd/{name}", True, ldflags
    )


ANCHORS: dict[str, Anchor] = {
    a.name: a
    for a in (
        Anchor(
            "etcd",
            "go.etcd.io/etcd/server/v3",
            ETCD,
            "go.etcd.io/etcd/server/v3",
            True,
        ),
        _kube("kube-apiserver"),
        _kube("kubectl"),
        _kube("kube-controller-manager"),
        _kube("kube-scheduler"),
        _kube("kube-proxy"),
        # Static like the rest: a cgo kubelet shares no compiled package with the other
        # binaries (2,636 s cold on the loaded 2 cores here, against 40 s of CPU static).
        _kube("kubelet"),
        Anchor(
            "coredns",
            "github.com/coredns/coredns",
            COREDNS,
            "github.com/coredns/coredns",
            False,
            f"-X github.com/coredns/coredns/coremain.GitCommit={COREDNS}",
        ),
    )
}


# What the test suite runs (bootstrap.sh's test job builds these): the control plane with its
# controller manager and scheduler, kubectl, the real kube-proxy, CoreDNS, and the kubelet of
# tests/deploy's real node: today every anchor.
FOR_TESTS = (
    "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl",
    "kube-proxy", "kubelet", "coredns",
)  # fmt: skip


class AnchorError(RuntimeError):
    """A build could not be done; the message says what to do about it."""


def cache_dir() -> Path:
    return Path(os.environ.get("NETPLANE_ANCHORS", "/var/cache/netplane/anchors"))


def binary(name: str) -> Path:
    return cache_dir() / "bin" / name


def is_built(name: str) -> bool:
    path = binary(name)
    stamp = path.with_name(f".{name}.pin")
    return path.is_file() and stamp.is_file() and stamp.read_text() == ANCHORS[name].pin


def require(*names: str) -> dict[str, Path]:
    """Paths of built anchors, or an AnchorError saying how to build the missing ones."""
    missing = [n for n in names if not is_built(n)]
    if missing:
        raise AnchorError(
            f"not built: {', '.join(missing)} (run `netplane anchors build`; cache {cache_dir()})"
        )
    return {n: binary(n) for n in names}


MIN_GO = "1.24"  # what Kubernetes v1.33 and CoreDNS 1.15 need


def go() -> str:
    """The Go toolchain: on PATH, or where the official tarball installs it (a PATH that lost
    /usr/local/go/bin, as under sudo or a CI runner, still finds it)."""
    return shutil.which("go") or shutil.which("go", path="/usr/local/go/bin") or ""


def _goproxy() -> str:
    env = subprocess.run([go(), "env", "GOPROXY"], capture_output=True, text=True, check=True)
    return env.stdout.strip().split(",")[0].split("|")[0]


def check_proxy(anchor: Anchor, timeout: float = 15.0) -> None:
    """Fail early and clearly when the module proxy cannot be reached."""
    proxy = _goproxy()
    if proxy in ("off", "direct", ""):
        return
    url = f"{proxy.rstrip('/')}/{_escape(anchor.module)}/@v/{anchor.version}.info"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            reply.read()
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise AnchorError(
            f"the Go module proxy is unreachable ({url}: {e}); anchors are built from it "
            "(set GOPROXY to a proxy you can reach, or copy a built cache into "
            f"{cache_dir()})"
        ) from e


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise AnchorError(f"`{' '.join(argv)}` failed in {cwd}:\n{tail}")


def _local_replacements(gomod: str) -> dict[str, str]:
    """Required modules that a go.mod replaces with a local directory, with the version it
    requires (the siblings a wrapper must point at their published versions; guards like
    `=> ./FORBIDDEN_DEPENDENCY` for modules never required are left out)."""
    local = re.findall(r"^\s*(?:replace\s+)?(\S+)\s+=>\s+\.\.?/\S+\s*$", gomod, re.MULTILINE)
    required = dict(
        re.findall(r"^\s*(?:require\s+)?(\S+)\s+(v\S+)(?:\s+//.*)?$", gomod, re.MULTILINE)
    )
    return {m: required[m] for m in local if m in required}


def _sibling_version(anchor: Anchor, required: str) -> str:
    if required == "v0.0.0" and anchor.module == "k8s.io/kubernetes":
        return "v0" + anchor.version[2:]  # staging modules: v1.33.13 -> v0.33.13
    return required


def wrapper_files(anchor: Anchor, gomod: str) -> dict[str, str]:
    """go.mod and tools.go of the wrapper module for ANCHOR, given the anchor's own go.mod:
    it requires the anchor and points each sibling the anchor replaces locally at its
    published version."""
    replaces = [
        f"\t{m} => {m} {_sibling_version(anchor, v)}" for m, v in _local_replacements(gomod).items()
    ]
    go_line = re.search(r"^go\s+(\S+)", gomod, re.MULTILINE)
    go_mod = (
        f"module netplane.anchors/{anchor.name}\n\ngo {go_line.group(1) if go_line else '1.22'}\n\n"
        f"require {anchor.module} {anchor.version}\n"
    )
    if replaces:
        go_mod += "\nreplace (\n" + "\n".join(replaces) + "\n)\n"
    packages = sorted({a.package for a in ANCHORS.values() if a.module == anchor.module})
    tools = (
        "//go:build tools\n\npackage tools\n\nimport (\n"
        + "".join(f'\t_ "{p}"\n' for p in packages)
        + ")\n"
    )
    return {"go.mod": go_mod, "tools.go": tools}


def _wrapper(anchor: Anchor, work: Path, env: dict[str, str]) -> Path:
    """A module requiring the anchor with its local replaces pointed at published versions."""
    src = work / f"{anchor.module.replace('/', '_')}-{anchor.version}"
    if (src / "go.sum").is_file():
        return src
    src.mkdir(parents=True, exist_ok=True)
    _run([go(), "mod", "download", "-json", f"{anchor.module}@{anchor.version}"], src, env)
    modcache = subprocess.run(
        [go(), "env", "GOMODCACHE"], capture_output=True, text=True, env=env, check=True
    ).stdout.strip()
    gomod_path = Path(modcache) / "cache/download" / _escape(anchor.module) / "@v"
    gomod = (gomod_path / f"{anchor.version}.mod").read_text()
    for name, text in wrapper_files(anchor, gomod).items():
        (src / name).write_text(text)
    _run([go(), "mod", "tidy", "-e"], src, env)
    return src


def _escape(module: str) -> str:
    """The module proxy's case encoding: every upper-case letter becomes `!` + lower case."""
    return re.sub(r"[A-Z]", lambda m: "!" + m.group(0).lower(), module)


@contextlib.contextmanager
def _heartbeat(label: str, every: float = 30.0) -> Iterator[None]:
    """A line every `every` seconds, so a 20-minute Go build does not look hung."""
    stop = threading.Event()
    start = time.monotonic()

    def beat() -> None:
        while not stop.wait(every):
            print(f"  ... {label}: {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def build_one(anchor: Anchor) -> float:
    """Build one anchor into the cache; seconds taken."""
    start = time.monotonic()
    out = binary(anchor.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CGO_ENABLED": "1" if anchor.cgo else "0", "GOFLAGS": "-mod=mod"}
    tmp = out.with_name(f".{anchor.name}.tmp")
    ldflags = f"-s -w {anchor.ldflags}".strip()
    if anchor.wrapper:
        src = _wrapper(anchor, cache_dir() / "src", env)
        _run(
            [go(), "build", "-trimpath", f"-ldflags={ldflags}", "-o", str(tmp), anchor.package],
            src,
            env,
        )
    else:
        gobin = cache_dir() / "src" / f"gobin-{anchor.name}"
        gobin.mkdir(parents=True, exist_ok=True)
        env["GOBIN"] = str(gobin)
        env.pop("GOFLAGS")
        _run(
            [
                go(),
                "install",
                "-trimpath",
                f"-ldflags={ldflags}",
                f"{anchor.package}@{anchor.version}",
            ],
            gobin,
            env,
        )
        shutil.move(gobin / anchor.package.rsplit("/", 1)[-1], tmp)
    os.replace(tmp, out)
    out.with_name(f".{anchor.name}.pin").write_text(anchor.pin)
    return time.monotonic() - start


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    """One builder at a time per cache (parallel test sessions wait for the first)."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another build in {cache_dir()} ...", file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build(names: Iterable[str] | None = None, force: bool = False) -> dict[str, float | None]:
    """Build what is missing or out of date; name -> seconds (None: reused from the cache).

    What is built already is reused without waiting for the cache lock (another session may
    hold it for a long build of something else) and without the Go toolchain."""
    chosen = [ANCHORS[n] for n in (names or ANCHORS)]
    taken: dict[str, float | None] = {}
    if not force and all(is_built(a.name) for a in chosen):
        return dict.fromkeys((a.name for a in chosen), None)
    if not go():
        raise AnchorError(
            "no Go toolchain (`go` on PATH or /usr/local/go/bin/go): the anchors are built "
            f"with Go >= {MIN_GO} (Debian 12's golang package is 1.19, too old)"
        )
    with _cache_lock():
        todo = [a for a in chosen if force or not is_built(a.name)]
        for a in chosen:
            if a not in todo:
                taken[a.name] = None
        if todo:
            check_proxy(todo[0])
        for i, anchor in enumerate(todo, 1):
            print(
                f"[{i}/{len(todo)}] building {anchor.name} ({anchor.module}@{anchor.version})",
                file=sys.stderr,
                flush=True,
            )
            with _heartbeat(anchor.name):
                taken[anchor.name] = build_one(anchor)
            print(
                f"[{i}/{len(todo)}] {anchor.name}: {taken[anchor.name]:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    return {a.name: taken[a.name] for a in chosen}
