#!/usr/bin/env bash
# host-local benchmark: ADD/DEL latency and throughput (sequential and 4 at once) of our
# host-local against Debian's Go host-local, measured in the same run, printed as ratios;
# plus ADD latency with 60,000 existing reservations against an empty network.
#   scripts/bench-host-local.sh [--ops N] [--scale N]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (the plugins run in a throwaway network namespace)" >&2; exit 1; }
scripts/install-deps.sh
scripts/build-release.sh
cargo build --release --quiet -p e2e --bin cni-bench
CNI_TEST_BIN_DIR="$PWD/target/dist" target/release/cni-bench host-local "$@"
