"""`netplane image build`: the multi-arch image, built here from Debian packages, no registry.

1. A base per architecture: a `debootstrap --variant=minbase` bookworm rootfs with what the
   image needs at run time (python3, iptables, nftables, conntrack, iproute2), imported with
   `podman import`. arm64 runs its second stage under qemu-user-static (binfmt). The rootfs
   tarball is cached per pin (suite, packages, arch) outside the repository: a cold base
   costs minutes (amd64) to tens of minutes (arm64), a warm one seconds.
2. The wheels the image installs, downloaded on this host for each target platform (the
   host's pip trusts the host's CA bundle; a pip inside the build might not), cached per
   dependency list.
3. `deploy/Containerfile` on top, per architecture (`podman build --platform`), its build
   stage on the host's own architecture (pip for the target platform, a cross C compiler for
   the static CNI launcher), so nothing but a shell check runs emulated.
4. One manifest list of both, saved as an OCI archive (`podman manifest push --all`), and a
   smoke run of each architecture: `netplane --version`, `iptables --version`.

Podman's storage (the layer cache) and the build cache live under NETPLANE_IMAGE_CACHE
(default /var/cache/netplane/image). Builds use the host network (`--network host`): no CNI
bridge or rules are made in the host's namespace.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click

import netplane

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "iptables", "nftables", "conntrack", "iproute2", "ca-certificates")
ARCHES = ("amd64", "arm64")
PYTHON_VERSION = "3.11"  # bookworm's python3: the wheels are chosen for it
# only the emulated cluster needs these (deploy/Containerfile's LEAVE_OUT says the same)
LEAVE_OUT = ("kubernetes-validate", "jsonpath-ng")
REPO = Path(__file__).resolve().parent.parent
IMAGE = "localhost/netplane/netplane"
_BASE_RECIPE = 2  # bump when the way a base rootfs is made changes
_IMPORT_RECIPE = 2  # bump when the way a rootfs is imported into podman changes
_QEMU = {"arm64": "aarch64", "amd64": "x86_64"}
_PIP_PLATFORMS = {"amd64": "x86_64", "arm64": "aarch64"}


class ImageError(RuntimeError):
    """A build step failed; the message says which and why."""


def cache_dir() -> Path:
    return Path(os.environ.get("NETPLANE_IMAGE_CACHE", "/var/cache/netplane/image"))


def host_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _log(msg: str) -> None:
    print(f"image: {msg}", file=sys.stderr, flush=True)


def _run(argv: list[str], *, env: dict[str, str] | None = None, log: Path | None = None) -> str:
    """Run a build command; its output goes to LOG (the tail is shown when it fails)."""
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(log, "ab")) if log else subprocess.PIPE
        proc = subprocess.run(argv, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:] if log else proc.stdout.decode()[-3000:]
        raise ImageError(f"{' '.join(argv[:4])} ... failed (exit {proc.returncode}):\n{tail}")
    took = time.monotonic() - start
    if took > 5:
        _log(f"{' '.join(argv[:3])} ... {took:.0f} s")
    return "" if log else proc.stdout.decode()


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """One build of a cached thing at a time (other engineers, CI and tests share the cache)."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


# -- 1. the base ---------------------------------------------------------------------------
def ensure_binfmt(arch: str) -> None:
    """Foreign binaries run through qemu-user-static: register its binfmt handler (with the F
    flag, so it also works inside a chroot or container) when it is not there yet."""
    if arch == host_arch():
        return
    qemu = _QEMU[arch]
    misc = Path("/proc/sys/fs/binfmt_misc")
    if (misc / f"qemu-{qemu}").exists():
        return
    conf = Path(f"/usr/lib/binfmt.d/qemu-{qemu}.conf")
    if not conf.exists():
        raise ImageError(f"{conf} missing: apt-get install qemu-user-static")
    if not (misc / "register").exists():
        _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(misc)])
    with contextlib.suppress(FileExistsError):  # someone registered it meanwhile
        (misc / "register").write_text(conf.read_text().strip())


def base_pin(arch: str) -> str:
    recipe = {
        "suite": SUITE,
        "mirror": MIRROR,
        "packages": BASE_PACKAGES,
        "arch": arch,
        "recipe": _BASE_RECIPE,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def base_rootfs(arch: str) -> Path:
    """The base rootfs tarball for ARCH, from the cache or made now with debootstrap."""
    tarball = cache_dir() / "base" / f"{SUITE}-{arch}-{base_pin(arch)}.tar"
    if tarball.exists():
        return tarball
    with _locked(f"base-{arch}"):
        if tarball.exists():
            return tarball
        ensure_binfmt(arch)
        tarball.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"rootfs-{arch}-", dir=tarball.parent))
        log = tarball.with_suffix(".log")
        log.unlink(missing_ok=True)
        _log(f"debootstrap {SUITE} {arch} (first build on this machine; log {log})")
        try:
            _run(
                ["debootstrap", "--variant=minbase", f"--arch={arch}",
                 f"--include={','.join(BASE_PACKAGES)}", SUITE, str(work), MIRROR],
                log=log,
            )  # fmt: skip
            _slim(work)
            tmp = tarball.with_suffix(".tmp")
            _run(["tar", "--numeric-owner", "-C", str(work), "-cf", str(tmp), "."])
            tmp.rename(tarball)
        finally:
            _unmount_below(work)
            shutil.rmtree(work, ignore_errors=True)
    return tarball


def _slim(root: Path) -> None:
    """Drop what a container never reads: docs, man pages, locales, apt's caches and logs."""
    for rel in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
                "var/cache/apt", "var/lib/apt/lists", "var/log"):  # fmt: skip
        path = root / rel
        if path.is_dir():
            shutil.rmtree(path)
            path.mkdir()
    (root / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)


def _unmount_below(root: Path) -> None:
    """debootstrap mounts proc/sys in the target; a failed run can leave them."""
    with open("/proc/self/mounts") as f:
        mounts = [line.split()[1] for line in f]
    for mount in sorted((m for m in mounts if m.startswith(f"{root}/")), reverse=True):
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)


# -- podman with private storage -----------------------------------------------------------
def podman_env() -> dict[str, str]:
    """Podman with its storage (the layer cache) under the cache dir, cgroupfs, no CNI."""
    conf = cache_dir() / "podman"
    conf.mkdir(parents=True, exist_ok=True)
    storage, containers = conf / "storage.conf", conf / "containers.conf"
    storage.write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{cache_dir()}/storage"\n'
        f'runroot = "{cache_dir()}/run"\n'
    )
    # root here lacks CAP_SYS_RESOURCE: podman's default nofile limit cannot be set
    containers.write_text(
        '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n'
        'netns = "host"\n[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
        f'tmp_dir = "{cache_dir()}/tmp"\n'
    )
    return {
        **os.environ,
        "CONTAINERS_STORAGE_CONF": str(storage),
        "CONTAINERS_CONF": str(containers),
    }


def podman(*args: str, log: Path | None = None) -> str:
    return _run(["podman", *args], env=podman_env(), log=log)


def _image_exists(ref: str) -> bool:
    proc = subprocess.run(
        ["podman", "image", "exists", ref], env=podman_env(), capture_output=True, check=False
    )
    return proc.returncode == 0


def base_image(arch: str) -> str:
    """The imported base for ARCH (its tag carries the pin, so a new pin is a new image)."""
    ref = f"localhost/netplane/base:{SUITE}-{arch}-{base_pin(arch)}-{_IMPORT_RECIPE}"
    if not _image_exists(ref):
        # podman matches --platform linux/arm64 as linux/arm64/v8: without the variant it
        # would not find the local base and try a registry instead
        variant = ["--variant", "v8"] if arch == "arm64" else []
        podman("import", "--arch", arch, "--os", "linux", *variant, "--change",
               "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               str(base_rootfs(arch)), ref)  # fmt: skip
    return ref


# -- 2. wheels -----------------------------------------------------------------------------
def _dependencies() -> list[str]:
    import tomllib

    with open(REPO / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)
    deps = [d for d in project["project"]["dependencies"] if _name(d) not in LEAVE_OUT]
    return [*deps, *project["build-system"]["requires"]]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0].lower()


def wheelhouse(arch: str) -> Path:
    """Wheels of every dependency for ARCH and Python 3.11, plus a fresh netplane wheel."""
    deps = _dependencies()
    key = hashlib.sha256(json.dumps([arch, PYTHON_VERSION, deps]).encode()).hexdigest()[:12]
    house = cache_dir() / "wheels" / f"{arch}-{key}"
    with _locked(f"wheels-{arch}"):
        if not (house / ".complete").exists():
            shutil.rmtree(house, ignore_errors=True)
            house.mkdir(parents=True)
            plat = _PIP_PLATFORMS[arch]
            _run([sys.executable, "-m", "pip", "download", "-q", "-d", str(house),
                  "--only-binary=:all:", "--python-version", PYTHON_VERSION,
                  "--implementation", "cp", "--platform", f"manylinux2014_{plat}",
                  "--platform", f"manylinux_2_17_{plat}", "--platform", f"manylinux_2_28_{plat}",
                  "--platform", f"linux_{plat}", *deps])  # fmt: skip
            (house / ".complete").touch()
        for old in house.glob("netplane-*.whl"):
            old.unlink()
        _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index",
              "--find-links", str(house), "-w", str(house), str(REPO)])  # fmt: skip
    return house


# -- 3 and 4. the image, the manifest list, the archive -----------------------------------
@dataclass(frozen=True)
class Built:
    arch: str
    ref: str
    size: int  # bytes, as podman reports the image


def build_arch(arch: str, version: str) -> Built:
    """deploy/Containerfile for ARCH: its build stage natively first (pip for the target
    platform, a cross compiler; podman 4.3 would run it emulated in a multi-stage build),
    then the final stage on ARCH's base with that stage's image as BUILD_STAGE."""
    house = wheelhouse(arch)
    ref = f"{IMAGE}:{version}-{arch}"
    stage = f"{IMAGE}-build:{version}-{arch}"
    log = cache_dir() / f"build-{arch}.log"
    log.unlink(missing_ok=True)
    common = ["--network", "host", "--pull=never", "-f", str(REPO / "deploy/Containerfile")]
    _log(f"podman build {ref} (log {log})")
    podman("build", *common, "--platform", f"linux/{host_arch()}", "--target", "build",
           "--build-arg", f"BUILD_BASE={base_image(host_arch())}",
           "--build-arg", f"TARGETARCH={arch}", "--volume", f"{house}:/wheels:ro,Z",
           "-t", stage, str(REPO), log=log)  # fmt: skip
    # by ID: podman 4.3 looks a name up for the target platform and would not find it
    stage_id = json.loads(podman("image", "inspect", stage))[0]["Id"]
    podman("build", *common, "--platform", f"linux/{arch}",
           "--build-arg", f"BASE={base_image(arch)}", "--build-arg", f"BUILD_STAGE={stage_id}",
           "-t", ref, str(REPO), log=log)  # fmt: skip
    size = json.loads(podman("image", "inspect", ref))[0]["Size"]
    return Built(arch, ref, int(size))


def smoke(ref: str, arch: str) -> str:
    """What the image says to `netplane --version` and `iptables --version`. Under
    qemu-user (a foreign architecture) the nft variant cannot open its netlink socket
    (qemu-user does not translate NETLINK_NETFILTER: "Failed to initialize nft: Protocol not
    supported"), so there the same package's legacy variant answers."""
    ensure_binfmt(arch)
    iptables = "iptables" if arch == host_arch() else "iptables-legacy"
    return podman("run", "--rm", "--network", "none", "--arch", arch, ref,
                  "sh", "-c", f"netplane --version && {iptables} --version")  # fmt: skip


def build(arches: tuple[str, ...], out: Path, version: str = netplane.__version__) -> dict:
    """Everything, end to end; returns sizes, timings and the smoke output per arch."""
    started = time.monotonic()
    report: dict = {"image": f"{IMAGE}:{version}", "archive": str(out), "arches": {}}
    built = []
    with _locked("build"):
        for arch in arches:
            t0 = time.monotonic()
            b = build_arch(arch, version)
            built.append(b)
            report["arches"][arch] = {
                "ref": b.ref,
                "size_bytes": b.size,
                "build_s": round(time.monotonic() - t0, 1),
                "smoke": smoke(b.ref, arch).strip().splitlines(),
            }
        manifest = f"{IMAGE}:{version}"
        subprocess.run(["podman", "manifest", "rm", manifest], env=podman_env(),
                       capture_output=True, check=False)  # fmt: skip
        podman("manifest", "create", manifest)
        for b in built:
            podman("manifest", "add", manifest, f"containers-storage:{b.ref}")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)
        # the reference in the archive names the image for `ctr images import`
        podman("manifest", "push", "--all", "--format", "oci", manifest,
               f"oci-archive:{out}:{manifest}")  # fmt: skip
        # intermediate images older than 3 days (newer ones keep the layer cache warm)
        podman("image", "prune", "-f", "--filter", "until=72h")
    report["archive_bytes"] = out.stat().st_size
    report["total_s"] = round(time.monotonic() - started, 1)
    return report


@click.group()
def image() -> None:
    """The container image, built here from Debian packages (no registry needed)."""


@image.command("build")
@click.option(
    "--arch",
    "arches",
    multiple=True,
    type=click.Choice(ARCHES),
    help="Architectures (default: all of them), joined in one manifest list.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="OCI archive to write (default: <cache>/netplane-<version>.oci.tar).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def build_command(arches: tuple[str, ...], output: Path | None, as_json: bool) -> None:
    """Base rootfs (debootstrap, cached), wheels (cached), deploy/Containerfile per arch, one
    manifest list saved as an OCI archive, and a smoke run of each architecture."""
    out = output or cache_dir() / f"netplane-{netplane.__version__}.oci.tar"
    try:
        report = build(arches or ARCHES, out)
    except ImageError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for info in report["arches"].values():
        click.echo(
            f"{info['ref']}: {info['size_bytes'] / 1e6:.1f} MB, built in {info['build_s']} s; "
            + "; ".join(info["smoke"])
        )
    click.echo(
        f"{report['image']} ({', '.join(report['arches'])}) -> {report['archive']} "
        f"({report['archive_bytes'] / 1e6:.1f} MB) in {report['total_s']} s"
    )
