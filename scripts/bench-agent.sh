#!/usr/bin/env bash
# Overlay agent convergence benchmark: one agent (release build) on a throwaway node;
# 50 simulated peers' leases appear in one store write, and the time until all 50 are
# routed over flannel.1 is measured, then the latency of single new leases and the
# agent's memory; once with the embedded store, once with etcd (started by the test in
# its own namespace). Prints one `BENCH ...` line per store.
#   scripts/bench-agent.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (the benchmark builds throwaway network namespaces)" >&2; exit 1; }
scripts/install-deps.sh
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -p flanneld-rs
cargo build --workspace --bins
FLANNELD_BIN="$target_dir/release/flanneld" \
  cargo test -p e2e --test agent_e2e -- --ignored --nocapture convergence_benchmark 2>&1 | grep -E '^BENCH|test result'
