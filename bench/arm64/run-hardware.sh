#!/usr/bin/env bash
# The one command for a real arm64 node (Raspberry Pi 4/5, Debian 12 / Raspberry Pi OS
# bookworm), run as root from a checkout:  sudo bash bench/arm64/run-hardware.sh [--quick]
# [--only PART,...]. Installs everything with the project's own bootstrap.sh, then runs
# bench/arm64/suite.sh: the same list, sizes and JSON as the emulated run (run-vm.sh).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/../.."
bash bootstrap.sh install
exec bash bench/arm64/suite.sh "$@"
