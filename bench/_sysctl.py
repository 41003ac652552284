"""Did a run change a global kernel setting? The root namespace's sysctls, before and after.

kube-proxy sets conntrack sizes and timeouts (global: only the initial namespace has them)
unless its configuration says 0; a benchmark that starts it must prove the host kept its
settings. Counters and random values change on their own: keys that differ between two
readings taken before the run, or whose names say they are counters, are ignored.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

ROOT = Path("/proc/sys")
# counters, statistics and random values: they move without anybody setting them
VOLATILE = re.compile(
    r"(^kernel\.random\.|_count$|-nr$|-state$|^fs\.(dentry|inode|file|quota)|ns_last_pid"
    r"|^kernel\.pty\.nr|^fs\.aio-nr|^net\.netfilter\.nf_conntrack_count|^vm\.stat"
    r"|^kernel\.(tainted|overflow)|^fs\.binfmt_misc|^dev\.)"
)


def read_sysctls() -> dict[str, str]:
    """Every readable sysctl of the caller's (root) namespace, like `sysctl -a`."""
    values: dict[str, str] = {}
    for dirpath, _, files in os.walk(ROOT):
        for name in files:
            path = Path(dirpath, name)
            key = str(path.relative_to(ROOT)).replace("/", ".")
            if VOLATILE.search(key):
                continue
            try:
                values[key] = path.read_text(errors="replace").strip()
            except OSError:
                continue  # write-only (route flush, drop_caches) or not permitted
    return values


class SysctlWatch:
    """Readings at construction; `changed()` lists keys whose value is not as it was."""

    def __init__(self, settle: float = 0.5) -> None:
        first = read_sysctls()
        time.sleep(settle)
        self.before = read_sysctls()
        self.noisy = {k for k, v in self.before.items() if first.get(k) != v}

    def changed(self) -> list[str]:
        after = read_sysctls()
        keys = (self.before.keys() | after.keys()) - self.noisy
        return sorted(
            f"{k}: {self.before.get(k)} -> {after.get(k)}"
            for k in keys
            if self.before.get(k) != after.get(k)
        )
