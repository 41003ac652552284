"""The image, built here from Debian packages for amd64 and arm64 (slow: the first build on a
machine makes the base rootfs with debootstrap; later ones reuse the cache)."""

from __future__ import annotations

import json
import tarfile

import pytest

from netplane import image

pytestmark = [pytest.mark.slow, pytest.mark.timeout(5400)]


@pytest.mark.parametrize("arch", image.ARCHES)
def test_image_runs_netplane_and_iptables(built_image, arch):
    report, _ = built_image
    smoke = report["arches"][arch]["smoke"]
    assert smoke[0] == f"netplane, version {image.netplane.__version__}", smoke
    # a foreign architecture runs under qemu-user: the legacy variant (see image.smoke)
    variant = "nf_tables" if arch == image.host_arch() else "legacy"
    assert smoke[1].startswith(f"iptables v1.8.9 ({variant})"), smoke


def test_archive_is_one_manifest_list_of_both_architectures(built_image):
    _, out = built_image
    with tarfile.open(out) as tar:
        index = json.load(tar.extractfile("index.json"))
        (entry,) = index["manifests"]
        blob = f"blobs/{entry['digest'].replace(':', '/')}"
        listed = json.load(tar.extractfile(blob))
    platforms = {(m["platform"]["os"], m["platform"]["architecture"]) for m in listed["manifests"]}
    assert platforms == {("linux", "amd64"), ("linux", "arm64")}


def test_launcher_in_the_image_is_static_for_its_architecture(built_image):
    report, _ = built_image
    for arch in image.ARCHES:
        ref = report["arches"][arch]["ref"]
        head = image.podman(
            "run", "--rm", "--network", "none", "--arch", arch, "--entrypoint", "sh", ref,
            "-c", "od -An -tx1 -N20 $NETPLANE_CNI_LAUNCHER;"
            # a dynamic executable names its loader (PT_INTERP) in its first bytes
            "head -c 4096 $NETPLANE_CNI_LAUNCHER | grep -q ld-linux && echo dynamic || echo static",
        )  # fmt: skip
        machine = {"amd64": "3e 00", "arm64": "b7 00"}[arch]  # ELF e_machine
        assert machine in head.splitlines()[1], head
        assert head.splitlines()[2] == "static", head
