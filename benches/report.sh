#!/usr/bin/env bash
# Prints the tables of BENCHMARKS.md from criterion runs: reads
# <target>/criterion/<group>/<bench>/<run>/estimates.json (median point estimates; <run> is
# `new`, the newest run, or a name given to `--save-baseline`) and the scale bench's
# percentiles.json, and prints markdown.
#
#   benches/report.sh RUN                   one table per group: bench, median, baseline, ratio
#   benches/report.sh RUN1 RUN2 ...         the ratio of each pair in each run, and their median
#   benches/report.sh --headline PINNED [UNPINNED] [--mem FILE]
#                                           the headline table: what a user wants to know,
#                                           each beside its same-run baseline
#   benches/report.sh --mem FILE            the memory table from the `mem` binary's JSON lines
#
# `benches/run.sh` runs the full set (pinned, unpinned, memory) and calls this for every table.
# Several runs of the same benches (repeats saved under their own names) show how far to trust
# one run on a shared VM: a run can land in a slow minute of the host.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - "${CARGO_TARGET_DIR:-target}/criterion" "$@" <<'PY'
import json, pathlib, statistics, sys

root, args = pathlib.Path(sys.argv[1]), sys.argv[2:]
headline, mem_file, runs = False, None, []
while args:
    a = args.pop(0)
    if a == "--headline":
        headline = True
    elif a == "--mem":
        mem_file = args.pop(0)
    else:
        runs.append(a)
if not runs and not mem_file:
    runs = ["new"]

def read(group, bench, run, name):
    f = root / group / bench / run / name
    return json.loads(f.read_text()) if f.exists() else None

def median(group, bench, run=None):
    e = read(group, bench, run or runs[0], "estimates.json")
    return e["median"]["point_estimate"] if e else None

def percentiles(bench, run, name="percentiles.json"):
    return read("scale", bench, run, name)

def fmt(ns):
    if ns is None: return "—"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale: return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"

def rate(per_s):
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if per_s >= scale: return f"{per_s / scale:.3g} {unit} ops/s"
    return f"{per_s:.3g} ops/s"

def mem_lines(path):
    """The `mem` binary's JSON lines, merged per backend."""
    out = {}
    for line in pathlib.Path(path).read_text().splitlines():
        line = line.strip()
        if line.startswith("{"):
            d = json.loads(line)
            out.setdefault(d["backend"], {}).update(d)
    return out

def mb(b): return f"{b / 1e6:.1f} MB"

# Operations per iteration of the `redis/*_64_*` benches (criterion's throughput).
def ops_per_iter(run):
    d = read("redis", "reactive_64_tasks", run, "benchmark.json")
    return (d or {}).get("throughput", {}).get("Elements", 9984)

# (group, bench, baseline, target ratio or None)
PAIRS = [
    ("hot_path", "guard_enter_drop", "atomic_pair", 1.5),
    ("hot_path", "increment_decrement", "atomic_pair", None),
    ("hot_path", "transition_pair_local", "atomic_pair", 10),
    ("hot_path", "transition_pair_local", "locked_transition_floor_pair", None),
    ("hot_path", "transition_pair_local_with_data", "transition_pair_local", None),
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
    ("scale", "propagation_100_instances", "publish_fanout_99_subscribers", None),
]

def print_headline(pinned, unpinned):
    # (what, group, bench, baseline, what the baseline is)
    ROWS = [
        ("Guard enter + drop (no transition)", "hot_path", "guard_enter_drop", "atomic_pair",
         "two atomic read-modify-writes"),
        ("Local transition pair (busy + idle, in-process backend)", "hot_path", "transition_pair_local",
         "locked_transition_floor_pair", "one atomic RMW and two lock rounds per transition"),
        ("Redis: acknowledged transition pair", "redis", "transition_ack_pair", "lua_hset_publish_pair",
         "two `EVALSHA` of TIME + HSET + PUBLISH"),
        ("Redis: propagation pair (seen by another instance)", "redis", "propagation_pair", "raw_pubsub_pair",
         "two bare `PUBLISH` → subscriber"),
        ("Redis: consistent wait (`wait_if_blocked_consistent`)", "redis", "consistent_wait", "hgetall_time_roundtrip",
         "one `HGETALL` + `TIME` round trip"),
        ("gRPC: acknowledged transition pair, backend's own runtime", "grpc", "transition_ack_pair", "raw_unary_pair",
         "two raw tonic unary calls"),
        ("gRPC: acknowledged transition pair, application's tokio runtime", "grpc", "transition_ack_pair_app_runtime",
         "raw_unary_pair", "two raw tonic unary calls"),
        ("gRPC: propagation pair (seen by another instance)", "grpc", "propagation_pair", "raw_stream_pair",
         "two raw tonic stream messages"),
        ("Wake a waiting task and back (`state_pingpong`)", "wake", "state_pingpong", "raw_event_pingpong",
         "the same over bare `event-listener`"),
    ]
    cols = "| figure | reactive-lock | same-run baseline | ratio |"
    sep = "|---|---|---|---|"
    if unpinned:
        cols += " unpinned: reactive-lock / baseline (ratio) |"
        sep += "---|"
    print(cols)
    print(sep)
    def cell(run, g, bench, base):
        o, t = median(g, bench, run), median(g, base, run)
        return o, t, (f"{o / t:.2f}×" if o and t else "—")
    for what, g, bench, base, base_what in ROWS:
        o, t, r = cell(pinned, g, bench, base)
        row = f"| {what} | {fmt(o)} | {fmt(t)}: {base_what} (`{base}`) | {r} |"
        if unpinned:
            uo, ut, ur = cell(unpinned, g, bench, base)
            row += f" {fmt(uo)} / {fmt(ut)} ({ur}) |"
        print(row)
    # 100 instances: percentiles per transition, beside the bare fan-out's per PUBLISH.
    def scale_cell(run):
        p, f = percentiles("propagation_100_instances", run), percentiles("publish_fanout_99_subscribers", run)
        if not p or not f:
            return "—", "—", "—"
        ours = f"p50 {fmt(p['p50_ns'])}, p99 {fmt(p['p99_ns'])}"
        theirs = f"p50 {fmt(f['p50_ns'])}, p99 {fmt(f['p99_ns'])}"
        return ours, theirs, f"{p['p50_ns'] / f['p50_ns']:.2f}× / {p['p99_ns'] / f['p99_ns']:.2f}×"
    o, t, r = scale_cell(pinned)
    row = (f"| 100 instances, one key: a transition seen by all 99 others | {o} | {t}: one bare `PUBLISH` "
           f"received by 99 subscribed connections (`publish_fanout_99_subscribers`) | {r} |")
    if unpinned:
        uo, ut, ur = scale_cell(unpinned)
        row += f" {uo} / {ut} ({ur}) |"
    print(row)
    # Throughput: operations per second, each inside a guard, against a per-operation lock.
    def ops_cell(run):
        o, t = median("redis", "reactive_64_tasks", run), median("redis", "per_op_lock_64_keys", run)
        if not o or not t:
            return "—", "—", "—"
        n = ops_per_iter(run)
        return rate(n / o * 1e9), rate(n / t * 1e9), f"{t / o:.0f}× the ops/s"
    o, t, r = ops_cell(pinned)
    row = (f"| 64 tasks, operations/s, each inside a guard (`reactive_64_tasks`) | {o} | {t}: a Redis lock per "
           f"operation, `SET NX PX` + compare-and-`DEL`, one key per task (`per_op_lock_64_keys`) | {r} |")
    if unpinned:
        uo, ut, ur = ops_cell(unpinned)
        row += f" {uo} / {ut} ({ur}) |"
    print(row)
    if mem_file:
        m = mem_lines(mem_file)
        for backend in ("redis", "local"):
            d = m.get(backend)
            if not d:
                continue
            row = (f"| RSS with {d['trackers']:,} trackers ({backend}), peak while one flaps | "
                   f"{mb(d['rss_bytes'])}, peak {mb(d['peak_rss_bytes'])} | "
                   f"{mb(d['baseline_rss_bytes'])}: the same process before the registry is built | "
                   f"+{d['per_tracker_bytes'] / 1e3:.2f} KB per tracker |")
            if unpinned:
                row += " — |"
            print(row)

def print_mem():
    m = mem_lines(mem_file)
    print("| backend | trackers | RSS before the registry | RSS after convergence | per tracker | peak RSS while one flaps for 5 s | transitions while flapping |")
    print("|---|---|---|---|---|---|---|")
    for backend, d in m.items():
        print(f"| {backend} | {d['trackers']:,} (a tenth busy) | {mb(d['baseline_rss_bytes'])} | {mb(d['rss_bytes'])} | "
              f"{d['per_tracker_bytes'] / 1e3:.2f} KB | {mb(d.get('peak_rss_bytes', 0))} | {d.get('flapping_transitions', 0):,} |")

if headline:
    print_headline(runs[0], runs[1] if len(runs) > 1 else None)
    sys.exit(0)
if not runs:
    print_mem()
    sys.exit(0)

if len(runs) > 1:
    # One row per pair with a baseline: each run's ratio, then their median against the target.
    print(f"| bench | baseline | {' | '.join(runs)} | median | target |\n|---|---|{'---|' * len(runs)}---|---|")
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
        if group is not None:
            print()
        group = g
        print(f"#### {g}\n\n| bench | median | baseline | baseline median | ratio | target |\n|---|---|---|---|---|---|")
    ours, theirs = median(g, bench), (median(g, base) if base else None)
    ratio = f"{ours / theirs:.2f}×" if ours and theirs else "—"
    verdict = "—" if target is None or ratio == "—" else (f"≤ {target}× " + ("✅" if ours / theirs <= target else "❌"))
    if bench == "reactive_64_tasks" and ours and theirs:
        ratio, verdict = f"{theirs / ours:.0f}× the ops/s", ("≥ 20× ✅" if theirs / ours >= 20 else "≥ 20× ❌") if base == "per_op_lock_64_keys" else "—"
    print(f"| `{g}/{bench}` | {fmt(ours)} | {f'`{base}`' if base else '—'} | {fmt(theirs)} | {ratio} | {verdict} |")
# The scale bench's percentiles (per transition; per PUBLISH for the fan-out baseline).
rows = [
    ("`scale/propagation_100_instances`", "a transition, until all 99 other instances see it", percentiles("propagation_100_instances", runs[0])),
    ("`scale/publish_fanout_99_subscribers`", "a bare `PUBLISH`, until all 99 subscribers receive it", percentiles("publish_fanout_99_subscribers", runs[0])),
    ("`scale/publish_fanout_99_subscribers`", "a bare `PUBLISH`, at each subscriber", percentiles("publish_fanout_99_subscribers", runs[0], "percentiles_each.json")),
]
if any(p for _, _, p in rows):
    print("\n| scale | what | p50 | p99 | samples | Redis commands per transition (renewals included) |\n|---|---|---|---|---|---|")
    for bench, what, p in rows:
        if p:
            calls = p.get("redis_commands_per_transition")
            print(f"| {bench} | {what} | {fmt(p['p50_ns'])} | {fmt(p['p99_ns'])} | {p['samples']:,} | {f'{calls:.2f}' if calls else '—'} |")
PY
