#!/usr/bin/env bash
# The payments demo end to end: its own redis-server (free port, temp dir), two payment
# processors, a hub for the gRPC backend, two payments instances pinned together to one CPU
# (taskset -c 0), then the load. Prints the load's JSON report with each instance's CPU
# seconds and peak RSS added, as one JSON object.
#
#   demo/run.sh [--backend redis|grpc] [--no-lock] [--duration S] [--max-requests N]
#               [--check-every S] [--debug]
#
# Exit codes: 0 when the run is clean (no failed payment, every summary answered and
# consistent); with --no-lock, 0 when the control DID show inconsistency (the check can
# fail). 1 otherwise; 2 when something could not start.
set -euo pipefail
cd "$(dirname "$0")/.."

backend=redis
no_lock=()
duration=60
max_requests=550
check_every=10
profile=release
while [ $# -gt 0 ]; do
    case "$1" in
        --backend) backend="$2"; shift 2 ;;
        --no-lock) no_lock=(--no-lock); shift ;;
        --duration) duration="$2"; shift 2 ;;
        --max-requests) max_requests="$2"; shift 2 ;;
        --check-every) check_every="$2"; shift 2 ;;
        --debug) profile=debug; shift ;;
        *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$backend" in
    redis|grpc) ;;
    *) echo "run.sh: --backend must be redis or grpc (local is one process: run payments alone)" >&2; exit 2 ;;
esac
for tool in redis-server taskset python3; do
    command -v "$tool" >/dev/null || { echo "run.sh: $tool not found on PATH" >&2; exit 2; }
done

if [ "$profile" = release ]; then
    cargo build --release --locked -q -p reactive-lock-demo -p reactive-lock-cli --bins
else
    # The workspace's feature set, as `cargo test --workspace --all-features` builds it: after
    # the tests (CI), this only links the binaries.
    cargo build --locked -q --workspace --all-features --bins
fi
bin="${CARGO_TARGET_DIR:-target}/$profile"

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits for a process's "listening on URL" line and prints the URL.
listening() {
    local out="$1" pid="$2" name="$3"
    for _ in $(seq 1 300); do
        if url=$(grep -m1 -o 'http://[0-9.:]*' "$out" 2>/dev/null); then
            echo "$url"
            return
        fi
        kill -0 "$pid" 2>/dev/null || { echo "run.sh: $name exited: $(tail -n 3 "$work/$name.err")" >&2; exit 2; }
        sleep 0.1
    done
    echo "run.sh: $name did not start listening" >&2
    exit 2
}

# Everything but the instances runs on the other CPUs: the instances' CPU is theirs alone.
others=$(python3 -c 'import os; c = sorted(os.sched_getaffinity(0) - {0}); print(",".join(map(str, c)) or "0")')

redis_port=$(free_port)
taskset -c "$others" redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work" --save '' --appendonly no \
    >"$work/redis.out" 2>"$work/redis.err" &
pids+=($!)
redis_pid=$!
for _ in $(seq 1 100); do
    grep -q "Ready to accept connections" "$work/redis.out" && break
    kill -0 "$redis_pid" 2>/dev/null || { echo "run.sh: redis-server exited: $(tail -n 3 "$work/redis.out")" >&2; exit 2; }
    sleep 0.1
done
redis_url="redis://127.0.0.1:$redis_port/"

start() {
    local name="$1"; shift
    "$@" >"$work/$name.out" 2>"$work/$name.err" &
    pids+=($!)
    eval "${name//-/_}_pid=$!"
}

start processor-default taskset -c "$others" "$bin/processor" --listen 127.0.0.1:0 --fee 0.05
start processor-fallback taskset -c "$others" "$bin/processor" --listen 127.0.0.1:0 --fee 0.15
default_url=$(listening "$work/processor-default.out" "$processor_default_pid" processor-default)
fallback_url=$(listening "$work/processor-fallback.out" "$processor_fallback_pid" processor-fallback)

lock_args=(--backend redis --redis-url "$redis_url")
if [ "$backend" = grpc ]; then
    start hub taskset -c "$others" "$bin/reactive-lock" hub --listen 127.0.0.1:0
    hub_url=$(listening "$work/hub.out" "$hub_pid" hub)
    lock_args=(--backend grpc --grpc-url "$hub_url" --redis-url "$redis_url")
fi

targets=()
for instance in api-1 api-2; do
    # Both instances on CPU 0: together they get one CPU, like the Rinha's resource limit.
    start "$instance" taskset -c 0 "$bin/payments" --listen 127.0.0.1:0 --instance "$instance" \
        "${lock_args[@]}" --processor-default "$default_url" --processor-fallback "$fallback_url" \
        "${no_lock[@]}"
done
api1_url=$(listening "$work/api-1.out" "$api_1_pid" api-1)
api2_url=$(listening "$work/api-2.out" "$api_2_pid" api-2)
targets=(--target "$api1_url" --target "$api2_url")

# Time the hypervisor gave to other guests during the load (the `steal` column of
# /proc/stat): latency figures from a run with much of it say more about the host than the demo.
cpu_ticks() { awk '/^cpu / { print $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }
read -r steal_before total_before < <(cpu_ticks)
set +e
taskset -c "$others" "$bin/load" "${targets[@]}" --processor-default "$default_url" --processor-fallback "$fallback_url" \
    --max-requests "$max_requests" --duration "$duration" --check-every "$check_every" \
    >"$work/report.json"
load_rc=$?
set -e
read -r steal_after total_after < <(cpu_ticks)
if [ "$load_rc" -ge 2 ] || [ ! -s "$work/report.json" ]; then
    echo "run.sh: the load could not run (exit $load_rc)" >&2
    tail -n 5 "$work"/*.err >&2 || true
    exit 2
fi

# CPU time (user + system) and peak RSS of each instance, read before they stop.
usage() {
    local pid="$1" ticks
    ticks=$(getconf CLK_TCK)
    read -r utime stime < <(awk '{ print $14, $15 }' "/proc/$pid/stat")
    hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")
    echo "$(( utime + stime )) $ticks $hwm"
}
read -r api1_ticks clk api1_hwm < <(usage "$api_1_pid")
read -r api2_ticks _ api2_hwm < <(usage "$api_2_pid")

python3 - "$work/report.json" "$backend" "${#no_lock[@]}" "$clk" \
    "$api1_ticks" "$api1_hwm" "$api2_ticks" "$api2_hwm" \
    "$((steal_after - steal_before))" "$((total_after - total_before))" <<'EOF'
import json, sys
path, backend, no_lock, clk = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
report = json.load(open(path))
report["backend"] = backend
report["no_lock"] = no_lock
report["host_steal_pct"] = round(100 * int(sys.argv[9]) / max(int(sys.argv[10]), 1), 1)
report["instances_usage"] = [
    {"instance": name, "cpu_s": round(int(ticks) / clk, 2), "peak_rss_mb": round(int(hwm) / 1024, 1)}
    for name, ticks, hwm in (("api-1", sys.argv[5], sys.argv[6]), ("api-2", sys.argv[7], sys.argv[8]))
]
print(json.dumps(report))
EOF

if [ "${#no_lock[@]}" -eq 1 ]; then
    if python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); sys.exit(0 if r["inconsistency"] > 0 else 1)' "$work/report.json"; then
        echo "run.sh: --no-lock control: the consistency check caught the inconsistency, as it must" >&2
        exit 0
    fi
    echo "run.sh: --no-lock control showed NO inconsistency: the check cannot tell" >&2
    exit 1
fi
if [ "$load_rc" -ne 0 ]; then
    echo "run.sh: the run was not clean (see the report); the end of each process's log:" >&2
    for log in "$work"/*.err; do
        echo "--- $(basename "$log")" >&2
        tail -n 15 "$log" >&2
    done
    exit 1
fi
echo "run.sh: clean run on $backend: no failed payment, every summary consistent" >&2
