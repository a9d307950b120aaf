//! Scale: 100 registries in one process on one Redis key; one instance flips busy/idle and
//! the time until all 99 others observe it is measured (criterion's estimate, plus p50/p99
//! printed), with the Redis commands executed per transition from `INFO commandstats`.
//!
//! `taskset -c 0 cargo bench -p reactive-lock-benches --bench scale`

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use futures_lite::future::block_on;
use reactive_lock::{ReactiveLock, TrackerConfig, TrackerState};
use reactive_lock_backends::redis::RedisBackend;
use reactive_lock_backends::testing::RedisServer;

const KEY: &str = "scale";
const INSTANCES: usize = 100;

/// Total commands the server executed, from `INFO commandstats`.
fn total_calls(raw: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(raw).unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"))
        .filter_map(|l| l.split(['=', ',']).nth(1)?.parse::<u64>().ok())
        .sum()
}

/// Waits (spinning on the atomic flags, yielding) until every state shows `blocked`.
fn until_all(states: &[TrackerState], blocked: bool) {
    while states.iter().any(|s| s.is_blocked() != blocked) {
        std::thread::yield_now();
    }
}

fn scale(c: &mut Criterion) {
    let server = RedisServer::start();
    let url = server.url();
    let mut raw = server.client();
    let locks: Vec<ReactiveLock> = block_on(async {
        let mut out = Vec::new();
        for i in 0..INSTANCES {
            let backend = RedisBackend::connect(&url).await.expect("connect");
            out.push(
                ReactiveLock::builder()
                    .instance_name(format!("i{i}"))
                    .tracker(KEY, TrackerConfig::new())
                    .build(backend)
                    .await
                    .expect("build"),
            );
        }
        out
    });
    let ctrl = locks[0].controller(KEY).unwrap();
    let others: Vec<TrackerState> = locks[1..].iter().map(|l| l.state(KEY).unwrap()).collect();

    let mut samples = Vec::new();
    let calls_before = total_calls(&mut raw);
    let mut transitions = 0u64;
    let mut group = c.benchmark_group("scale");
    group.sample_size(20);
    group.bench_function("propagation_100_instances", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                block_on(ctrl.increment(Some("x"))).unwrap();
                until_all(&others, true);
                let busy = start.elapsed();
                let start = Instant::now();
                block_on(ctrl.decrement(1)).unwrap();
                until_all(&others, false);
                let idle = start.elapsed();
                samples.push(busy);
                samples.push(idle);
                transitions += 2;
                total += busy + idle;
            }
            total
        })
    });
    group.finish();
    let calls = total_calls(&mut raw) - calls_before;
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "scale/propagation_100_instances: one transition seen by all 99 others: p50 {:?}, p99 {:?} ({} transitions); \
         Redis commands per transition: {:.2} (renewals included)",
        pct(0.5),
        pct(0.99),
        transitions,
        calls as f64 / transitions as f64
    );
    block_on(async {
        for lock in &locks {
            lock.shutdown().await;
        }
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = scale
}
criterion_main!(benches);
