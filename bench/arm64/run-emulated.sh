#!/usr/bin/env bash
# Runs netplane's benchmark suite in an arm64 Debian 12 userland under qemu-user, on any host:
#   sudo bash bench/arm64/run-emulated.sh [SUITE ARGS...]     (default SUITE ARGS: --quick)
# Builds the chroot once (debootstrap --foreign, then the second stage under qemu-user), copies
# the working tree in, installs it into a virtualenv there and runs bench/arm64/suite.sh. The
# JSON results land in bench/results/ marked EMULATED: they show that the package installs and
# the compute-only benchmarks run on arm64, never what arm64 hardware achieves. Kernel-touching
# benchmarks skip (qemu-user does not translate netfilter netlink/sockopts).
# Idempotent: each finished step leaves a marker and is skipped next time; the chroot's mounts
# are removed on every exit. Environment: NETPLANE_ARM64_ROOT (chroot directory, default
# /var/tmp/netplane-arm64-bookworm), DEBIAN_MIRROR, NETPLANE_ARM64_CLEAN=1 (rebuild from scratch).
set -euo pipefail
repo=$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)
root=${NETPLANE_ARM64_ROOT:-/var/tmp/netplane-arm64-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
results=$repo/bench/results
suite_args=("$@")
((${#suite_args[@]})) || suite_args=(--quick)
# gcc/python3-dev: python-iptables (bench extra) has no wheel and builds a small C extension
packages=python3-venv,python3-dev,gcc,libc6-dev,ca-certificates

log() { echo "run-emulated: $*" >&2; }
[[ $(id -u) == 0 ]] || { log "run as root (debootstrap and chroot need it)"; exit 1; }
[[ $root == /* && $root != / ]] || { log "NETPLANE_ARM64_ROOT must be an absolute path, not /"; exit 1; }

mounts=(proc sys dev dev/pts)
unmount_all() {  # deepest first; also clears mounts left behind by an interrupted run
    local i
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        if mountpoint -q "$root/${mounts[i]}" 2>/dev/null; then
            umount "$root/${mounts[i]}" || umount -l "$root/${mounts[i]}"
        fi
    done
}
trap unmount_all EXIT
unmount_all

# 1. host side: qemu-user-static with binfmt (F flag: the interpreter works inside the chroot)
missing=()
for p in qemu-user-static binfmt-support debootstrap; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null \
    || { log "binfmt handler qemu-aarch64 is not enabled; cannot run arm64 binaries"; exit 1; }

# 2. the arm64 userland
if [[ ${NETPLANE_ARM64_CLEAN:-0} == 1 ]]; then
    log "removing $root"
    rm -rf --one-file-system "$root"
fi
if [[ ! -e $root/.netplane-stage1 ]]; then
    rm -rf --one-file-system "$root"
    log "debootstrap first stage (arm64 bookworm) into $root"
    debootstrap --arch=arm64 --foreign --variant=minbase --include="$packages" \
        bookworm "$root" "$mirror"
    touch "$root/.netplane-stage1"
fi
if [[ ! -e $root/.netplane-stage2 ]]; then
    log "debootstrap second stage under qemu-user (slow: tens of minutes)"
    chroot "$root" /debootstrap/debootstrap --second-stage
    unmount_all  # the second stage may leave its own /proc and /sys mounted
    touch "$root/.netplane-stage2"
fi

# 3. the host's name resolution and trust (local CAs, pip.conf: a TLS-inspecting proxy or a
#    private mirror must work inside as it does outside), then a fresh copy of the working tree
#    (tracked and new files, and .git for the commit)
cp /etc/resolv.conf "$root/etc/resolv.conf"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null
fi
[[ -f /etc/pip.conf ]] && cp /etc/pip.conf "$root/etc/pip.conf"
dest=$root/opt/netplane
mkdir -p "$dest"
find "$dest" -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +
(cd "$repo" && { git ls-files -co --exclude-standard -z; printf '.git\0'; } | tar --null --ignore-failed-read -T - -cf -) \
    | tar -C "$dest" -xf -
rm -rf "$root/opt/results"
mkdir -p "$root/opt/results"

mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"

# 4. install into a virtualenv inside and run the suite (status: how many parts failed)
log "installing netplane in the chroot and running: suite.sh ${suite_args[*]}"
status=0
chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    NETPLANE_BENCH_EMULATED=qemu-user PIP_DISABLE_PIP_VERSION_CHECK=1 \
    bash -euc '
        cd /opt/netplane
        [[ -x .venv/bin/python ]] || python3 -m venv .venv
        if [[ ! -f .venv/.netplane-installed || pyproject.toml -nt .venv/.netplane-installed ]]; then
            .venv/bin/pip install -q -e ".[test,bench]"
            touch .venv/.netplane-installed
        fi
        .venv/bin/netplane --version
        bash bench/arm64/suite.sh "$@" --output-dir /opt/results
    ' suite "${suite_args[@]}" || status=$?

mkdir -p "$results"
cp -v "$root"/opt/results/*.json "$results"/ >&2 2>/dev/null || log "no result files were written"
log "done (suite status $status)"
exit "$status"
