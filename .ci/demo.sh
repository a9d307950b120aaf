#!/usr/bin/env bash
# The payments demo under a short Rinha load (20 s, 150 virtual users, all stages, a
# consistency check every 2 s): on the Redis and the gRPC backend the run must be clean (no
# failed payment, every summary consistent); the --no-lock control must show inconsistency,
# or the check proves nothing. Debug binaries: after .ci/test.sh they only need linking.
set -euo pipefail
cd "$(dirname "$0")/.."
short=(--debug --duration 20 --max-requests 150 --check-every 2)
passed=0
for backend in redis grpc; do
    echo "--- demo: $backend"
    demo/run.sh --backend "$backend" "${short[@]}"
    passed=$((passed + 1))
done
echo "--- demo: redis --no-lock (must report inconsistency)"
demo/run.sh --backend redis --no-lock "${short[@]}"
passed=$((passed + 1))
echo "demo: $passed passed, 0 failed"
