//! The core's and the Redis backend's metrics over a real redis-server, read through a
//! test recorder: the propagation histogram, fed by the notifications that carry the store's
//! time of each write; expiries judged; malformed entries ignored.
#![cfg(feature = "redis")]

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use futures_lite::future::block_on;
use metrics_util::MetricKind;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use reactive_lock::{ReactiveLock, TrackerConfig};
use reactive_lock_backends::conformance::{PROPAGATION_LIMIT, eventually};
use reactive_lock_backends::redis::RedisBackend;
use reactive_lock_backends::testing::RedisServer;

const KEY: &str = "payments";

/// The one recorder of this test binary and everything it recorded. A snapshot drains the
/// recorder, and the tests run in parallel: each snapshot is kept here, so one test's
/// snapshot never takes another's samples (each test reads only its own key's).
struct Recorded {
    snapshotter: Snapshotter,
    seen: Mutex<Vec<Sample>>,
}

/// One metric's value in one snapshot: kind, name, labels, value.
type Sample = (MetricKind, String, Vec<(String, String)>, Value);

/// A recorded value (`DebugValue` is not `Clone`).
#[derive(Clone, Debug)]
enum Value {
    Counter(u64),
    Samples(Vec<f64>),
    Gauge,
}

fn recorded() -> &'static Recorded {
    static RECORDED: OnceLock<Recorded> = OnceLock::new();
    RECORDED.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this test binary");
        Recorded {
            snapshotter,
            seen: Mutex::new(Vec::new()),
        }
    })
}

impl Recorded {
    /// Every value recorded so far of `name` labelled `key`.
    fn values(&self, kind: MetricKind, name: &str, key: &str) -> Vec<Value> {
        let mut seen = self.seen.lock().unwrap();
        for (composite, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let labels = composite
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            seen.push((
                composite.kind(),
                composite.key().name().to_owned(),
                labels,
                match value {
                    DebugValue::Counter(n) => Value::Counter(n),
                    DebugValue::Histogram(samples) => {
                        Value::Samples(samples.into_iter().map(|s| s.into_inner()).collect())
                    }
                    DebugValue::Gauge(_) => Value::Gauge,
                },
            ));
        }
        seen.iter()
            .filter(|(k, n, labels, _)| {
                *k == kind && n == name && labels.iter().any(|(l, v)| l == "key" && v == key)
            })
            .map(|(.., value)| value.clone())
            .collect()
    }

    /// A counter labelled `key`, summed over the snapshots.
    fn counter(&self, name: &str, key: &str) -> u64 {
        self.values(MetricKind::Counter, name, key)
            .into_iter()
            .map(|value| match value {
                Value::Counter(n) => n,
                _ => 0,
            })
            .sum()
    }
}

async fn instance(url: &str, name: &str, key: &str) -> ReactiveLock {
    ReactiveLock::builder()
        .instance_name(name)
        .renewal(Duration::from_millis(100))
        .expiration(Duration::from_millis(400))
        .tracker(key, TrackerConfig::new())
        .build(RedisBackend::connect(url).await.unwrap())
        .await
        .unwrap()
}

#[test]
fn remote_transitions_record_their_propagation() {
    let recorded = recorded();
    let server = RedisServer::start();
    block_on(async {
        let connect = |name: &'static str| {
            let url = server.url();
            async move {
                ReactiveLock::builder()
                    .instance_name(name)
                    .tracker(KEY, TrackerConfig::new())
                    .build(RedisBackend::connect(&url).await.unwrap())
                    .await
                    .unwrap()
            }
        };
        let (a, b) = (connect("a").await, connect("b").await);
        let ctrl = a.controller(KEY).unwrap();
        let seen = b.state(KEY).unwrap();
        for _ in 0..3 {
            ctrl.increment(None).await.unwrap();
            eventually(&seen, PROPAGATION_LIMIT, "b hears a busy", |s| {
                s.is_blocked()
            })
            .await;
            ctrl.decrement(1).await.unwrap();
            eventually(&seen, PROPAGATION_LIMIT, "b hears a idle", |s| {
                !s.is_blocked()
            })
            .await;
        }
        let samples: Vec<f64> = recorded
            .values(
                MetricKind::Histogram,
                "reactive_lock_propagation_seconds",
                KEY,
            )
            .into_iter()
            .flat_map(|value| match value {
                Value::Samples(samples) => samples,
                _ => Vec::new(),
            })
            .collect();
        // b heard six transitions of a's by notification (a may hear b's none: b is idle).
        assert!(samples.len() >= 6, "{samples:?}");
        assert!(
            samples
                .iter()
                .all(|&s| (0.0..PROPAGATION_LIMIT.as_secs_f64()).contains(&s)),
            "{samples:?}"
        );
        a.shutdown().await;
        b.shutdown().await;
    });
}

/// A crashed instance's busy entry (no goodbye, no more renewals) is judged expired once by
/// the instance that saw it, on the store's clock; a later read of the dead entry, still
/// busy in the store, does not count it again.
#[test]
fn an_entry_expiring_at_another_instance_counts_one_expiry() {
    const KEY: &str = "expiring";
    let recorded = recorded();
    let server = RedisServer::start();
    block_on(async {
        let crashing = instance(&server.url(), "crashing", KEY).await;
        let observer = instance(&server.url(), "observer", KEY).await;
        let seen = observer.state(KEY).unwrap();
        crashing
            .controller(KEY)
            .unwrap()
            .increment(None)
            .await
            .unwrap();
        eventually(&seen, PROPAGATION_LIMIT, "the busy entry arrives", |s| {
            s.is_blocked()
        })
        .await;
        assert_eq!(recorded.counter("reactive_lock_expiries_total", KEY), 0);
        // Dropped without shutdown: to the observer it is a crash.
        drop(crashing);
        // Expiration 400 ms after the last renewal; 5 s bounds liveness, not speed.
        eventually(&seen, Duration::from_secs(5), "the entry expires", |s| {
            !s.is_blocked()
        })
        .await;
        seen.refresh().await.unwrap();
        assert!(!seen.is_blocked());
        assert_eq!(recorded.counter("reactive_lock_expiries_total", KEY), 1);
        observer.shutdown().await;
    });
}

/// A malformed value in the key's hash is ignored by a read and counted, labelled with the
/// key; so is a malformed notification on the key's channel.
#[cfg(feature = "metrics")]
#[test]
fn malformed_entries_and_notifications_are_counted_by_key() {
    use reactive_lock_backends::redis::{RedisBackend, channel_name, hash_name};
    use redis::Commands;
    const KEY: &str = "polluted";
    let recorded = recorded();
    let server = RedisServer::start();
    block_on(async {
        let backend = RedisBackend::connect(&server.url()).await.unwrap();
        let observer = ReactiveLock::builder()
            .instance_name("observer")
            .tracker(KEY, TrackerConfig::new())
            .build(backend.clone())
            .await
            .unwrap();
        let state = observer.state(KEY).unwrap();
        state.refresh().await.unwrap();
        let name = "reactive_lock_malformed_entries_total";
        assert_eq!(recorded.counter(name, KEY), 0, "nothing malformed yet");

        let mut raw = server.client();
        let _: () = raw
            .hset(hash_name(KEY), "vandal", "not a .NET value")
            .unwrap();
        state.refresh().await.unwrap();
        assert!(!state.is_blocked(), "the malformed entry is ignored");
        assert!(recorded.counter(name, KEY) >= 1, "the read counted it");
        let _: () = raw.hdel(hash_name(KEY), "vandal").unwrap();

        let before = recorded.counter(name, KEY);
        let _: () = raw
            .publish(channel_name(KEY), "RLv2\nvandal\nnot a sequence")
            .unwrap();
        let deadline = std::time::Instant::now() + PROPAGATION_LIMIT;
        while recorded.counter(name, KEY) == before {
            assert!(
                std::time::Instant::now() < deadline,
                "the malformed notification was counted"
            );
            async_io::Timer::after(Duration::from_millis(10)).await;
        }
        assert_eq!(
            recorded.counter(name, KEY),
            backend.stats().malformed_entries,
            "the counter agrees with the backend's own stats"
        );
        observer.shutdown().await;
    });
}
