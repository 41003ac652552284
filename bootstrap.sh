#!/usr/bin/env bash
# Installs everything netplane needs on Debian 12 (as root), then runs one job:
#   bash bootstrap.sh run           the main job on the embedded default
#   bash bootstrap.sh test [ARGS]   the whole test suite (ARGS go to pytest)
#   bash bootstrap.sh install       only install
# Idempotent: apt packages and the virtualenv are installed only when missing.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

APT_PACKAGES=(
    python3 python3-venv python3-dev         # Debian's own Python 3.11, as Raspberry Pi OS ships
    iproute2 iptables nftables conntrack     # the kernel interfaces the proxy drives
    dnsutils dnsperf busybox-static curl     # real DNS clients, load generator, busybox nslookup
    iputils-ping netcat-openbsd              # what the course runs inside pods (`run pingpong -- ping`)
    containernetworking-plugins              # the reference bridge/host-local plugins we compare with
    containerd runc podman                   # real CNI clients
    gcc libc6-dev                            # the static CNI launcher (cni/launcher.c)
    debootstrap qemu-user-static             # the image's base rootfs, arm64 under emulation
)

install_apt() {
    local missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        echo "bootstrap: installing ${missing[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

install_venv() {
    local stamp=.venv/.netplane-installed
    if [[ ! -x .venv/bin/python ]] || ! .venv/bin/python -c 'import sys' 2>/dev/null; then
        rm -rf .venv
        /usr/bin/python3 -m venv .venv
    fi
    if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
        .venv/bin/pip install -q --upgrade pip
        .venv/bin/pip install -q -e '.[test,bench]'
        touch "$stamp"
    fi
}

[[ $(id -u) == 0 ]] || { echo "bootstrap: run as root (network namespaces and iptables need it)" >&2; exit 1; }
job=${1:-run}
shift || true
install_apt
install_venv
case $job in
    install) ;;
    run)  # the course's lab: two nodes, kube-dns, default/kubernetes; stays up until `netplane down`
        .venv/bin/netplane up "$@"
        .venv/bin/netplane get nodes -o wide
        .venv/bin/netplane get pods -A -o wide
        echo "Next: export PATH=\$PWD/.venv/bin:\$PATH; netplane create deployment blue --image=jpetazzo/color; ..." \
             "(see README.md); remove everything with: netplane down" ;;
    test)  # the real Kubernetes peers the tests run: built once from the Go module proxy, then cached
        .venv/bin/netplane anchors build --for-tests
        exec .venv/bin/pytest "$@" ;;   # not `python -m pytest`: that puts the repo root (with its dns/ folder) on sys.path
    *) echo "usage: bash bootstrap.sh run|test|install" >&2; exit 2 ;;
esac
