//! Hostile input, from an adversarial run: the hub's ordering and validity cap as long-lived
//! subscribers see them, the bounded queues across restarts, and lock data split on
//! `#REACTIVELOCK#`.
//! Every wait is bounded; nothing asserts on wall-clock durations.
#![cfg(all(feature = "grpc-server", feature = "redis"))]

use reactive_lock_backends::testing::tokio_runtime as rt;
use std::time::Duration;

use futures_lite::future::block_on;
use reactive_lock::{Backend, ReactiveLock, TrackerConfig, TrackerState};
use reactive_lock_backends::conformance::eventually;
use reactive_lock_backends::grpc::GrpcBackend;
use reactive_lock_backends::grpc::proto::LockStatusRequest;
use reactive_lock_backends::grpc::proto::reactive_lock_grpc_client::ReactiveLockGrpcClient;
use reactive_lock_backends::grpc::server::{Hub, HubLimits};
use reactive_lock_backends::testing::{
    HubServer, RedisServer, await_states, publish_burst, valid_for,
};

const KEY: &str = "payments";

fn status(instance: &str, busy: bool, valid_until: prost_types::Timestamp) -> LockStatusRequest {
    LockStatusRequest {
        lock_key: KEY.into(),
        instance_id: instance.into(),
        is_busy: busy,
        lock_data: busy.then(|| "batch".to_string()),
        valid_until: Some(valid_until),
    }
}

/// Sends `statuses` in order with `pause` between them, each acknowledged.
fn send(url: &str, statuses: Vec<(LockStatusRequest, Duration)>) {
    rt().block_on(async {
        let mut client = ReactiveLockGrpcClient::connect(url.to_string())
            .await
            .unwrap();
        for (s, pause_before) in statuses {
            tokio::time::sleep(pause_before).await;
            client.set_status(s).await.unwrap();
        }
    });
}

/// Whether the hub reports `KEY` blocked, read through a fresh client.
fn hub_says_blocked(url: &str) -> bool {
    block_on(async {
        let backend = GrpcBackend::connect([url.to_string()]).await.unwrap();
        backend.snapshot(KEY).await.unwrap().is_blocked()
    })
}

async fn grpc_registry(url: &str, instance: &str) -> ReactiveLock {
    ReactiveLock::builder()
        .instance_name(instance)
        .tracker(KEY, TrackerConfig::new())
        .build(GrpcBackend::connect([url.to_string()]).await.unwrap())
        .await
        .unwrap()
}

async fn settle(state: &TrackerState, what: &str, check: impl Fn(&TrackerState) -> bool) {
    eventually(state, Duration::from_secs(10), what, check).await;
}

// ---------------------------------------------------------------------------------------
// 1. Hub ordering and validity cap vs. a long-lived Rust subscriber
// ---------------------------------------------------------------------------------------

/// A peer's idle status far in the future is capped by the hub; the peer's next status
/// past the reorder window (busy, normal validity) supersedes the capped one on the hub, as
/// documented. A long-lived Rust subscriber must see the key blocked.
#[test]
fn a_busy_status_after_a_capped_idle_one_reaches_a_live_subscriber() {
    let hub = HubServer::start();
    block_on(async {
        let reader = grpc_registry(&hub.url, "reader").await;
        let state = reader.state(KEY).unwrap();
        settle(&state, "connected", |s| !s.is_blocked()).await;
        let year_10000 = prost_types::Timestamp {
            seconds: 253_402_300_800,
            nanos: 0,
        };
        // Idle, year 10000 (hostile, or a .NET peer whose clock ran far ahead).
        send(
            &hub.url,
            vec![(status("peer", false, year_10000), Duration::ZERO)],
        );
        // Let the reader take the capped idle entry; past the reorder window, the busy
        // status below (dated before the idle one's year 10000) is the peer's newest word.
        std::thread::sleep(Duration::from_millis(2500));
        // Now truly busy, renewing, with ordinary validities.
        send(
            &hub.url,
            vec![(
                status("peer", true, valid_for(Duration::from_secs(60))),
                Duration::ZERO,
            )],
        );
        assert!(hub_says_blocked(&hub.url), "the hub took the busy status");
        settle(&state, "the live reader sees the busy peer", |s| {
            s.is_blocked()
        })
        .await;
        reader.shutdown().await;
    });
}

/// Same without the cap: the peer's idle status is valid for 60 s (its clock ahead, or a
/// longer expiration before a restart); after the reorder window its busy status, valid
/// for 10 s, is the newest arrival and the hub takes it. A live subscriber must follow.
#[test]
fn a_newer_earlier_dated_busy_status_reaches_a_live_subscriber() {
    let hub = HubServer::start();
    block_on(async {
        let reader = grpc_registry(&hub.url, "reader").await;
        let state = reader.state(KEY).unwrap();
        settle(&state, "connected", |s| !s.is_blocked()).await;
        send(
            &hub.url,
            vec![
                (
                    status("peer", false, valid_for(Duration::from_secs(60))),
                    Duration::ZERO,
                ),
                // Past the 2 s reorder window: the hub takes the busy status.
                (
                    status("peer", true, valid_for(Duration::from_secs(10))),
                    Duration::from_millis(2500),
                ),
            ],
        );
        assert!(hub_says_blocked(&hub.url), "the hub took the busy status");
        settle(&state, "the live reader sees the busy peer", |s| {
            s.is_blocked()
        })
        .await;
        // And a wait through the hub must not pass a busy peer either.
        let waited = futures_lite::future::or(
            async { Some(state.wait_if_blocked_consistent().await) },
            async {
                async_io::Timer::after(Duration::from_secs(2)).await;
                None
            },
        )
        .await;
        assert!(
            waited.is_none(),
            "wait_if_blocked_consistent passed a busy peer: {waited:?}"
        );
        reader.shutdown().await;
    });
}

/// The realistic form: a Rust instance restarts under the same name with a shorter
/// expiration (config change). Its earlier process's last status was idle, valid for 60 s;
/// the new process (expiration 10 s) turns busy more than the reorder window later. Another
/// long-lived instance must see the key blocked.
#[test]
fn a_restart_with_a_shorter_expiration_is_seen_by_a_live_peer() {
    let hub = HubServer::start();
    block_on(async {
        let reader = grpc_registry(&hub.url, "reader").await;
        let state = reader.state(KEY).unwrap();
        settle(&state, "connected", |s| !s.is_blocked()).await;
        let build = |expiration: Duration| {
            let url = hub.url.clone();
            async move {
                ReactiveLock::builder()
                    .instance_name("api-1")
                    .expiration(expiration)
                    .tracker(KEY, TrackerConfig::new())
                    .build(GrpcBackend::connect([url]).await.unwrap())
                    .await
                    .unwrap()
            }
        };
        let first = build(Duration::from_secs(60)).await;
        let ctrl = first.controller(KEY).unwrap();
        ctrl.increment(None).await.unwrap();
        settle(&state, "reader sees the first process busy", |s| {
            s.is_blocked()
        })
        .await;
        ctrl.decrement(1).await.unwrap();
        settle(&state, "reader sees the first process idle", |s| {
            !s.is_blocked()
        })
        .await;
        first.shutdown().await;
        async_io::Timer::after(Duration::from_millis(2500)).await;
        let second = build(Duration::from_secs(10)).await;
        let ctrl = second.controller(KEY).unwrap();
        ctrl.increment(Some("work")).await.unwrap();
        assert!(
            hub_says_blocked(&hub.url),
            "the hub took the new process's busy status"
        );
        settle(&state, "reader sees the restarted process busy", |s| {
            s.is_blocked()
        })
        .await;
        second.shutdown().await;
        reader.shutdown().await;
    });
}

/// Probe: a year-10000 busy status with no follow-up: a live subscriber unblocks once the
/// hub's cap passes (small max_validity).
#[test]
fn capped_busy_expires_for_a_live_subscriber() {
    let mut limits = HubLimits::default();
    limits.max_validity = Duration::from_millis(1500);
    let hub = HubServer::start_with(Hub::new(limits), None, None);
    block_on(async {
        let reader = grpc_registry(&hub.url, "reader").await;
        let state = reader.state(KEY).unwrap();
        settle(&state, "connected", |s| !s.is_blocked()).await;
        let far = prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: -5,
        };
        send(
            &hub.url,
            vec![(status("hostile", true, far), Duration::ZERO)],
        );
        settle(&state, "reader blocked", |s| s.is_blocked()).await;
        let released = futures_lite::future::or(
            async {
                state.wait_if_blocked().await;
                true
            },
            async {
                async_io::Timer::after(Duration::from_secs(15)).await;
                false
            },
        )
        .await;
        assert!(released, "the capped busy status never released the waiter");
        reader.shutdown().await;
    });
}

// ---------------------------------------------------------------------------------------
// 3. Lock data and the separator
// ---------------------------------------------------------------------------------------

const SEP: &str = reactive_lock::LOCK_DATA_SEPARATOR;

/// Lock data that ends with the separator minus its last `#` passes the check, but joined
/// with the next instance's data (as `lock_data()` and .NET's reader join it) it forms the
/// separator one byte early: a reader that splits the joined data sees an entry `r` nobody
/// set, and `lock_data()` no longer splits into `lock_data_entries()`.
#[test]
fn lock_data_that_would_complete_a_separator_is_refused() {
    let redis = RedisServer::start();
    block_on(async {
        let build = |name: &'static str| {
            let url = redis.url();
            async move {
                ReactiveLock::builder()
                    .instance_name(name)
                    .tracker(KEY, TrackerConfig::new())
                    .build(
                        reactive_lock_backends::redis::RedisBackend::connect(&url)
                            .await
                            .unwrap(),
                    )
                    .await
                    .unwrap()
            }
        };
        let writer = build("writer").await;
        let reader = build("reader").await;
        writer
            .controller(KEY)
            .unwrap()
            .increment(Some("w"))
            .await
            .unwrap();
        // Joined to the writer's data, these would complete a separator.
        let ctrl = reader.controller(KEY).unwrap();
        for refused in ["r#REACTIVELOCK", "REACTIVELOCK#r"] {
            let err = ctrl.increment(Some(refused)).await.unwrap_err();
            assert!(
                matches!(err, reactive_lock::Error::InvalidLockData { .. }),
                "{refused}: {err}"
            );
            assert_eq!(ctrl.count(), 0, "{refused}: the count is unchanged");
        }
        ctrl.increment(Some("r#REACTIVELOC"))
            .await
            .expect("a part of the separator that completes none is accepted");
        let state = reader.state(KEY).unwrap();
        settle(&state, "reader sees the writer", |s| {
            s.lock_data_entries().len() == 2
        })
        .await;
        let entries = state.lock_data_entries();
        let joined = state.lock_data().unwrap();
        let split: Vec<String> = joined
            .split(SEP)
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect();
        assert_eq!(
            split, entries,
            "lock_data() `{joined}` split as .NET splits it gives entries nobody set"
        );
        writer.shutdown().await;
        reader.shutdown().await;
    });
}

/// Probe: lock data the hub refuses (over max_lock_data_len) neither panics nor wedges the
/// registry: the increment reports an error or completes, and the instance still works.
#[test]
fn oversized_lock_data_through_the_hub_does_not_wedge() {
    let hub = HubServer::start();
    block_on(async {
        let writer = grpc_registry(&hub.url, "writer").await;
        let reader = grpc_registry(&hub.url, "reader").await;
        let ctrl = writer.controller(KEY).unwrap();
        let big = "x".repeat(20 * 1024);
        let r = futures_lite::future::or(async { Some(ctrl.increment(Some(&big)).await) }, async {
            async_io::Timer::after(Duration::from_secs(15)).await;
            None
        })
        .await;
        eprintln!("oversized increment: {r:?}");
        // Whatever happened, the writer must be able to go idle and the reader follow.
        if ctrl.count() > 0 {
            let _ = futures_lite::future::or(
                async { Some(ctrl.decrement(ctrl.count()).await) },
                async {
                    async_io::Timer::after(Duration::from_secs(15)).await;
                    None
                },
            )
            .await;
        }
        ctrl.increment(Some("small")).await.unwrap();
        let state = reader.state(KEY).unwrap();
        settle(&state, "reader sees the small data", |s| {
            s.lock_data_entries() == ["small".to_string()]
        })
        .await;
        ctrl.decrement(1).await.unwrap();
        settle(&state, "reader idle", |s| !s.is_blocked()).await;
        writer.shutdown().await;
        reader.shutdown().await;
    });
}

// ---------------------------------------------------------------------------------------
// 2. Bounded queues: bursts, overflow, reconnects
// ---------------------------------------------------------------------------------------

const NKEYS: usize = 24;

fn keys() -> Vec<String> {
    (0..NKEYS).map(|k| format!("burst-{k}")).collect()
}

async fn registry_on<B: Backend + 'static>(backend: B, instance: &str) -> ReactiveLock {
    let mut builder = ReactiveLock::builder().instance_name(instance);
    for key in keys() {
        builder = builder.tracker(&key, TrackerConfig::new());
    }
    builder.build(backend).await.unwrap()
}

/// Flaps every key busy/idle `rounds` times, ending busy on even keys, idle on odd.
async fn flap(writer: &ReactiveLock, rounds: usize) {
    for (k, key) in keys().iter().enumerate() {
        let ctrl = writer.controller(key).unwrap();
        for _ in 0..rounds {
            let _ = ctrl.increment(Some("flap")).await;
            let _ = ctrl.decrement(1).await;
        }
        if k % 2 == 0 {
            let _ = ctrl.increment(Some("final")).await;
        }
    }
}

async fn converge(reader: &ReactiveLock, what: &str) {
    for (k, key) in keys().iter().enumerate() {
        let state = reader.state(key).unwrap();
        let want_busy = k % 2 == 0;
        eventually(
            &state,
            Duration::from_secs(20),
            &format!("{what}: {key}"),
            |s| {
                s.is_blocked() == want_busy
                    && (!want_busy || s.lock_data_entries() == ["final".to_string()])
            },
        )
        .await;
        if !want_busy {
            let released = futures_lite::future::or(
                async {
                    state.wait_if_blocked().await;
                    true
                },
                async {
                    async_io::Timer::after(Duration::from_secs(5)).await;
                    false
                },
            )
            .await;
            assert!(released, "{what}: waiter on idle key {key} not released");
        }
    }
}

/// Probe: a Redis subscription with a one-message buffer through a burst on many keys and a
/// Redis restart in the middle: every key ends in its true final state at the reader.
#[test]
fn redis_one_slot_buffer_burst_across_a_restart() {
    let mut redis = RedisServer::start();
    block_on(async {
        let connect = |url: String| async move {
            reactive_lock_backends::redis::RedisBackend::builder(&url)
                .subscription_buffer(1)
                .health_check_interval(Duration::from_millis(300))
                .connect()
                .await
                .unwrap()
        };
        let reader = registry_on(connect(redis.url()).await, "reader").await;
        let writer = registry_on(connect(redis.url()).await, "writer").await;
        flap(&writer, 20).await;
        redis.restart();
        flap(&writer, 5).await;
        converge(&reader, "after redis restart").await;
        writer.shutdown().await;
        reader.shutdown().await;
    });
}

/// Probe: the Redis backend-level stream with a one-slot buffer, not polled during a burst
/// of flaps on many keys ending busy/idle: every key's final state is delivered.
#[test]
fn redis_unpolled_stream_burst_delivers_final_states() {
    let redis = RedisServer::start();
    block_on(async {
        let sub = reactive_lock_backends::redis::RedisBackend::builder(&redis.url())
            .subscription_buffer(1)
            .connect()
            .await
            .unwrap();
        let ks = keys();
        let mut events = sub.subscribe("reader", &ks).await.unwrap();
        let writer = reactive_lock_backends::redis::RedisBackend::connect(&redis.url())
            .await
            .unwrap();
        let rounds = 30;
        publish_burst(&writer, &ks, rounds).await;
        await_states(&mut events, &ks, |k, (seq, busy, _)| {
            *seq == rounds && *busy == (k % 2 == 0)
        })
        .await;
    });
}

/// Probe: a burst across a hub restart: every key's final state at the reader.
#[test]
fn grpc_burst_across_a_hub_restart() {
    let mut hub = HubServer::start();
    block_on(async {
        let reader = registry_on(
            GrpcBackend::connect([hub.url.clone()]).await.unwrap(),
            "reader",
        )
        .await;
        let writer = registry_on(
            GrpcBackend::connect([hub.url.clone()]).await.unwrap(),
            "writer",
        )
        .await;
        flap(&writer, 10).await;
        hub.restart(Hub::default());
        flap(&writer, 3).await;
        converge(&reader, "after hub restart").await;
        writer.shutdown().await;
        reader.shutdown().await;
    });
}
