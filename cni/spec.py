"""CNI protocol types shared by the plugins: errors, versions, environment, result shapes.

Stdlib only: the thin client and the agent both import it, and neither may pay for more.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = "1.1.0"

# Error codes from the CNI specification (1.0.0/1.1.0 "Error" section).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
CONTAINER_UNKNOWN = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50
# What the reference plugins' skeleton reports for an error without a spec code.
INTERNAL = 999

_CONTAINER_ID = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")


class CniError(Exception):
    """An error the plugin reports as the spec's error JSON (and a non-zero exit)."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


def version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        raise CniError(INCOMPATIBLE_VERSION, f"invalid version {version!r}") from None


def check_version(version: str, command: str) -> None:
    """Refuse configs this plugin cannot answer in their own result format."""
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f'config is "{version}", plugin supports {list(SUPPORTED_VERSIONS)}',
        )
    minimum = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}.get(command)
    if minimum and version_tuple(version) < version_tuple(minimum):
        raise CniError(INCOMPATIBLE_VERSION, f"config version does not allow {command}")


@dataclass(frozen=True)
class Env:
    """The CNI_* environment of one invocation, validated the way libcni's skeleton does."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    path: tuple[str, ...] = ()
    args: dict[str, str] = field(default_factory=dict)
    # The sandbox's netns as an fd the launcher passed to the agent (the agent's own mounts
    # may not show CNI_NETNS); None: open the CNI_NETNS path.
    netns_fd: int | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Env:
        command = environ.get("CNI_COMMAND", "")
        if not command:
            raise CniError(INVALID_ENV, "required env variables [CNI_COMMAND] missing")
        required = {
            "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
            "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
            "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
            "GC": ("CNI_PATH",),
            "STATUS": ("CNI_PATH",),
            "VERSION": (),
        }.get(command)
        if required is None:
            raise CniError(INVALID_ENV, f"unknown CNI_COMMAND: {command}")
        missing = [k for k in required if not environ.get(k)]
        if missing:
            raise CniError(INVALID_ENV, f"required env variables [{','.join(missing)}] missing")
        env = cls(
            command=command,
            container_id=environ.get("CNI_CONTAINERID", ""),
            netns=environ.get("CNI_NETNS", ""),
            ifname=environ.get("CNI_IFNAME", ""),
            path=tuple(p for p in environ.get("CNI_PATH", "").split(":") if p),
            args=parse_cni_args(environ.get("CNI_ARGS", "")),
        )
        if "CNI_CONTAINERID" in required and not _CONTAINER_ID.match(env.container_id):
            raise CniError(INVALID_ENV, "invalid characters in containerID", env.container_id)
        if "CNI_IFNAME" in required:
            validate_ifname(env.ifname)
        return env


def validate_ifname(name: str) -> None:
    if len(name) > 15 or name in (".", "..") or any(c in name for c in "/: \t\n"):
        raise CniError(INVALID_ENV, f"interface name {name!r} is not valid", "CNI_IFNAME")


def parse_cni_args(raw: str) -> dict[str, str]:
    """CNI_ARGS is `K=V;K2=V2`; a pair without '=' is an error in libcni, so it is here."""
    out: dict[str, str] = {}
    for pair in filter(None, raw.split(";")):
        key, sep, value = pair.partition("=")
        if not sep:
            raise CniError(INVALID_ENV, f"ARGS: invalid pair {pair!r}", "CNI_ARGS")
        out[key] = value
    return out


def convert_result(result: dict[str, Any], version: str) -> dict[str, Any]:
    """Shape a result (in any supported version) for `version`: 0.3.x/0.4.0 carry ips[].version."""
    out = dict(result)
    out["cniVersion"] = version
    legacy = version_tuple(version) < (1, 0, 0)
    ips = []
    for ip in result.get("ips", []):
        ip = {k: v for k, v in ip.items() if k != "version"}
        if legacy:
            ip = {"version": "6" if ":" in ip["address"] else "4", **ip}
        ips.append(ip)
    if "ips" in result:
        out["ips"] = ips
    return out
