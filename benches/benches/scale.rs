//! Scale: 100 registries in one process on one Redis key; one instance flips busy/idle and
//! the time until all 99 others observe it is measured (criterion's estimate, plus p50/p99
//! per transition), with the Redis commands executed per transition from `INFO commandstats`.
//!
//! Its same-run baseline is the floor of the fan-out itself: a bare `PUBLISH` to 99 plain
//! redis-crate connections subscribed to one channel, run on the same executor as the
//! backend's connections, timed until every subscriber has received it (p50/p99 per
//! `PUBLISH`, and per receipt at each subscriber).
//!
//! `taskset -c 0 cargo bench -p reactive-lock-benches --bench scale`
//!
//! Beside criterion's estimates, the percentiles go to
//! `<target>/criterion/scale/<bench>/<run>/percentiles.json` (`<run>` is `new`, or the name
//! given to `--save-baseline`; the per-receipt ones of the baseline in `percentiles_each.json`),
//! where `benches/report.sh` reads them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use futures_lite::StreamExt;
use futures_lite::future::block_on;
use reactive_lock::{ReactiveLock, TrackerConfig, TrackerState};
use reactive_lock_backends::redis::RedisBackend;
use reactive_lock_backends::testing::RedisServer;

const KEY: &str = "scale";
const INSTANCES: usize = 100;
const SUBSCRIBERS: usize = INSTANCES - 1;
const CHANNEL: &str = "scale:fanout";
/// About the length of the backend's notification payload, so the baseline moves as many
/// bytes to each subscriber.
const PAYLOAD: &str = "i0;00000000000000000001;1;638000000000000000;x;padding-to-a-notification";

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

/// The `p`-quantile of sorted `samples`.
fn quantile(samples: &[Duration], p: f64) -> Duration {
    samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)]
}

/// Where criterion writes this run of `bench`: `<target>/criterion/scale/<bench>/<run>`.
/// The target directory is `CARGO_TARGET_DIR` as criterion reads it, or else the one this
/// binary was built in (`<target>/release/deps/scale-*`).
fn run_dir(bench: &str) -> Option<std::path::PathBuf> {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => dir.into(),
        None => std::env::current_exe()
            .ok()?
            .ancestors()
            .nth(3)?
            .to_path_buf(),
    };
    let run = reactive_lock_benches::arg("--save-baseline", "new");
    Some(target.join("criterion").join("scale").join(bench).join(run))
}

/// Prints `samples`' p50/p99 and stores them in `file` beside criterion's estimates of
/// `bench`, with `extra` (`, "name": value` pairs) in both.
fn report(bench: &str, file: &str, what: &str, samples: &mut [Duration], extra: &[(&str, f64)]) {
    if samples.is_empty() {
        return; // filtered out, or criterion's test mode without samples
    }
    samples.sort();
    let (p50, p99) = (quantile(samples, 0.5), quantile(samples, 0.99));
    let printed: String = extra
        .iter()
        .map(|(k, v)| format!("; {k}: {v:.2}"))
        .collect();
    println!(
        "scale/{bench}: {what}: p50 {p50:?}, p99 {p99:?} ({} samples){printed}",
        samples.len()
    );
    // Criterion's test mode (`-- --test`, as CI runs it) measures nothing worth keeping.
    let measured = !std::env::args().any(|a| a == "--test");
    if let Some(dir) = run_dir(bench).filter(|_| measured) {
        let fields: String = extra.iter().map(|(k, v)| format!(",\"{k}\":{v}")).collect();
        let json = format!(
            "{{\"p50_ns\":{},\"p99_ns\":{},\"samples\":{}{fields}}}\n",
            p50.as_nanos(),
            p99.as_nanos(),
            samples.len()
        );
        if std::fs::create_dir_all(&dir).is_ok() {
            let _ = std::fs::write(dir.join(file), json);
        }
    }
}

/// 99 plain connections subscribed to [`CHANNEL`], each on a task of smol's executor (where
/// the Redis backend runs its connections too). Each receipt adds its latency since
/// `published_at` (ns since `origin`) to `receipts` and counts itself in `received`.
struct Subscribers {
    origin: Instant,
    published_at: Arc<AtomicU64>,
    received: Arc<AtomicUsize>,
    receipts: Arc<parking_lot::Mutex<Vec<Duration>>>,
}

impl Subscribers {
    fn start(client: &redis::Client) -> Self {
        let subscribers = Subscribers {
            origin: Instant::now(),
            published_at: Arc::default(),
            received: Arc::default(),
            receipts: Arc::default(),
        };
        for _ in 0..SUBSCRIBERS {
            let mut pubsub = block_on(client.get_async_pubsub()).expect("connect");
            block_on(pubsub.subscribe(CHANNEL)).expect("SUBSCRIBE");
            let mut messages = pubsub.into_on_message();
            let (origin, published_at) = (subscribers.origin, subscribers.published_at.clone());
            let (received, receipts) = (subscribers.received.clone(), subscribers.receipts.clone());
            smol::spawn(async move {
                while messages.next().await.is_some() {
                    let now = origin.elapsed().as_nanos() as u64;
                    let latency = now.saturating_sub(published_at.load(Ordering::Acquire));
                    receipts.lock().push(Duration::from_nanos(latency));
                    received.fetch_add(1, Ordering::Release);
                }
            })
            .detach();
        }
        subscribers
    }

    /// One `PUBLISH` on `raw`, returning when all subscribers have received it.
    fn publish(&self, raw: &mut redis::aio::MultiplexedConnection) -> Duration {
        let expected = self.received.load(Ordering::Acquire) + SUBSCRIBERS;
        let start = Instant::now();
        self.published_at.store(
            start.duration_since(self.origin).as_nanos() as u64,
            Ordering::Release,
        );
        let delivered: usize = block_on(
            redis::cmd("PUBLISH")
                .arg(CHANNEL)
                .arg(PAYLOAD)
                .query_async(raw),
        )
        .expect("PUBLISH");
        assert_eq!(delivered, SUBSCRIBERS, "every subscriber is subscribed");
        while self.received.load(Ordering::Acquire) < expected {
            std::thread::yield_now();
        }
        start.elapsed()
    }
}

fn scale(c: &mut Criterion) {
    let server = RedisServer::start();
    let url = server.url();
    let mut raw = server.client();
    let client = redis::Client::open(url.as_str()).expect("client");
    let mut publisher = block_on(client.get_multiplexed_async_connection()).expect("connect");
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
    let calls = total_calls(&mut raw) - calls_before;
    block_on(async {
        for lock in &locks {
            lock.shutdown().await;
        }
    });

    // The baseline, after the instances are gone so that only the 99 subscribers listen.
    // Two `PUBLISH`es per iteration, as the instances' bench makes two transitions.
    let subscribers = Subscribers::start(&client);
    let mut fanouts = Vec::new();
    group.bench_function("publish_fanout_99_subscribers", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters * 2 {
                let took = subscribers.publish(&mut publisher);
                fanouts.push(took);
                total += took;
            }
            total
        })
    });
    group.finish();

    // Renewals included: the count must stay constant in the number of instances.
    let per_transition = if transitions == 0 {
        vec![]
    } else {
        vec![(
            "redis_commands_per_transition",
            calls as f64 / transitions as f64,
        )]
    };
    report(
        "propagation_100_instances",
        "percentiles.json",
        "one transition seen by all 99 others",
        &mut samples,
        &per_transition,
    );
    report(
        "publish_fanout_99_subscribers",
        "percentiles.json",
        "one PUBLISH received by all 99 subscribers",
        &mut fanouts,
        &[],
    );
    let mut receipts = std::mem::take(&mut *subscribers.receipts.lock());
    report(
        "publish_fanout_99_subscribers",
        "percentiles_each.json",
        "one PUBLISH received at each subscriber",
        &mut receipts,
        &[],
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = scale
}
criterion_main!(benches);
