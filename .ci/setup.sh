#!/usr/bin/env bash
# System tools the tests need beyond Rust: redis-server (tests start their own),
# libfaketime (the clock-skew test) and Python's grpcio-tools (the .NET gRPC wire tests).
# Installs only what is missing.
set -euo pipefail
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || missing+=(faketime)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
redis-server --version
# The gRPC .NET-wire tests' second opinion: a Python grpcio peer generated from the .NET proto.
if ! python3 -c 'import grpc_tools' 2>/dev/null; then
    echo "installing: grpcio-tools (PyPI)"
    python3 -m pip install -q --disable-pip-version-check grpcio-tools==1.85.1
fi
python3 -c 'import grpc; print("grpcio", grpc.__version__)'
