"""Typed accessors for manifest dicts: each one names the exact field when it fails.

Field names that the Kubernetes API does not know are rejected, as `kubectl apply
--validate=strict` does: a typo such as `targetport` would otherwise silently change what
the data plane does. Objects from the API server are parsed leniently (`strict(False)`),
since it may be newer than the field lists here.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from contextvars import ContextVar
from typing import Any


class InvalidField(ValueError):
    """One field of one object is wrong; `field` is a JSONPath-like location."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


_META = frozenset(
    [
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    ]
)
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


# ---- small typed accessors: every one reports the exact field on failure ----------------


def _obj(value: Any, path: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidField(path, f"expected an object, got {type(value).__name__}")
    return value


def _list(value: Any, path: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidField(path, f"expected a list, got {type(value).__name__}")
    return value


def _str(value: Any, path: str, default: str = "") -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidField(path, f"expected a string, got {value!r}")
    return value


def _bool(value: Any, path: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidField(path, f"expected true or false, got {value!r}")
    return value


def _int(value: Any, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidField(path, f"expected an integer, got {value!r}")
    if not low <= value <= high:
        raise InvalidField(path, f"{value} is out of range {low}-{high}")
    return value


# Strict for hand-written manifests; lenient for objects the API server already validated,
# which may carry fields newer than the ones listed here.
_strict: ContextVar[bool] = ContextVar("netplane_strict_fields", default=True)


def _known(d: dict, allowed: frozenset, path: str) -> None:
    if not _strict.get():
        return
    for k in d:
        if k not in allowed:
            where = f"{path}.{k}" if path else str(k)
            raise InvalidField(where, "unknown field")


def _choice(value: Any, path: str, choices: tuple[str, ...], default: str) -> str:
    v = _str(value, path, default)
    if v not in choices:
        raise InvalidField(path, f"unsupported value {v!r}: must be one of {', '.join(choices)}")
    return v


def _ip(value: Any, path: str) -> str:
    s = _str(value, path)
    try:  # canonical IPv4 (what the API server stores) without ipaddress's cost (~10x)
        if socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, s)) == s:
            return s
    except OSError:
        pass
    try:
        return str(ipaddress.ip_address(s))
    except ValueError:
        raise InvalidField(path, f"{s!r} is not a valid IP address") from None


def _cidr(value: Any, path: str) -> str:
    s = _str(value, path)
    try:
        return str(ipaddress.ip_network(s.strip(), strict=False))
    except ValueError:
        raise InvalidField(path, f"{s!r} is not a valid CIDR") from None


def _labels(value: Any, path: str) -> tuple[tuple[str, str], ...]:
    d = _obj(value, path)
    for k, v in d.items():
        if not isinstance(v, str):
            raise InvalidField(f"{path}.{k}", f"label values must be strings, got {v!r}")
    return tuple(sorted(d.items()))


def _family(ip: str) -> str:
    return "IPv6" if ":" in ip else "IPv4"


def metadata(doc: dict, *, namespaced: bool) -> tuple[str, str, dict]:
    """(namespace, name, metadata) of a document; the namespace defaults to `default`."""
    meta = _obj(doc.get("metadata"), "metadata")
    _known(meta, _META, "metadata")
    name = _str(meta.get("name"), "metadata.name")
    if not name:
        raise InvalidField("metadata.name", "required")
    namespace = _str(meta.get("namespace"), "metadata.namespace", "default") if namespaced else ""
    if namespaced and not _DNS1123_LABEL.match(namespace):
        raise InvalidField("metadata.namespace", f"{namespace!r} is not a valid DNS-1123 label")
    return namespace, name, meta
