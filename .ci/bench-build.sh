#!/usr/bin/env bash
# Benches compile and run once in test mode (one iteration each, no measurement), so they
# can't rot; measuring is a pinned, manual step (see BENCHMARKS.md). The mem binary too.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --workspace --locked -- --test
cargo run --locked --release -p reactive-lock-benches --bin mem -- --trackers 1000 --backend local
# The memory target (BENCHMARKS.md): 10,000 trackers over Redis within 20 MB, flapping included.
cargo run --locked --release -p reactive-lock-benches --bin mem -- --trackers 10000 \
    --backend redis --max-rss-mb 20
# The Redis cost breakdown (BENCHMARKS.md) runs too, briefly.
cargo run --locked --release -p reactive-lock-benches --bin redis_cost -- --pairs 200 --rounds 1
