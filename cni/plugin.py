"""The CNI skeleton: env + stdin in, result or error JSON out, with version negotiation.

Shared by netplane-bridge (in-process and in the agent) and netplane-ipam.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from netplane.cni.config import decode
from netplane.cni.spec import (
    INTERNAL,
    LATEST,
    SUPPORTED_VERSIONS,
    CniError,
    Env,
    check_version,
    convert_result,
)

Handler = Callable[[Env, dict[str, Any], Mapping[str, str]], dict[str, Any] | None]
log = logging.getLogger(__name__)


def respond(handler: Handler, environ: Mapping[str, str], stdin: bytes) -> tuple[int, str]:
    """(exit code, stdout text) for one invocation; never raises."""
    version = LATEST
    try:
        env = Env.from_environ(environ)
        if env.command == "VERSION":
            return 0, json.dumps(_version_reply(stdin))
        conf = decode(stdin)
        version = str(conf.get("cniVersion", "0.1.0"))
        check_version(version, env.command)
        result = handler(env, conf, environ)
        if env.command == "ADD":
            return 0, json.dumps(convert_result(result or {}, version))
        return 0, ""
    except CniError as exc:
        return 1, json.dumps(exc.to_json(version if version in SUPPORTED_VERSIONS else LATEST))
    except Exception as exc:  # an unexpected failure still owes the runtime an error JSON
        log.exception("plugin failure")
        return 1, json.dumps(CniError(INTERNAL, str(exc) or type(exc).__name__).to_json(version))


def _version_reply(stdin: bytes) -> dict[str, Any]:
    try:
        asked = json.loads(stdin or b"{}").get("cniVersion") or LATEST
    except (ValueError, AttributeError):
        asked = LATEST
    return {
        "cniVersion": asked if asked in SUPPORTED_VERSIONS else LATEST,
        "supportedVersions": list(SUPPORTED_VERSIONS),
    }


def serve(handler: Handler, environ: Mapping[str, str], stdin: bytes, out: TextIO) -> int:
    code, text = respond(handler, environ, stdin)
    if text:
        out.write(text + "\n")
        out.flush()
    return code
