//! Where an acknowledged Redis transition spends its time, beside the bare Lua pair it is
//! judged against (`redis/transition_ack_pair` vs `redis/lua_hset_publish_pair`) and the
//! library's own publish script invoked bare on a self-subscribed connection
//! (`redis/publish_script_pair_own_subscription`: the server work a transition needs).
//!
//! `taskset -c 0 cargo run -p reactive-lock-benches --release --bin redis_cost -- --pairs 5000`
//!
//! Alternates the three, `--rounds` times (default 3), so both see the same spells of the host,
//! and prints one JSON line per variant and round with, per busy+idle pair: wall time, CPU
//! time of this process and of the redis-server it starts (user + system, from
//! `/proc/<pid>/stat`), context switches of this process's threads, and the server's
//! `EVALSHA` time per call (`INFO commandstats`, reset before each measurement). Linux only
//! (`/proc`); CPU times have the kernel's 10 ms tick as resolution, so give it thousands of
//! pairs.

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
fn cpu_us(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat(5), 11 and 12 after the name; clock
    // ticks are 100 per second on Linux.
    (ticks(11) + ticks(12)) * 10_000.0
}

/// Voluntary + involuntary context switches of all this process's threads.
fn context_switches() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// The server's `EVALSHA` µs per call since the last reset, then resets the statistics.
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
            "publish_script_pair_own_subscription",
            "transition_ack_pair",
        ] {
            evalsha_us_per_call(&mut admin);
            let (own0, server0, switches0) =
                (cpu_us("self"), cpu_us(&server_pid), context_switches());
            let start = Instant::now();
            for _ in 0..pairs {
                block_on(async {
                    if variant == "lua_hset_publish_pair" {
                        lua_pair(&script, RAW_HASH, RAW_CHANNEL, &mut raw).await;
                    } else if variant == "publish_script_pair_own_subscription" {
                        publish_script_pair(&publish_script, &mut own, &mut seq).await;
                    } else {
                        ctrl.increment(Some("x")).await.expect("busy acknowledged");
                        ctrl.decrement(1).await.expect("idle acknowledged");
                    }
                })
            }
            let wall = start.elapsed().as_secs_f64() * 1e6;
            let per = |v: f64| v / pairs as f64;
            println!(
                "{{\"round\":{round},\"bench\":\"{variant}\",\"pairs\":{pairs},\"wall_us\":{:.1},\"cpu_us\":{:.1},\"server_cpu_us\":{:.1},\"context_switches\":{:.2},\"evalsha_us_per_call\":{:.2}}}",
                per(wall),
                per(cpu_us("self") - own0),
                per(cpu_us(&server_pid) - server0),
                per((context_switches() - switches0) as f64),
                evalsha_us_per_call(&mut admin),
            );
        }
    }
    block_on(lock.shutdown());
}
