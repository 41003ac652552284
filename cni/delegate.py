"""Run an IPAM plugin the way libcni does: found by `type` in CNI_PATH, same env, same stdin."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from typing import Any

from netplane.cni import ipam
from netplane.cni.spec import DECODE_FAILURE, INTERNAL, CniError, Env

IN_PROCESS = "netplane-ipam"


def find_plugin(name: str, path: tuple[str, ...]) -> str:
    for d in path:
        candidate = os.path.join(d, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(INTERNAL, f'failed to find plugin "{name}" in path {list(path)}')


def run(
    command: str, conf: dict[str, Any], env: Env, environ: Mapping[str, str]
) -> dict[str, Any] | None:
    """One IPAM call; netplane-ipam runs in this process, anything else is exec'd."""
    kind = str((conf.get("ipam") or {}).get("type", ""))
    if kind == IN_PROCESS:
        result = ipam.run(command, conf, env)
        if result is not None:
            result["cniVersion"] = conf.get("cniVersion", "")
        return result
    binary = find_plugin(kind, env.path)
    child_env = {**environ, "CNI_COMMAND": command}
    proc = subprocess.run(
        [binary], input=json.dumps(conf).encode(), capture_output=True, env=child_env, check=False
    )
    try:
        reply = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except ValueError:
        raise CniError(
            DECODE_FAILURE, f"{kind}: unparseable output", proc.stdout.decode(errors="replace")
        ) from None
    if proc.returncode != 0:
        if "code" in reply:
            raise CniError(
                int(reply["code"]), str(reply.get("msg", "")), str(reply.get("details", ""))
            )
        raise CniError(INTERNAL, f"{kind} failed", proc.stderr.decode(errors="replace").strip())
    return reply or None
