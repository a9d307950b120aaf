#!/usr/bin/env bash
# Every user-facing example runs as written and exits 0 within 60 s: the quickstart and the
# per-runtime ones (LocalBackend), and the Redis and gRPC ones, each starting its own server
# (redis-server from PATH; a hub in-process). `chaos_soak` has its own script
# (.ci/chaos.sh). Built first, so the limit is the run's.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked -p reactive-lock --examples
cargo build --locked -p reactive-lock-backends --features redis,grpc-server --example redis --example grpc
dir="${CARGO_TARGET_DIR:-target}/debug/examples"
passed=0
for example in quickstart tokio smol async_std redis grpc; do
    echo "--- example: $example"
    timeout 60 "$dir/$example"
    passed=$((passed + 1))
done
echo "examples: $passed passed, 0 failed"
