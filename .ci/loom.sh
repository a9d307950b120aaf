#!/usr/bin/env bash
# loom models of the core. A separate target dir keeps --cfg loom from rebuilding the
# main one.
set -euo pipefail
cd "$(dirname "$0")/.."
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom" \
    cargo test -p reactive-lock-loom-tests --release --locked
