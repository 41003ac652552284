"""Run arm64 programs in the image's root directory under qemu-user, touching nothing else.

The image's Debian packages must be configured by their own arm64 maintainer scripts.
Under qemu-user their file I/O runs at the host's speed (under qemu-system every write goes
through an emulated kernel and disk, and the same second stage ran ~10x slower). qemu-user
needs a binfmt_misc handler, which is host-wide state other work relies on, so this
registers one in a binfmt_misc instance of its own (Linux >= 6.7 gives each user namespace
its own), inside new user, mount, PID and network namespaces:

- user: identity-mapped uids/gids 0-65535, so files get their real owners and the
  namespace's root is still bound by the host kernel's checks on everything outside;
- mount: /proc, /sys and binfmt_misc are mounted for the chroot only and vanish with it;
- PID: the command is PID 1 of its namespace: when it ends (or is killed on timeout)
  every process it started ends too;
- network: only a loopback device: the build is offline by construction.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 0x40000
PR_SET_PDEATHSIG = 1
ID_RANGE = 65536
QEMU = "/usr/bin/qemu-aarch64-static"
# aarch64 ELF executables (the magic and mask Debian's qemu-user-static registers), run by
# QEMU opened at registration time (F), so the chroot needs no copy of it
BINFMT = (
    r":netplane-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    r"\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe"
    r"\xff\xff\xff:" + QEMU + ":F"
)


class SandboxError(RuntimeError):
    """The sandbox could not be set up or the command failed; the message says which."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(libc: ctypes.CDLL, source: str, target: str, fstype: str | None, flags: int = 0) -> None:
    _check(
        libc.mount(
            source.encode(), target.encode(), fstype.encode() if fstype else None, flags, None
        ),
        f"mount {fstype or source} on {target}",
    )


def _child(root: Path, argv: Sequence[str], env: dict[str, str], ready: int, go: int) -> None:
    """In the forked child: enter the namespaces, wait for the id maps, then become PID 1
    of a new PID namespace that chroots into ROOT and runs ARGV."""
    libc = _libc()
    _check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET), "unshare")
    os.write(ready, b"1")
    if os.read(go, 1) != b"1":
        os._exit(70)
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    _check(libc.unshare(CLONE_NEWPID), "unshare pid")
    pid = os.fork()
    if pid:
        _, status = os.waitpid(pid, 0)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL), "prctl")  # killed with its parent
    _mount(libc, "none", "/", None, MS_REC | MS_PRIVATE)
    _mount(libc, "proc", str(root / "proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    binfmt = root / "proc/sys/fs/binfmt_misc"
    _mount(libc, "binfmt_misc", str(binfmt), "binfmt_misc")
    (binfmt / "register").write_text(BINFMT)
    _mount(libc, "sysfs", str(root / "sys"), "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chroot(root)
    os.chdir("/")
    os.execve(argv[0], list(argv), env)


def run(root: Path, argv: Sequence[str], env: dict[str, str], timeout: float, log: IO[str]) -> None:
    """Run ARGV (an absolute path inside ROOT) chrooted into ROOT under qemu-user; output
    goes to LOG (a file object). Raises SandboxError when it fails or runs out of TIMEOUT."""
    if not Path(QEMU).exists():
        raise SandboxError(f"{QEMU} is missing (apt-get install qemu-user-static)")
    for d in ("proc", "sys"):
        p = root / d
        if p.is_symlink():  # debootstrap links them to the host's in a container
            p.unlink()
        p.mkdir(exist_ok=True)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            _child(root, argv, env, ready_w, go_r)
        except BaseException as e:  # report anything, never return into the caller's code
            os.write(2, f"sandbox: {e}\n".encode())
        os._exit(71)
    try:
        if os.read(ready_r, 1) != b"1":
            raise SandboxError("the sandbox process died before entering its namespaces")
        for name in ("uid_map", "gid_map"):
            if name == "gid_map":
                Path(f"/proc/{pid}/setgroups").write_text("allow")
            Path(f"/proc/{pid}/{name}").write_text(f"0 0 {ID_RANGE}\n")
        os.write(go_w, b"1")
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)  # its PID namespace's init dies with it
                os.waitpid(pid, 0)
                raise SandboxError(f"{argv[0]} did not finish in {timeout:.0f} s")
            time.sleep(0.5)
    finally:
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SandboxError(f"{' '.join(argv)} exited with {code} (see the build log)")
