#!/usr/bin/env bash
# Full-size load and crash-safety suites against release binaries (CI runs them reduced):
#   200 pods through flannel -> bridge -> host-local, 16 at once, then interleaved waves;
#   300 ADD/DEL runs of the chain killed with SIGKILL at random instants, in-process and
#   exec'd delegation, followed by what a runtime does next (DEL, GC with the valid list).
# It prints the counts of runs, kills and leaks, and the throughput.
#   scripts/stress.sh [LOAD_PODS] [FAULT_RUNS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (throwaway network namespaces)" >&2; exit 1; }
scripts/install-deps.sh
scripts/build-release.sh
export CNI_TEST_BIN_DIR="$PWD/target/dist" LOAD_PODS="${1:-200}" FAULT_RUNS="${2:-300}" LOAD_PARALLEL=16
cargo test --release --quiet -p e2e --test stress_e2e -- --nocapture --test-threads=1 2>&1 \
  | grep -E 'load:|fault injection|test result|panicked|assert'
