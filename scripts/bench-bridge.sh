#!/usr/bin/env bash
# bridge benchmark: pod churn (ADD then DEL of N pods, sequentially and 4 at once, with and
# without ipMasq) through Debian's Go bridge + host-local and through ours, in one run, in
# a throwaway node namespace with one throwaway namespace per pod. Prints p50/p99 per
# operation, the ours/go ratios, and the masquerading share of ADD and DEL.
#   scripts/bench-bridge.sh [--pods N]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (the plugins run in throwaway network namespaces)" >&2; exit 1; }
scripts/install-deps.sh
scripts/build-release.sh
cargo build --release --quiet -p e2e --bin cni-bench
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
CNI_TEST_BIN_DIR="$target_dir/dist" "$target_dir/release/cni-bench" bridge "$@"
