"""What the API server refuses before storing an object (pure), with its messages.

- Names: DNS-1123 subdomains (Pods, Deployments, ReplicaSets, ...), DNS-1035 labels
  (Services), DNS-1123 labels (Namespaces), as the API server checks them.
- Fields: the Kubernetes v1.33 OpenAPI schema (shipped by `kubernetes-validate`), strict
  about field names, as `kubectl apply` with its default `--validate=strict` makes the server
  be: an unknown field anywhere (`replica: 3`, `containerport: 80` inside a Deployment's pod
  template) is refused with its full path.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

API_VERSIONS = {
    "Pod": "v1",
    "Service": "v1",
    "Endpoints": "v1",
    "Namespace": "v1",
    "Event": "v1",
    "Deployment": "apps/v1",
    "ReplicaSet": "apps/v1",
    "EndpointSlice": "discovery.k8s.io/v1",
}
GROUP = {"apps/v1": "apps", "discovery.k8s.io/v1": "discovery.k8s.io"}
SCHEMA_VERSION = "1.33"

_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_LABEL_1123_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
_LABEL_1035_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or "
    "'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)


def qualified_kind(kind: str) -> str:
    """`Deployment.apps`, `Service`: how API errors name a kind."""
    group = GROUP.get(API_VERSIONS.get(kind, "v1"))
    return f"{kind}.{group}" if group else kind


def name_problems(kind: str, name: str, field: str = "metadata.name") -> list[str]:
    if kind == "Service":
        regex, msg, limit = _LABEL_1035, _LABEL_1035_MSG, 63
    elif kind == "Namespace":
        regex, msg, limit = _LABEL_1123, _LABEL_1123_MSG, 63
    else:
        regex, msg, limit = _SUBDOMAIN, _SUBDOMAIN_MSG, 253
    out = []
    if len(name) > limit:
        out.append(f'{field}: Invalid value: "{name}": must be no more than {limit} characters')
    if not regex.fullmatch(name):
        out.append(f'{field}: Invalid value: "{name}": {msg}')
    return out


def _path(parts: Iterable[str | int]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


@functools.cache
def _definitions(schema_dir: str) -> Any:
    """The shared definitions (most of the schema bytes), parsed once for every kind."""
    from kubernetes_validate import utils
    from referencing import Resource

    return Resource.from_contents(
        utils.schema_contents(
            f"kubernetes-json-schema/{schema_dir}/_definitions.json", SCHEMA_VERSION
        )
    )


@functools.cache
def _validator(kind: str, api_version: str) -> Any:
    import jsonschema
    from kubernetes_validate import utils
    from referencing import Registry, Resource

    version = next(v for v in utils.all_versions() if utils.major_minor(v) == SCHEMA_VERSION)
    schema_dir = f"v{version}-local-strict"
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = utils.schema_contents(
        f"kubernetes-json-schema/{schema_dir}/{kind.lower()}-{group}.json", SCHEMA_VERSION
    )
    registry = _definitions(schema_dir) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def warm() -> None:
    """Load the validators of the kinds users send (~0.3 s, mostly importing jsonschema),
    so that the first `create` does not pay for it; `up` calls it once pods are ready."""
    for kind, api_version in API_VERSIONS.items():
        if kind != "Event":
            _validator(kind, api_version)


def schema_problems(body: dict) -> tuple[list[str], list[str]]:
    """(unknown fields, other problems) of BODY against the v1.33 schema, as field paths
    with the API server's wording."""
    validator = _validator(body["kind"], body["apiVersion"])
    unknown, invalid = [], []
    for e in sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path))):
        path = _path(e.absolute_path)
        if e.validator == "additionalProperties":
            extra = sorted(set(e.instance) - set(e.schema.get("properties", {})))
            unknown += [f'unknown field "{path + "." if path else ""}{x}"' for x in extra]
        elif e.validator == "required":
            missing = re.match(r"'([^']+)'", e.message)
            field = (path + "." if path else "") + (missing.group(1) if missing else "?")
            invalid.append(f"{field}: Required value")
        elif e.validator in ("type", "format"):
            invalid.append(f"{path}: Invalid value: {e.instance!r}: {e.message}")
        else:
            invalid.append(f"{path}: Invalid value: {e.message}")
    return unknown, invalid
