"""The static launcher (launcher.c) that `netplane cni install` puts in a node's CNI bin dir.

It must run on any node with nothing installed, so it is a static C program, not Python: it
forwards each call to the node agent and fails with code 11 when there is none. The image
ships it prebuilt for its architecture (`NETPLANE_CNI_LAUNCHER` names the file); elsewhere
it is compiled once from the packaged source with the host's C compiler into a cache keyed
by the source's hash.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launcher.c")
PREBUILT_ENV = "NETPLANE_CNI_LAUNCHER"
CFLAGS = ("-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror")


def compile_to(out: str, cc: str = "cc") -> str:
    """Build the static launcher at `out` (written to a temp name, then renamed)."""
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(out) or ".", prefix=".launcher-")
    os.close(fd)
    try:
        proc = subprocess.run([cc, *CFLAGS, "-o", tmp, SOURCE], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed to build the CNI launcher:\n{proc.stderr.strip()}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "netplane")


def binary() -> str:
    """Path of a launcher for this machine: the prebuilt one, or one compiled (and cached)."""
    prebuilt = os.environ.get(PREBUILT_ENV)
    if prebuilt:
        if not os.access(prebuilt, os.X_OK):
            raise RuntimeError(f"{PREBUILT_ENV}={prebuilt}: not an executable file")
        return prebuilt
    with open(SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read() + " ".join(CFLAGS).encode()).hexdigest()[:12]
    cached = os.path.join(_cache_dir(), f"netplane-bridge-{os.uname().machine}-{digest}")
    if not os.access(cached, os.X_OK):
        compile_to(cached)
    return cached
