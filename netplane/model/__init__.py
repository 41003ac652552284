"""The object model: real Kubernetes manifests parsed into frozen dataclasses."""

from netplane.model._fields import InvalidField
from netplane.model._load import (
    Document,
    LoadResult,
    ManifestError,
    documents,
    load_file,
    load_path,
    manifest_files,
    parse_manifests,
)
from netplane.model._objects import (
    Container,
    ContainerPort,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    KubeObject,
    Labels,
    Node,
    ObjectKey,
    Pod,
    PodDNSConfig,
    RawObject,
    Service,
    ServicePort,
)
from netplane.model._parse import parse_object

__all__ = [
    "Container",
    "ContainerPort",
    "Document",
    "Endpoint",
    "EndpointPort",
    "EndpointSlice",
    "InvalidField",
    "KubeObject",
    "Labels",
    "LoadResult",
    "ManifestError",
    "Node",
    "ObjectKey",
    "Pod",
    "PodDNSConfig",
    "RawObject",
    "Service",
    "ServicePort",
    "documents",
    "load_file",
    "load_path",
    "manifest_files",
    "parse_manifests",
    "parse_object",
]
