#!/usr/bin/env bash
# The crates meant for crates.io package and build from their archives alone: `cargo publish
# --workspace --dry-run` packages reactive-lock, reactive-lock-backends and reactive-lock-cli
# together (each resolving the others from the archives, not from crates.io) and builds each
# with all features, so a file outside a package (the proto, a license, a readme) fails here.
# It needs a clean work tree, as a real publish does.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo publish --workspace --dry-run --locked --all-features
