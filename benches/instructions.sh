#!/usr/bin/env bash
# Instructions per iteration of each hot-path workload, counted by callgrind (exact and
# repeatable, unlike time on a shared VM): the difference of two runs' totals over the
# difference of their iteration counts, so the setup's instructions cancel out.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -p reactive-lock-benches --release --bin instructions --locked -q
bin="${CARGO_TARGET_DIR:-target}/release/instructions"
total() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
for workload in transition_pair_local transition_pair_local_with_data guard_enter_drop increment_decrement; do
    a=$(total "$workload" 10000)
    b=$(total "$workload" 20000)
    echo "$workload: $(( (b - a) / 10000 )) instructions per iteration"
done
