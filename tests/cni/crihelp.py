"""Helpers for the real-client tests: a one-layer busybox OCI image and a minimal CRI client.

The CRI runtime.v1 protobuf descriptor is taken from the containerd binary itself (it embeds
it gzipped), so no .proto files or generated code are needed: grpcio + protobuf only.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zlib
from typing import Any

BUSYBOX = "/bin/busybox"
GZIP_MAGIC = b"\x1f\x8b\x08\x00\x00\x00\x00\x00"


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


def oci_archive(path: str, name: str) -> None:
    """An OCI image layout tarball `ctr images import` accepts, tagged `name`."""
    layer = busybox_layer()
    blobs = {}

    def blob(data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return digest

    ldig = blob(layer)
    config = json.dumps(
        {
            "architecture": "amd64",
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


class Cri:
    """CRI runtime.v1 over grpc, messages built from the descriptor in the containerd binary."""

    def __init__(self, socket: str, containerd: str = "/usr/bin/containerd") -> None:
        from google.protobuf import descriptor_pb2, descriptor_pool

        fdp = self._descriptor(containerd, descriptor_pb2)
        del fdp.dependency[:]  # gogo.proto only carries options
        self.pool = descriptor_pool.DescriptorPool()
        self.pool.Add(fdp)
        self.methods = {m.name: (f"runtime.v1.{s.name}", m) for s in fdp.service for m in s.method}
        self.target = "unix://" + socket

    @staticmethod
    def _descriptor(binary: str, descriptor_pb2: Any) -> Any:
        with open(binary, "rb") as f:
            data = f.read()
        pos = 0
        while (i := data.find(GZIP_MAGIC, pos)) >= 0:
            pos = i + 1
            try:
                raw = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[i : i + 4_000_000])
                fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
            except Exception:
                continue
            if fd.package == "runtime.v1" and any(s.name == "RuntimeService" for s in fd.service):
                return fd
        raise RuntimeError(f"no CRI runtime.v1 descriptor in {binary}")

    def __call__(self, method: str, request: dict | None = None, timeout: float = 60) -> dict:
        import grpc
        from google.protobuf import json_format, message_factory

        service, m = self.methods[method]
        req_cls, resp_cls = (
            message_factory.GetMessageClass(self.pool.FindMessageTypeByName(t.lstrip(".")))
            for t in (m.input_type, m.output_type)
        )
        with grpc.insecure_channel(self.target) as channel:
            rpc = channel.unary_unary(
                f"/{service}/{method}",
                request_serializer=req_cls.SerializeToString,
                response_deserializer=resp_cls.FromString,
            )
            resp = rpc(json_format.ParseDict(request or {}, req_cls()), timeout=timeout)
        return json_format.MessageToDict(resp, preserving_proto_field_name=True)
