#!/usr/bin/env bash
# The arm64 benchmark list, the one both arm64 runners run unchanged: run-hardware.sh on a
# real Raspberry Pi and, inside the emulated machine, run-vm.sh (netplane bench arm64-vm).
#   bash bench/arm64/suite.sh [--quick] [--only PART,...] [--output-dir DIR]
# Parts, in this order (the ones the arm64 figures are first wanted for come first):
#   calibrate   fixed work (Python loop, SHA-256, fork/exec, iptables-restore of a fixed
#               ruleset): relates this machine's figures to another's (the VM's slowdown)
#   proxy-sync  the Syncer's full sync and one-endpoint change, 1k and 5k services x 5
#               (a file each), both iptables variants, beside the floor
#   dataplane   first-packet latency through the node, 10 / 100 / 1,000 services
#   sync        end-to-end and per-sync rule latency, 100 / 1,000 services x 1 / 10 endpoints
#   dns         netplane dns under dnsperf beside the dnslib floor (and CoreDNS if found)
#   cni         ADD/DEL latency, the reference bridge plugin beside ours
#   compute     the pure parts (renderer, change tracking)
#   micro       pytest-benchmark micro-benchmarks
# Every benchmark checks for itself what it can use (under qemu-user the kernel parts skip
# with the reason) and labels its results (arch, CPU, emulated or not). One failing part never
# hides the others: the exit status is the number of parts that failed. Time bounds:
# NETPLANE_SUITE_DEADLINE (epoch seconds: no part starts, or runs, past it; the kernel
# benchmarks stop cleanly on SIGTERM and keep the points measured) and
# NETPLANE_SUITE_PART_TIMEOUT (seconds per part, default 4 hours).
set -uo pipefail
cd "$(dirname "$(readlink -f "$0")")/../.."

quick=()
only=
out=bench/results
while (($#)); do
    case $1 in
        --quick) quick=(--quick) ;;
        --only) only=$2; shift ;;
        --output-dir) out=$2; shift ;;
        *) echo "usage: suite.sh [--quick] [--only PART,...] [--output-dir DIR]" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$out"
np=.venv/bin/netplane
deadline=${NETPLANE_SUITE_DEADLINE:-0}
part_timeout=${NETPLANE_SUITE_PART_TIMEOUT:-14400}
failed=0

part() {  # part NAME CMD...: run one part within its time bound, report, count failures
    local name=$1; shift
    [[ -z $only || ,$only, == *,$name,* ]] || return 0
    local limit=$part_timeout
    if ((deadline)); then
        local left=$((deadline - $(date +%s) - 60))
        if ((left < 120)); then
            echo "=== $name: not started: the time budget is spent" >&2
            failed=$((failed + 1))
            return
        fi
        ((left < limit)) && limit=$left
    fi
    echo "=== $name: $* (at most ${limit} s)" >&2
    local start=$SECONDS rc=0
    timeout --signal=TERM --kill-after=120 "$limit" "$@" || rc=$?
    if ((rc == 0)); then
        echo "=== $name: ok ($((SECONDS - start)) s)" >&2
    else
        ((rc == 124)) && echo "=== $name: stopped after ${limit} s (the time bound)" >&2
        echo "=== $name: FAILED ($rc, $((SECONDS - start)) s)" >&2
        failed=$((failed + 1))
    fi
}

if ((${#quick[@]})); then
    proxy_sync_runs=(--quick)
    dataplane=(--quick)
    sync=(--quick)
else
    # one run (one file) per scale, the small one first: a time bound hit at 5k services
    # (~25 min emulated) keeps the 1k figures of both variants
    proxy_sync_runs=("--services 1000" "--services 5000")
    dataplane=(--services 10 --services 100 --services 1000)
    sync=(--services 100 --services 1000 --endpoints 1 --endpoints 10)
fi
part calibrate "$np" bench calibrate "${quick[@]}" --output-dir "$out"
for args in "${proxy_sync_runs[@]}"; do
    # shellcheck disable=SC2086  # each entry is a word list by design
    part proxy-sync "$np" bench proxy-sync $args --output-dir "$out"
done
part dataplane "$np" bench dataplane "${dataplane[@]}" --output-dir "$out"
part sync "$np" bench sync "${sync[@]}" --output-dir "$out"
part dns "$np" bench dns "${quick[@]}" --output-dir "$out"
part cni "$np" bench cni "${quick[@]}" --output-dir "$out"
part compute "$np" bench compute "${quick[@]}" --output-dir "$out"
emulated=$(.venv/bin/python -c 'from netplane.bench._results import emulation; print("-emulated" if emulation() else "")')
micro=$out/micro-$(uname -m)-$(date -u +%Y-%m-%dT%H%M%SZ)$emulated.json
part micro .venv/bin/pytest tests/bench/test_micro.py -q --benchmark-only --benchmark-json "$micro"
echo "suite: $failed part(s) failed; results in $out" >&2
exit "$failed"
