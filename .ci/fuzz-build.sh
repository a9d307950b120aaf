#!/usr/bin/env bash
# Fuzz targets must compile. Plain `cargo build` works on stable; to fuzz for real:
#   cargo install cargo-fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run controller_ops
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --manifest-path fuzz/Cargo.toml --locked --target-dir "${CARGO_TARGET_DIR:-target}/fuzz"
