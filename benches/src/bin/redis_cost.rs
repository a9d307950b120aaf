//! Where an acknowledged Redis transition spends its time, beside the bare Lua pair it is
//! judged against (`redis/transition_ack_pair` vs `redis/lua_hset_publish_pair`) and the
//! library's own publish script invoked bare on a self-subscribed connection
//! (`redis/publish_script_pair_own_subscription`: the server work a transition needs).
//!
//! `taskset -c 0 cargo run -p reactive-lock-benches --release --bin redis_cost -- --pairs 5000`
//! (`--only <variant>` runs one of them, for a profiler).
//!
//! Alternates the four (the Lua pair also on the self-subscribed connection), `--rounds`
//! times (default 3), so all see the same spells of the host, and prints one JSON line per
//! variant and round with, per busy+idle pair: wall time, CPU time of this process and of the
//! redis-server it starts (each thread's run time from `/proc/<pid>/task/<tid>/schedstat`, in
//! nanoseconds), context switches of this process's threads, the server's `EVALSHA` time per
//! call (`INFO commandstats`, reset before each measurement), and `threads`: this process's
//! CPU µs and context switches per pair by thread name (threads of one name summed; those
//! below 0.05 of both left out). Linux only (`/proc`).

use std::collections::BTreeMap;
use std::time::Instant;

use futures_lite::future::block_on;
use reactive_lock::{ReactiveLock, TrackerConfig};
use reactive_lock_backends::redis::RedisBackend;
use reactive_lock_backends::testing::RedisServer;
use reactive_lock_benches::{
    LUA_HSET_PUBLISH, RAW_CHANNEL, RAW_HASH, arg, load_publish_script, lua_pair, own_subscription,
    publish_script_pair,
};

/// `--name N`, a number, or `default`.
fn number(name: &str, default: usize) -> usize {
    arg(name, &default.to_string()).parse().unwrap_or_else(|_| {
        eprintln!("{name} takes a number");
        std::process::exit(2);
    })
}

/// User + system CPU time of `pid` ("self" or a number) in µs.
/// Per thread of process `pid` (`self` for this one), grouped by thread name: CPU time in
/// nanoseconds (`schedstat`'s run time, exact, unlike `stat`'s 10 ms ticks) and context
/// switches (voluntary + involuntary).
fn threads(pid: &str) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let read = |file: &str| std::fs::read_to_string(path.join(file)).unwrap_or_default();
        let name = read("comm").trim().to_string();
        let run_ns = read("schedstat")
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let switches: u64 = read("status")
            .lines()
            .filter(|l| l.contains("ctxt_switches"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        let entry = out.entry(name).or_insert((0, 0));
        entry.0 += run_ns;
        entry.1 += switches;
    }
    out
}

/// `after - before` per thread name, per pair: `{"name":[cpu µs, switches], ...}`, and the
/// totals.
fn per_pair(
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
    pairs: f64,
) -> (String, f64, f64) {
    let (mut json, mut cpu, mut switches) = (Vec::new(), 0.0, 0.0);
    for (name, &(run, sw)) in after {
        let (run0, sw0) = before.get(name).copied().unwrap_or((0, 0));
        let (c, s) = (
            run.saturating_sub(run0) as f64 / 1e3 / pairs,
            sw.saturating_sub(sw0) as f64 / pairs,
        );
        if c >= 0.05 || s >= 0.05 {
            json.push(format!("\"{name}\":[{c:.2},{s:.2}]"));
        }
        cpu += c;
        switches += s;
    }
    (format!("{{{}}}", json.join(",")), cpu, switches)
}

fn evalsha_us_per_call(admin: &mut redis::Connection) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(admin)
        .expect("INFO commandstats");
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(admin)
        .expect("CONFIG RESETSTAT");
    info.lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .and_then(|l| l.split("usec_per_call=").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn main() {
    let pairs = number("--pairs", 5000).max(1);
    let rounds = number("--rounds", 3);
    // One variant alone (for a profiler), or all four.
    let only = arg("--only", "");
    let server = RedisServer::start();
    let url = server.url();
    let mut admin = server.client();
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut admin)
        .expect("INFO server");
    let server_pid = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .map(|p| p.trim().to_string())
        .expect("process_id in INFO server");

    let client = redis::Client::open(url.as_str()).expect("client");
    let mut raw = block_on(client.get_multiplexed_async_connection()).expect("connect");
    let script = redis::Script::new(LUA_HSET_PUBLISH);
    // The library's publish script invoked bare, as the backend sends it, on a RESP3
    // connection subscribed to the channel it publishes to (so it gets the echo, as an
    // instance's own subscription does).
    let mut own = block_on(own_subscription(&client, RAW_CHANNEL));
    let publish_script = block_on(load_publish_script(&mut own));
    let mut seq = 0;
    let lock = block_on(async {
        ReactiveLock::builder()
            .instance_name("solo")
            .tracker("bench", TrackerConfig::new())
            .build(RedisBackend::connect(&url).await.expect("connect"))
            .await
            .expect("build")
    });
    let ctrl = lock.controller("bench").expect("tracker");

    for round in 0..rounds {
        for variant in [
            "lua_hset_publish_pair",
            "lua_hset_publish_pair_own_subscription",
            "publish_script_pair_own_subscription",
            "transition_ack_pair",
        ]
        .into_iter()
        .filter(|v| only.is_empty() || *v == only)
        {
            evalsha_us_per_call(&mut admin);
            let (own0, server0) = (threads("self"), threads(&server_pid));
            let start = Instant::now();
            for _ in 0..pairs {
                block_on(async {
                    match variant {
                        "lua_hset_publish_pair" => {
                            lua_pair(&script, RAW_HASH, RAW_CHANNEL, &mut raw).await
                        }
                        "lua_hset_publish_pair_own_subscription" => {
                            lua_pair(&script, RAW_HASH, RAW_CHANNEL, &mut own).await
                        }
                        "publish_script_pair_own_subscription" => {
                            publish_script_pair(&publish_script, &mut own, &mut seq).await
                        }
                        _ => {
                            ctrl.increment(Some("x")).await.expect("busy acknowledged");
                            ctrl.decrement(1).await.expect("idle acknowledged");
                        }
                    }
                })
            }
            let wall = start.elapsed().as_secs_f64() * 1e6 / pairs as f64;
            let (own1, server1) = (threads("self"), threads(&server_pid));
            let (ours, cpu, switches) = per_pair(&own0, &own1, pairs as f64);
            let (_, server_cpu, _) = per_pair(&server0, &server1, pairs as f64);
            println!(
                "{{\"round\":{round},\"bench\":\"{variant}\",\"pairs\":{pairs},\"wall_us\":{wall:.1},\"cpu_us\":{cpu:.1},\"server_cpu_us\":{server_cpu:.1},\"context_switches\":{switches:.2},\"evalsha_us_per_call\":{:.2},\"threads\":{ours}}}",
                evalsha_us_per_call(&mut admin),
            );
        }
    }
    block_on(lock.shutdown());
}
