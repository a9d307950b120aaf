#!/usr/bin/env bash
# Runs every fuzz target for a short fixed time (FUZZ_SECONDS, default 30) from the committed
# seed corpora (fuzz/corpus/<target>/), under AddressSanitizer; any crash, panic, leak or
# timeout fails the check. Needs cargo-fuzz (installed here when missing) and the sanitizer
# flags, which stable rustc accepts with RUSTC_BOOTSTRAP=1. To fuzz one target for longer:
#   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run redis_wire -- -max_total_time=600
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-30}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
# Apart from the main build: the sanitizer flags would rebuild everything there.
target_dir="$(realpath -m "${CARGO_TARGET_DIR:-target}")/fuzz-asan"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
cd fuzz
export RUSTC_BOOTSTRAP=1
cargo fuzz build --target-dir "$target_dir"
for target in $(cargo fuzz list); do
    mkdir -p "$scratch/$target"
    echo "fuzz: $target for ${seconds}s"
    # New inputs go to the scratch corpus (first), the committed seeds are only read; a
    # crashing input is written to fuzz/artifacts/<target>/. One process (no -jobs): its
    # exit code is the verdict.
    status=0
    cargo fuzz run --target-dir "$target_dir" "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$scratch/$target.log" 2>&1 || status=$?
    if [ "$status" -ne 0 ]; then
        # The panic or sanitizer report, then where the crashing input was written.
        grep -E -A8 'panicked|ERROR: |SUMMARY' "$scratch/$target.log" | head -n 60 || true
        grep -E 'Test unit written|artifact' "$scratch/$target.log" | tail -n 3 || true
        echo "fuzz: $target failed (exit $status)" >&2
        exit "$status"
    fi
    grep -E '^(Done|stat::number_of_executed_units)' "$scratch/$target.log"
done
echo "fuzz: every target ran ${seconds}s without a crash"
