"""Helpers for the real-client tests: a minimal CRI client (images: netplane.testing.oci).

The CRI runtime.v1 protobuf descriptor is taken from the containerd binary itself (it embeds
it gzipped), so no .proto files or generated code are needed: grpcio + protobuf only.
"""

from __future__ import annotations

import zlib
from typing import Any

GZIP_MAGIC = b"\x1f\x8b\x08\x00\x00\x00\x00\x00"


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
