#!/usr/bin/env bash
# Regenerates the ratio tables of BENCHMARKS.md from a criterion run: reads
# target/criterion/<group>/<bench>/<run>/estimates.json (median point estimates; <run> is
# `new`, the newest run, or a name given to `--save-baseline`) and prints one markdown table
# per group: bench, median, baseline, ratio, target.
#   taskset -c 0 cargo bench -p reactive-lock-benches && benches/report.sh
#   cargo bench -p reactive-lock-benches --bench hot_path --bench wake --bench redis --bench grpc \
#     --bench scale -- --save-baseline unpinned && benches/report.sh unpinned
# With several run names (repeats saved with `--save-baseline <name>`), it prints one table
# of the ratio in each run instead, with their median: on a shared VM a run can land in a
# slow minute of the host, and the spread of the ratios shows how far to trust one run.
#   benches/report.sh new pinned2 pinned3
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - "${CARGO_TARGET_DIR:-target}/criterion" "${@:-new}" <<'PY'
import json, pathlib, statistics, sys

root, runs = pathlib.Path(sys.argv[1]), sys.argv[2:]
run = runs[0]
def median(group, bench, run=None):
    run = run or runs[0]
    f = root / group / bench / run / "estimates.json"
    return json.loads(f.read_text())["median"]["point_estimate"] if f.exists() else None

def fmt(ns):
    if ns is None: return "—"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale: return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"

# (group, bench, baseline, target ratio or None)
PAIRS = [
    ("hot_path", "guard_enter_drop", "atomic_pair", 1.5),
    ("hot_path", "increment_decrement", "atomic_pair", None),
    ("hot_path", "transition_pair_local", "atomic_pair", 10),
    ("hot_path", "transition_pair_local", "locked_transition_floor_pair", None),
    ("hot_path", "locked_transition_floor_pair", "atomic_pair", None),
    ("hot_path", "local_store_bound_publish_pair", "atomic_pair", None),
    ("hot_path", "local_store_publish_pair", "atomic_pair", None),
    ("hot_path", "state_change_pair", "atomic_pair", None),
    ("hot_path", "contended_8_threads", "contended_atomic_8_threads", None),
    ("wake", "state_pingpong", "raw_event_pingpong", 1.3),
    ("wake", "release_1000_waiters", None, None),
    ("redis", "transition_ack_pair", "lua_hset_publish_pair", 1.2),
    ("redis", "transition_ack_pair", "raw_hset_publish_pair", None),
    ("redis", "transition_ack_pair", "lua_hset_publish_pair_own_subscription", None),
    ("redis", "transition_ack_pair", "lua_hset_publish_pair_1_subscriber", None),
    ("redis", "transition_ack_pair", "publish_script_pair_own_subscription", None),
    ("redis", "publish_script_pair_own_subscription", "lua_hset_publish_pair", None),
    ("redis", "transition_ack_pair_2_instances", "lua_hset_publish_pair_2_subscribers", None),
    ("redis", "consistent_wait", "hgetall_time_roundtrip", 1.2),
    ("redis", "propagation_pair", "raw_pubsub_pair", 1.5),
    ("redis", "reactive_64_tasks", "per_op_lock_64_keys", None),
    ("redis", "reactive_64_tasks", "per_op_lock_64_tasks", None),
    ("grpc", "transition_ack_pair", "raw_unary_pair", 1.2),
    ("grpc", "transition_ack_pair_app_runtime", "raw_unary_pair", 1.2),
    ("grpc", "transition_ack_pair_2_instances", "raw_unary_pair_2_subscribers", None),
    ("grpc", "transition_ack_pair_2_instances_app_runtime", "raw_unary_pair_2_subscribers", None),
    ("grpc", "propagation_pair", "raw_stream_pair", 1.5),
    ("grpc", "propagation_pair_app_runtime", "raw_stream_pair", 1.5),
    ("scale", "propagation_100_instances", None, None),
]
if len(runs) > 1:
    # One row per pair with a baseline: each run's ratio, then their median against the target.
    print(f"\n| bench | baseline | {' | '.join(runs)} | median | target |\n|---|---|{'---|' * len(runs)}---|---|")
    for g, bench, base, target in PAIRS:
        if not base:
            continue
        ratios = [
            (o / t) if (o := median(g, bench, r)) and (t := median(g, base, r)) else None
            for r in runs
        ]
        seen = [x for x in ratios if x is not None]
        if not seen:
            continue
        mid = statistics.median(seen)
        per_op = bench == "reactive_64_tasks"
        cell = (lambda x: f"{1 / x:.0f}× the ops/s") if per_op else (lambda x: f"{x:.2f}×")
        if target is None:
            verdict = "—"
        elif per_op:
            verdict = "≥ 20× " + ("✅" if 1 / mid >= 20 else "❌")
        else:
            verdict = f"≤ {target}× " + ("✅" if mid <= target else "❌")
        cells = " | ".join(cell(x) if x is not None else "—" for x in ratios)
        print(f"| `{g}/{bench}` | `{base}` | {cells} | {cell(mid)} | {verdict} |")
    sys.exit(0)
group = None
for g, bench, base, target in PAIRS:
    if g != group:
        group = g
        print(f"\n### {g}\n\n| bench | median | baseline | baseline median | ratio | target |\n|---|---|---|---|---|---|")
    ours, theirs = median(g, bench), (median(g, base) if base else None)
    ratio = f"{ours / theirs:.2f}×" if ours and theirs else "—"
    verdict = "—" if target is None or ratio == "—" else (f"≤ {target}× " + ("✅" if ours / theirs <= target else "❌"))
    if bench == "reactive_64_tasks" and ours and theirs:
        ratio, verdict = f"{theirs / ours:.0f}× the ops/s", ("≥ 20× ✅" if theirs / ours >= 20 else "≥ 20× ❌") if base == "per_op_lock_64_keys" else "—"
    print(f"| `{g}/{bench}` | {fmt(ours)} | {f'`{base}`' if base else '—'} | {fmt(theirs)} | {ratio} | {verdict} |")
PY
