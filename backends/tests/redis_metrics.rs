//! The core's metrics over a real redis-server: the propagation histogram, fed by the
//! notifications that carry the store's time of each write.
#![cfg(feature = "redis")]

use futures_lite::future::block_on;
use metrics_util::MetricKind;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use reactive_lock::{ReactiveLock, TrackerConfig};
use reactive_lock_backends::conformance::{PROPAGATION_LIMIT, eventually};
use reactive_lock_backends::redis::RedisBackend;
use reactive_lock_backends::testing::RedisServer;

const KEY: &str = "payments";

#[test]
fn remote_transitions_record_their_propagation() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");
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
        let samples: Vec<f64> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| {
                key.kind() == MetricKind::Histogram
                    && key.key().name() == "reactive_lock_propagation_seconds"
                    && key
                        .key()
                        .labels()
                        .any(|l| l.key() == "key" && l.value() == KEY)
            })
            .flat_map(|(.., value)| match value {
                DebugValue::Histogram(samples) => {
                    samples.into_iter().map(|s| s.into_inner()).collect()
                }
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
