"""Fixtures for the CNI tests: private network namespaces and direct plugin invocation.

The "host" of every plugin call is a namespace created here (the plugin runs under
`ip netns exec`), never the real root namespace.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

VENV_BIN = os.path.dirname(sys.executable)
OURS = os.path.join(VENV_BIN, "netplane-bridge")
OURS_IPAM = os.path.join(VENV_BIN, "netplane-ipam")
REF_DIR = "/usr/lib/cni"
REF = os.path.join(REF_DIR, "bridge")


NETPLANE = os.path.join(VENV_BIN, "netplane")


def _run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


@dataclass(frozen=True)
class Reply:
    rc: int
    out: dict[str, Any]
    stderr: str


class Namespaces:
    """Creates netns named npcni-<6 hex> and removes them (and their links) at teardown."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def new(self) -> str:
        name = f"npcni-{secrets.token_hex(3)}"
        _run("ip", "netns", "add", name)
        self.names.append(name)
        return name

    def cleanup(self) -> None:
        for name in reversed(self.names):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@pytest.fixture
def netns() -> Iterator[Namespaces]:
    ns = Namespaces()
    try:
        yield ns
    finally:
        ns.cleanup()


@pytest.fixture
def data_dir(tmp_path) -> str:
    return str(tmp_path / "ipam")


def netns_path(name: str) -> str:
    return f"/var/run/netns/{name}"


def invoke(
    command: str,
    conf: dict[str, Any] | bytes | None,
    *,
    host: str | None = None,
    binary: str = OURS,
    container_id: str = "ctr1",
    sandbox: str | None = None,
    ifname: str = "eth0",
    cni_path: str = f"{VENV_BIN}:{REF_DIR}",
    args: str = "",
    env: dict[str, str] | None = None,
    drop: tuple[str, ...] = (),
) -> Reply:
    """Run a plugin the way a runtime does: CNI_* env, config on stdin, JSON on stdout."""
    environ = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns_path(sandbox) if sandbox else "",
        "CNI_IFNAME": ifname,
        "CNI_PATH": cni_path,
        "CNI_ARGS": args,
        "NETPLANE_CNI_SOCKET": "",
        "NETPLANE_CNI_STATE_DIR": os.environ.get("NETPLANE_CNI_STATE_DIR", ""),
        **(env or {}),
    }
    for key in drop:
        environ.pop(key, None)
    stdin = conf if isinstance(conf, bytes) else json.dumps(conf or {}).encode()
    cmd = [binary] if host is None else ["ip", "netns", "exec", host, binary]
    proc = subprocess.run(cmd, input=stdin, env=environ, capture_output=True, timeout=60)
    text = proc.stdout.decode().strip()
    return Reply(proc.returncode, json.loads(text) if text else {}, proc.stderr.decode())


def bridge_conf(data_dir: str, **overrides: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "cniVersion": "1.0.0",
        "name": "nptest",
        "type": "netplane-bridge",
        "bridge": "npbr0",
        "isGateway": True,
        "ipMasq": True,
        "hairpinMode": True,
        "ipam": {
            "type": "netplane-ipam",
            "ranges": [[{"subnet": "10.88.0.0/24"}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": data_dir,
        },
    }
    conf.update(overrides)
    return conf


def ns_json(ns: str, *args: str) -> Any:
    return json.loads(_run("ip", "netns", "exec", ns, "ip", "-j", *args) or "[]")


def links(ns: str) -> dict[str, dict[str, Any]]:
    return {link["ifname"]: link for link in ns_json(ns, "-d", "link", "show")}


def ping(ns: str, ip: str) -> bool:
    """One echo from NS to IP answered within 2 s."""
    cmd = ["ip", "netns", "exec", ns, "busybox", "ping", "-c1", "-W2", ip]
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


def nft_ruleset(ns: str) -> str:
    """`nft list ruleset` in NS (macspoofchk's rules live in table bridge nat)."""
    return _run("ip", "netns", "exec", ns, "nft", "list", "ruleset")


def nat_rules(ns: str) -> list[str]:
    out = _run("ip", "netns", "exec", ns, "iptables-save", "-t", "nat")
    return [line for line in out.splitlines() if line.startswith(("-A", ":CNI"))]


def store_files(data_dir: str, network: str = "nptest") -> set[str]:
    path = os.path.join(data_dir, network)
    return set(os.listdir(path)) - {"lock"} if os.path.isdir(path) else set()


class Agents:
    """Agents started in host namespaces; all stopped (and their workers reaped) at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, host: str, sock: str, *extra: str, netplane: tuple[str, ...] = (NETPLANE,)
              ) -> subprocess.Popen:  # fmt: skip
        """`netplane cni agent` (NETPLANE: the command that runs netplane) in HOST, serving."""
        before = os.stat(sock).st_ino if os.path.exists(sock) else None
        proc = subprocess.Popen(
            ["ip", "netns", "exec", host, *netplane, "cni", "agent", "--socket", sock, *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.procs.append(proc)
        deadline = time.monotonic() + 60
        while not os.path.exists(sock) or os.stat(sock).st_ino == before:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "agent did not start"
            time.sleep(0.05)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            # workers die with their parent; make sure no test leaves one behind
            wait_gone(session_pids(proc.pid), 10)


def session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except ProcessLookupError:
                pass
    return pids


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if os.path.exists(f"/proc/{p}") and not zombie(p)]
        time.sleep(0.05)
    return alive


def zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
