#!/usr/bin/env bash
# The core without std: no_std + alloc.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -p reactive-lock --no-default-features --locked
