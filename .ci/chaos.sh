#!/usr/bin/env bash
# The chaos soak, short: three instances per backend flap 20 keys while Redis is killed and
# restarted empty and the hub is restarted; after every round each instance and a new
# observer agree with the true state, every waiter is released, and RSS stays flat. The
# long run (`--seconds 1800`) is a manual step, reported in BENCHMARKS.md. Debug build:
# after .ci/test.sh it is built already.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked -p reactive-lock-backends --all-features --example chaos_soak
"${CARGO_TARGET_DIR:-target}/debug/examples/chaos_soak" --seconds "${CHAOS_SECONDS:-100}"
