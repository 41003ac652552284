"""One-layer OCI images made from Debian's busybox-static, for real runtimes in tests: the
pause (sandbox) image a node's containerd needs, and small pods. `ctr images import` takes the
archive as it is; no registry is involved."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

BUSYBOX = "/bin/busybox"


def _tar_add(t: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    t.addfile(info, io.BytesIO(data))


def busybox_layer(applets: tuple[str, ...] = ("sh", "sleep", "ip", "cat")) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for d in ("bin", "etc", "proc", "sys", "dev", "tmp"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            t.addfile(info)
        t.add(BUSYBOX, arcname="bin/busybox")
        for app in applets:
            info = tarfile.TarInfo(f"bin/{app}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            t.addfile(info)
    return buf.getvalue()


def oci_archive(path: str, name: str, arch: str = "amd64") -> str:
    """An OCI image layout tarball `ctr images import` accepts, tagged `name`: busybox
    `sleep` as its entrypoint (what a pod sandbox's pause process does)."""
    layer = busybox_layer()
    blobs = {}

    def blob(data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return digest

    ldig = blob(layer)
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"Entrypoint": ["/bin/sleep", "2147483647"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [ldig]},
        }
    ).encode()
    cdig = blob(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": cdig,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": ldig,
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    mdig = blob(manifest)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": mdig,
                    "size": len(manifest),
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1],
                    },
                }
            ],
        }
    ).encode()
    with tarfile.open(path, "w") as t:
        _tar_add(t, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _tar_add(t, "index.json", index)
        for digest, data in blobs.items():
            _tar_add(t, "blobs/sha256/" + digest.split(":")[1], data)
    return path
