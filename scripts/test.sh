#!/usr/bin/env bash
# The project's one test command: installs what the tests need, then runs the lint gate,
# the unit tests and the end-to-end tests (as root: they create network namespaces, but
# only throwaway ones; nothing is written to the machine's own network or CNI dirs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)

if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh must run as root (tests create network namespaces)" >&2
  exit 1
fi

scripts/install-deps.sh

# The real upstream cnitool (libcni 1.1.2), built offline from Debian packages.
export CNITOOL="${CNITOOL:-$root/target/cnitool}"
if [ ! -x "$CNITOOL" ]; then
  builder="$root/../shared/tools/build-cnitool.sh"
  if [ ! -x "$builder" ]; then
    echo "cannot build cnitool: $builder is missing (shared/ must sit beside the checkout)" >&2
    exit 1
  fi
  CNITOOL_OUT="$CNITOOL" "$builder"
fi

export CARGO_TERM_COLOR=never
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
# Four test threads on two cores: the kernel and exec tests mostly wait on I/O.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --all-targets -- --test-threads=4 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -Eo '^test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
echo
echo "Tests: $passed passed, $failed failed"
exit "$status"
