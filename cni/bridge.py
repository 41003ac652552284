"""netplane-bridge: the entry point the container runtime executes.

Kept to the stdlib on purpose: if a node agent is listening it gets the request over a unix
socket (no netlink code imported here), otherwise the plugin runs in this process.
"""

from __future__ import annotations

import os
import sys

from netplane.cni import client


def _handle(env, conf, environ):  # type: ignore[no-untyped-def]
    """Imports the netlink code only for commands that need it: VERSION stays cheap."""
    from netplane.cni.commands import handle

    return handle(env, conf, environ)


def main() -> None:
    stdin = sys.stdin.buffer.read()
    reply = client.via_agent(dict(os.environ), stdin)
    if reply is not None:
        code, out = reply
    else:
        from netplane.cni.plugin import respond

        code, text = respond(_handle, os.environ, stdin)
        out = (text + "\n").encode() if text else b""
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    if reply is None and code == 0 and os.environ.get("CNI_COMMAND") == "ADD":
        from netplane.cni.inflight import delivered

        delivered(os.environ, stdin)  # the agent does this itself for what it answers
    sys.exit(code)
