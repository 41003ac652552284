"""The image built once per session (both architectures: the image test checks them, the real
node imports the archive); the first build on a machine also makes the cached base rootfs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from netplane import image


@pytest.fixture(scope="session")
def built_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    for tool in ("debootstrap", "podman", "qemu-aarch64-static"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (bootstrap.sh installs it)")
    out = tmp_path_factory.mktemp("image") / "netplane.oci.tar"
    return image.build(image.ARCHES, out), out
