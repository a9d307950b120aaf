//! The library's metrics through a test recorder (feature `metrics`): transitions by
//! direction, publishes, the status gauges, busy instances, the count in flight, handler
//! panics and the registry's renewals.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_lite::future::block_on;
use metrics_util::MetricKind;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use reactive_lock::{LocalBackend, ReactiveLock, TrackerConfig};

const KEY: &str = "payments";

/// What the recorder saw. A snapshot drains the recorder (counters and gauges read 0 until
/// recorded again), so counters are summed over snapshots and gauges hold the last one's;
/// a gauge moved by increments and decrements is summed too (`gauge_sum`).
#[derive(Default)]
struct Seen {
    counters: HashMap<String, u64>,
    gauges: HashMap<String, f64>,
    gauge_sums: HashMap<String, f64>,
}

fn id(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

impl Seen {
    fn take(&mut self, snapshotter: &Snapshotter) {
        self.gauges.clear();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let labels: Vec<(&str, &str)> =
                key.key().labels().map(|l| (l.key(), l.value())).collect();
            let id = id(key.key().name(), &labels);
            match (key.kind(), value) {
                (MetricKind::Counter, DebugValue::Counter(n)) => {
                    *self.counters.entry(id).or_default() += n
                }
                (MetricKind::Gauge, DebugValue::Gauge(v)) => {
                    *self.gauge_sums.entry(id.clone()).or_default() += v.into_inner();
                    self.gauges.insert(id, v.into_inner());
                }
                _ => {}
            }
        }
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.counters.get(&id(name, labels)).copied().unwrap_or(0)
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.gauges.get(&id(name, labels)).copied().unwrap_or(0.0)
    }

    fn gauge_sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.gauge_sums
            .get(&id(name, labels))
            .copied()
            .unwrap_or(0.0)
    }
}

#[test]
fn metrics_follow_transitions_statuses_and_the_driver() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");
    block_on(async {
        let backend = LocalBackend::new();
        let a = ReactiveLock::builder()
            .instance_name("a")
            .renewal(Duration::from_millis(20))
            .expiration(Duration::from_secs(5))
            .tracker(
                KEY,
                TrackerConfig::new()
                    .busy_threshold(2)
                    .on_blocked(|| panic!("a handler bug")),
            )
            .build(backend.clone())
            .await
            .unwrap();
        let key = [("key", KEY)];
        let ctrl = a.controller(KEY).unwrap();
        ctrl.increment(None).await.unwrap();
        ctrl.increment(None).await.unwrap();
        let mut seen = Seen::default();
        seen.take(&snapshotter);
        let busy = [("key", KEY), ("direction", "busy")];
        assert_eq!(seen.counter("reactive_lock_transitions_total", &busy), 1);
        assert_eq!(seen.gauge("reactive_lock_in_flight", &key), 2.0);
        assert_eq!(seen.gauge("reactive_lock_blocked", &key), 1.0);
        assert_eq!(seen.gauge("reactive_lock_busy_instances", &key), 1.0);
        assert_eq!(seen.counter("reactive_lock_handler_panics_total", &key), 1);

        // A second instance (its own metrics share the key's series) turns busy: a counts two.
        let b = ReactiveLock::builder()
            .instance_name("b")
            .tracker(KEY, TrackerConfig::new().busy_threshold(2))
            .build(backend.clone())
            .await
            .unwrap();
        let b_ctrl = b.controller(KEY).unwrap();
        let _guards = (b_ctrl.enter(None), b_ctrl.enter(None));
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.gauge("reactive_lock_busy_instances", &key) < 2.0 {
            assert!(
                Instant::now() < deadline,
                "two busy instances never counted"
            );
            async_io::Timer::after(Duration::from_millis(5)).await;
            seen.take(&snapshotter);
        }
        // A reader waits on the key b keeps blocked: counted while it waits.
        let waiter = {
            let state = a.state(KEY).unwrap();
            std::thread::spawn(move || state.wait_if_blocked_blocking())
        };
        while seen.gauge_sum("reactive_lock_waiting", &key) < 1.0 {
            assert!(Instant::now() < deadline, "the waiter never counted");
            async_io::Timer::after(Duration::from_millis(5)).await;
            seen.take(&snapshotter);
        }
        ctrl.decrement(2).await.unwrap();
        seen.take(&snapshotter);
        let idle = [("key", KEY), ("direction", "idle")];
        assert_eq!(seen.counter("reactive_lock_transitions_total", &idle), 1);
        assert_eq!(seen.gauge("reactive_lock_in_flight", &key), 0.0);
        assert!(seen.counter("reactive_lock_publishes_total", &key) >= 3);
        assert_eq!(
            seen.counter("reactive_lock_publish_failures_total", &key),
            0
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.counter("reactive_lock_renewals_total", &[]) == 0 {
            assert!(Instant::now() < deadline, "no renewal counted");
            async_io::Timer::after(Duration::from_millis(20)).await;
            seen.take(&snapshotter);
        }
        drop(_guards);
        assert!(waiter.join().unwrap(), "the waiter waited until b was idle");
        seen.take(&snapshotter);
        assert_eq!(seen.gauge_sum("reactive_lock_waiting", &key), 0.0);
        a.shutdown().await;
        b.shutdown().await;
    });
}
