#!/usr/bin/env bash
# System tools the tests need beyond Rust, on Debian (or Ubuntu), installed only when
# missing; needs root. After it, `cargo test --workspace --all-features` passes on a fresh
# machine:
# * redis-server and redis-cli: the tests start their own servers and clusters;
# * libfaketime: the clock-skew test preloads it into `reactive-lock inspect`;
# * kill (procps): the fault tests stop, pause and resume servers;
# * python3 with grpcio-tools: the .NET gRPC wire tests' second opinion, a Python grpcio peer
#   generated from the .NET proto.
set -euo pipefail
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
type -P kill >/dev/null || missing+=(procps)
# The library sits in the architecture's multiarch directory (/usr/lib/<triplet>/faketime).
compgen -G '/usr/lib/*/faketime/libfaketime.so.1' >/dev/null \
    || [ -e /usr/lib/faketime/libfaketime.so.1 ] || missing+=(libfaketime)
command -v python3 >/dev/null || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
redis-server --version
# From PyPI: Debian's python3-grpc-tools is years older than the grpcio it would pair with.
# The tests run `python3` from PATH, so it goes into that interpreter; on Debian's own
# (marked externally managed) only with PIP_BREAK_SYSTEM_PACKAGES, which older pips ignore.
if ! python3 -c 'import grpc_tools' 2>/dev/null; then
    echo "installing: grpcio-tools (PyPI)"
    PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --disable-pip-version-check \
        grpcio-tools==1.85.1
fi
python3 -c 'import grpc; print("grpcio", grpc.__version__)'
