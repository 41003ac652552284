#!/usr/bin/env bash
# The one command for arm64 figures without a Pi: the suite (bench/arm64/suite.sh, the same
# list run-hardware.sh runs on a real Pi) on an emulated Raspberry Pi class machine, from a
# checkout on an x86_64 (or any) Debian 12 host, as root:
#   sudo bash bench/arm64/run-vm.sh [--quick] [--cpu cortex-a72|cortex-a76] [--only PART,...]
# Installs netplane on the host (bootstrap.sh), then `netplane bench arm64-vm`: builds and
# caches the arm64 image from Debian's packages (/var/cache/netplane/arm64-vm, once), boots
# it under qemu-system with no network, runs the suite inside within a time budget, copies
# the JSON results to bench/results/ (labelled emulated: qemu-system (tcg), never hardware
# figures) and shows them beside the newest host run of each benchmark.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/../.."
bash bootstrap.sh install
exec .venv/bin/netplane bench arm64-vm "$@"
