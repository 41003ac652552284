"""A minimal initramfs for the arm64 VM, written on the host in a second.

Debian's arm64 kernel builds virtio-pci, virtio-blk and ext4 as modules, so it cannot mount
its root disk without an initramfs. `mkinitramfs` under emulation took ~18 minutes per run
(two runs in a plain debootstrap: most of a cold build). This one needs no emulation: a
static busybox, the handful of modules that reach the root disk (in dependency order, read
from each module's own `.modinfo`) and a shell `/init` that loads them, mounts the root by
label and hands over with `switch_root`. Everything else loads later from the root's
/lib/modules through the kernel's own `modprobe` requests.
"""

from __future__ import annotations

import io
import re
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

# what it takes to reach an ext4 root on virtio-blk (PCI, as -M virt attaches it), plus the
# entropy source (Python blocks in getrandom() until the kernel's pool is ready)
ROOT_MODULES = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4", "virtio_rng")

INIT = r"""#!/bin/busybox sh
# netplane arm64 VM: load the root disk's modules, mount the root by label, hand over.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.order); do
    insmod "/modules/$m.ko" || echo "initramfs: insmod $m failed"
done
root=LABEL=nproot; init=/sbin/init; mode=rw
for arg in $(cat /proc/cmdline); do
    case $arg in root=*) root=${arg#root=} ;; init=*) init=${arg#init=} ;; ro) mode=ro ;; esac
done
dev=
for _ in $(seq 1 300); do dev=$(findfs "$root" 2>/dev/null) && break; sleep 0.1; done
[ -n "$dev" ] || { echo "initramfs: no root device $root"; poweroff -f; }
mkdir -p /newroot
mount -t ext4 -o "$mode" "$dev" /newroot || { echo "initramfs: cannot mount $dev"; poweroff -f; }
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot "$init"
"""


class InitramfsError(RuntimeError):
    """The kernel's modules do not allow building the initramfs (names which and why)."""


def module_files(modules_dir: Path) -> dict[str, Path]:
    """Every module under MODULES_DIR by its canonical name (dashes read as underscores)."""
    return {p.name.removesuffix(".ko").replace("-", "_"): p for p in modules_dir.rglob("*.ko")}


def depends(module: bytes) -> list[str]:
    """The `depends=` list from a module file's .modinfo section."""
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", module)
    if not m or not m.group(1):
        return []
    return [d.replace("-", "_") for d in m.group(1).decode().split(",") if d]


def load_order(wanted: Iterable[str], deps: Callable[[str], list[str] | None]) -> list[str]:
    """WANTED and everything they depend on, each after its dependencies (DEPS gives a
    module's dependencies, None for a module the kernel does not have)."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in visiting:
            raise InitramfsError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        needs = deps(name)
        if needs is None:
            needed_by = " -> ".join(chain) or "the root disk"
            raise InitramfsError(f"module {name} (needed by {needed_by}) is not in this kernel")
        visiting.add(name)
        for d in needs:
            visit(d, (*chain, name))
        visiting.discard(name)
        order.append(name)

    for name in wanted:
        visit(name, ())
    return order


Entry = tuple[str, int, bytes] | tuple[str, int, bytes, tuple[int, int]]


def cpio_newc(entries: Iterable[Entry]) -> bytes:
    """An uncompressed `newc` cpio archive of (path, mode, data[, (major, minor)]) entries,
    as the kernel unpacks it (the mode says directory, file or device node)."""
    out = io.BytesIO()

    def put(name: str, mode: int, data: bytes, ino: int, rdev: tuple[int, int] = (0, 0)) -> None:
        raw = name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, *rdev, len(raw), 0)
        out.write(b"070701" + b"".join(f"{f:08X}".encode() for f in fields) + raw)
        out.write(b"\0" * (-(110 + len(raw)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))

    ino = 0
    for ino, entry in enumerate(entries, start=1):
        put(*entry[:3], ino, *entry[3:])
    put("TRAILER!!!", 0, b"", ino + 1)
    return out.getvalue()


def build(modules_dir: Path, busybox: Path, wanted: Iterable[str] = ROOT_MODULES) -> bytes:
    """The initramfs (uncompressed cpio) for the kernel whose modules are in MODULES_DIR."""
    files = module_files(modules_dir)
    data: dict[str, bytes] = {}

    def deps(name: str) -> list[str] | None:
        if name not in files:
            return None
        data[name] = files[name].read_bytes()
        return depends(data[name])

    order = load_order(wanted, deps)
    entries: list[Entry] = [
        (d, stat.S_IFDIR | 0o755, b"") for d in ("bin", "dev", "proc", "sys", "modules", "newroot")
    ]
    entries.append(("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)))  # /init's stdio
    entries.append(("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes()))
    entries.append(("init", stat.S_IFREG | 0o755, INIT.encode()))
    entries.append(("modules.order", stat.S_IFREG | 0o644, ("\n".join(order) + "\n").encode()))
    entries += [(f"modules/{n}.ko", stat.S_IFREG | 0o644, data[n]) for n in order]
    return cpio_newc(entries)
