#!/usr/bin/env bash
# Runs netplane's benchmark suite with an installed virtualenv; used unchanged on a real arm64
# node (run-hardware.sh) and inside the qemu-user chroot (run-emulated.sh).
#   bash bench/arm64/suite.sh [--quick] [--output-dir DIR]
# Kernel-touching benchmarks (sync, dataplane) check for themselves whether they can reach
# netfilter and skip with a message when they cannot (qemu-user), so one failing part never
# hides the figures of the others: the exit status is the number of parts that failed.
set -uo pipefail
cd "$(dirname "$(readlink -f "$0")")/../.."

quick=()
out=bench/results
while (($#)); do
    case $1 in
        --quick) quick=(--quick) ;;
        --output-dir) out=$2; shift ;;
        *) echo "usage: suite.sh [--quick] [--output-dir DIR]" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$out"
np=.venv/bin/netplane
failed=0
part() {  # part NAME CMD...: run one part, report, count failures
    local name=$1; shift
    echo "=== $name: $*" >&2
    if "$@"; then echo "=== $name: ok" >&2; else echo "=== $name: FAILED ($?)" >&2; failed=$((failed + 1)); fi
}
part compute "$np" bench compute "${quick[@]}" --output-dir "$out"
part sync "$np" bench sync "${quick[@]}" --output-dir "$out"
part dataplane "$np" bench dataplane "${quick[@]}" --output-dir "$out"
part dns "$np" bench dns "${quick[@]}" --output-dir "$out"
part cni "$np" bench cni "${quick[@]}" --output-dir "$out"
micro=$out/micro-$(uname -m)-$(date -u +%Y-%m-%dT%H%M%SZ)${NETPLANE_BENCH_EMULATED:+-emulated}.json
part micro .venv/bin/pytest tests/bench/test_micro.py -q --benchmark-only --benchmark-json "$micro"
echo "suite: $failed part(s) failed; results in $out" >&2
exit "$failed"
