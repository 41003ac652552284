"""host-local's on-disk allocation store, byte-compatible so the two plugins can share it.

Layout: <dataDir>/<network>/<ip> (holds "<containerID>\\r\\n<ifname>"),
last_reserved_ip.<rangeset index>, and a `lock` file that is flock'ed around every change.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress

DEFAULT_DATA_DIR = "/var/lib/cni/networks"
_LAST = "last_reserved_ip."
_CLAIM = ".claim"  # the owner, written before it is linked to the address's name
_TMP = ".tmp"  # last_reserved_ip.N, written before it replaces the old one


class Store:
    def __init__(self, network: str, data_dir: str = "") -> None:
        self.dir = os.path.join(data_dir or DEFAULT_DATA_DIR, network)

    @contextmanager
    def locked(self) -> Iterator[Store]:
        os.makedirs(self.dir, mode=0o755, exist_ok=True)
        fd = os.open(os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._drop_leftovers()
            yield self
        finally:
            os.close(fd)

    def reserve(self, container_id: str, ifname: str, ip: str, rangeset: int) -> bool:
        """Claim `ip`; False when someone holds it.

        The owner is written to a claim file first and linked to the IP's name: link() is as
        atomic as O_EXCL and the name never exists without its owner. host-local creates the
        name, then writes: killed in between, it leaves an empty file that no DEL matches,
        an address held until a GC. Callers hold the lock, so one claim file serves all.
        """
        path = os.path.join(self.dir, ip)
        if os.path.lexists(path):
            return False
        claim = os.path.join(self.dir, _CLAIM)
        fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                os.write(fd, f"{container_id}\r\n{ifname}".encode())
            finally:
                os.close(fd)
            os.link(claim, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(claim)
        self._write(f"{_LAST}{rangeset}", ip)
        return True

    def last_reserved(self, rangeset: int) -> str:
        try:
            with open(os.path.join(self.dir, f"{_LAST}{rangeset}")) as f:
                return f.read().strip()
        except FileNotFoundError:
            return ""

    def allocations(self) -> Iterator[tuple[str, str, str]]:
        """(ip, containerID, ifname) for every reservation, in host-local's order (file names
        sorted, as Go's filepath.Walk reads them); old files without ifname give ''."""
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return
        for name in names:
            if name == "lock" or name.startswith(_LAST) or name.startswith("."):
                continue
            try:
                with open(os.path.join(self.dir, name), encoding="utf-8", newline="") as f:
                    owner = f.read()
            except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError):
                continue
            cid, _, ifname = owner.strip().partition("\r\n")
            yield name, cid.strip(), ifname.strip()

    def owned_by(self, container_id: str, ifname: str) -> list[str]:
        return [ip for ip, c, i in self.allocations() if _matches(c, i, container_id, ifname)]

    def release(self, ip: str) -> None:
        with suppress(FileNotFoundError):
            os.unlink(os.path.join(self.dir, ip))

    def release_by_id(self, container_id: str, ifname: str) -> list[str]:
        released = self.owned_by(container_id, ifname)
        for ip in released:
            self.release(ip)
        return released

    def _drop_leftovers(self) -> None:
        """The claim and temporary files of a process killed while it held the lock.

        A claim may be a second name of the reservation it made: unlinked, never rewritten."""
        for name in (_CLAIM, _TMP):
            with suppress(FileNotFoundError):
                os.unlink(os.path.join(self.dir, name))

    def _write(self, name: str, content: str) -> None:
        tmp = os.path.join(self.dir, _TMP)
        with open(tmp, "w") as f:
            f.write(content)
        try:
            os.replace(tmp, os.path.join(self.dir, name))
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise


def _matches(cid: str, ifname: str, want_cid: str, want_ifname: str) -> bool:
    """host-local matches "<id>\\r\\n<ifname>", and a bare "<id>" written by old versions."""
    return cid == want_cid and (ifname == want_ifname or not ifname)
