#!/usr/bin/env bash
set -euo pipefail
cd "$(dirname "$0")/.."
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
# The no_std build has its own cfgs: lint it too.
cargo clippy -p reactive-lock --no-default-features --locked -- -D warnings
