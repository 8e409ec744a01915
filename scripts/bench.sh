#!/usr/bin/env bash
# The whole comparison in one run, on this machine: Debian's Go bridge + host-local
# (containernetworking-plugins) against ours as installed (the multi-call binary), both as
# bridge + host-local and as the full flannel -> bridge -> host-local chain. Pod churn (ADD
# then DEL of N pods, sequentially and 4 at once, with and without ipMasq) in throwaway
# namespaces, implementations interleaved; per-op p50/p99 and ratios, the masquerade
# share, peak RSS per plugin process, binary sizes, PASS/MISS per target. Writes
# docs/bench/latest.{json,svg,md} (all numbers; the latency CDF chart; the tables).
#   scripts/bench.sh [--pods N]        (default 50; CARGO_BUILD_JOBS limits the build)
set -euo pipefail
pods=50
if [ "${1:-}" = --pods ]; then pods="${2:?--pods needs a number}"; shift 2; fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (the plugins run in throwaway network namespaces)" >&2; exit 1; }
scripts/install-deps.sh
scripts/build-release.sh
cargo build --release --quiet -p e2e --bin cni-bench
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
echo "date: $(date -u)  kernel: $(uname -r)  nproc: $(nproc)  cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) (other work on this machine skews the numbers)"
CNI_TEST_BIN_DIR="$target_dir/dist" "$target_dir/release/cni-bench" all --pods "$pods" \
  --json docs/bench/latest.json --svg docs/bench/latest.svg --md docs/bench/latest.md "$@"
