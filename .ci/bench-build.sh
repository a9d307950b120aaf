#!/usr/bin/env bash
# Benches must compile (running them is a pinned, manual step: see BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --workspace --no-run --locked
