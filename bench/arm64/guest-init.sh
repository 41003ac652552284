#!/bin/sh
# PID 1 of netplane's arm64 VM (bench/arm64/vm.py copies it onto the payload disk, the image's
# /sbin/netplane-vm-init runs it). MODE=bench (from /payload/run.conf): install this checkout
# into the image's virtualenv (editable and offline, as bootstrap.sh does on a Pi), run
# bench/arm64/suite.sh, results to /payload/results. No systemd, no udev: the machine does only this, and is up in seconds.
# Whatever happens it powers the machine off itself; BUDGET (seconds) bounds the benchmarks so
# that the disks are synced and unmounted before the host's own timeout kills qemu.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
. /payload/run.conf
out=/payload/results
mkdir -p "$out"
log() { echo "netplane-vm: $*"; echo "$(date -u +%FT%TZ) $*" >>"$out/vm.log"; }
uptime_s() { cut -d. -f1 /proc/uptime; }
deadline=$(($(date +%s) + BUDGET))

off() {  # never returns: sync, unmount, power off (the kernel panics if PID 1 exits)
    log "powering off ($1) after $(uptime_s) s"
    echo "$1" >"$out/status"
    sync
    umount /payload 2>/dev/null || mount -o remount,ro /payload
    mount -o remount,ro / 2>/dev/null
    echo o >/proc/sysrq-trigger
    sleep 60
}

mountpoint -q /dev/pts || { mkdir -p /dev/pts && mount -t devpts devpts /dev/pts; }
mkdir -p /dev/shm && mount -t tmpfs -o mode=1777 shm /dev/shm
mount -t tmpfs -o mode=755 run /run && mkdir -p /run/netns /run/lock
mount -t tmpfs -o mode=1777 tmp /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
ln -sf /proc/self/fd /dev/fd 2>/dev/null
ln -sf /proc/mounts /etc/mtab 2>/dev/null
log "up: $(uname -srm), $(nproc) cpus, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB," \
    "cmdline: $(cat /proc/cmdline)"

bench() {
    ip link set lo up
    hostname netplane-arm64-vm
    cp -a /payload/src /opt/netplane
    ln -s /opt/netplane-venv /opt/netplane/.venv
    cd /opt/netplane || off "no source tree"
    log "installing netplane (editable, offline)"
    .venv/bin/pip install -q --no-index --no-deps --no-build-isolation \
        --disable-pip-version-check -e . || off "installing netplane failed"
    log "suite.sh $SUITE_ARGS (deadline in $((deadline - $(date +%s))) s)"
    # shellcheck disable=SC2086  # SUITE_ARGS is a word list by design
    {
        TQDM_DISABLE=1 NETPLANE_SUITE_DEADLINE=$deadline bash bench/arm64/suite.sh $SUITE_ARGS \
            --output-dir "$out"
        echo $? >"$out/suite-status"
    } 2>&1 | tee "$out/suite.log"
    log "suite finished: $(cat "$out/suite-status") part(s) failed"
    off ok
}

case $MODE in
    bench) bench ;;
    *) off "unknown mode $MODE" ;;
esac
