#!/usr/bin/env bash
# The quickstart (three registries on LocalBackend, waits, handlers, shutdown) under
# valgrind's memcheck: no invalid access, no crash. A program using the library must stay
# debuggable with valgrind (rustix's own vDSO lookup once crashed there).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || {
    echo "installing: valgrind"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind
}
cargo build --locked --release --example quickstart
valgrind --error-exitcode=1 --quiet "${CARGO_TARGET_DIR:-target}/release/examples/quickstart" >/dev/null
echo "memcheck: clean"
