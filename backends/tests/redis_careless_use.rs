//! Careless use against a real redis-server: the Redis connections and the drivers live on
//! smol's global executor, shared with the application's `smol::spawn` tasks. A blocking
//! wait there, a handler that blocks on the backend's I/O, or a handler that panics must
//! not stall the I/O of the process or silence an instance. Every wait is bounded.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_lite::future::block_on;
use reactive_lock::{ReactiveLock, Status, TrackerConfig};
use reactive_lock_backends::conformance::{PROPAGATION_LIMIT, eventually};
use reactive_lock_backends::redis::RedisBackend;
use reactive_lock_backends::testing::RedisServer;

const KEY: &str = "careless";
const OTHER: &str = "careless-other";

async fn instance(url: &str, name: &str, config: TrackerConfig) -> ReactiveLock {
    ReactiveLock::builder()
        .instance_name(name)
        .tracker(KEY, config)
        .tracker(OTHER, TrackerConfig::new())
        .build(RedisBackend::connect(url).await.expect("connect"))
        .await
        .expect("build")
}

/// Bounds a future: a deadlock fails the test.
async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    futures_lite::future::or(async { Some(future.await) }, async {
        async_io::Timer::after(PROPAGATION_LIMIT).await;
        None
    })
    .await
    .unwrap_or_else(|| panic!("not within {PROPAGATION_LIMIT:?}: {what}"))
}

#[test]
fn a_blocking_wait_on_smols_executor_is_refused_and_stalls_no_io() {
    let redis = RedisServer::start();
    block_on(async {
        let a = instance(&redis.url(), "a", TrackerConfig::new()).await;
        let b = instance(&redis.url(), "b", TrackerConfig::new()).await;
        let ctrl = a.controller(KEY).unwrap();
        ctrl.increment(None).await.unwrap();
        let state = b.state(KEY).unwrap();
        eventually(&state, PROPAGATION_LIMIT, "b sees a busy", |s| {
            s.is_blocked()
        })
        .await;

        // A task of the application on smol's executor parks its thread on b's key.
        let waiter = {
            let state = state.clone();
            smol::spawn(async move { state.wait_if_blocked_blocking() })
        };
        async_io::Timer::after(Duration::from_millis(100)).await;
        // Another thread's transition still reaches Redis, and b still hears it.
        within("a's decrement", ctrl.decrement(1)).await.unwrap();
        eventually(&state, PROPAGATION_LIMIT, "b sees a idle", |s| {
            !s.is_blocked()
        })
        .await;
        let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            block_on(async { within("the waiter", waiter).await })
        }))
        .expect_err("a blocking wait on smol's executor is refused");
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            message.contains("blocking wait") && message.contains(KEY),
            "the refusal says what and where: {message}"
        );
    });
}

#[test]
fn a_handler_that_blocks_on_the_backend_gets_its_answer() {
    let redis = RedisServer::start();
    block_on(async {
        let a = instance(&redis.url(), "a", TrackerConfig::new()).await;
        let outcome = Arc::new(parking_lot::Mutex::new(None));
        let b = {
            let outcome = outcome.clone();
            let cell = Arc::new(std::sync::OnceLock::<ReactiveLock>::new());
            let c = cell.clone();
            // On a's change, b's handler marks its other key busy and waits for Redis's
            // acknowledgement, blocking: the I/O it waits for must not be the thread it blocks.
            let handler = move || {
                let Some(b) = c.get() else { return };
                let ctrl = b.controller(OTHER).unwrap();
                *outcome.lock() = Some(block_on(ctrl.increment(Some("from-handler"))));
            };
            let b = instance(&redis.url(), "b", TrackerConfig::new().on_blocked(handler)).await;
            cell.set(b.clone()).unwrap();
            b
        };
        a.controller(KEY).unwrap().increment(None).await.unwrap();
        let state = a.state(OTHER).unwrap();
        eventually(
            &state,
            PROPAGATION_LIMIT,
            "a sees b's handler's status",
            |s| s.lock_data().as_deref() == Some("from-handler"),
        )
        .await;
        // a may hear b's status before the handler's own call returns with the ack.
        let result =
            settles_to_some("the handler's increment returns", || outcome.lock().take()).await;
        assert!(result.is_ok(), "the handler's increment: {result:?}");
        b.shutdown().await;
    });
}

#[test]
fn a_panicking_handler_never_stops_the_redis_driver() {
    let redis = RedisServer::start();
    block_on(async {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let handler = move || {
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("a handler bug");
            }
        };
        let a = instance(&redis.url(), "a", TrackerConfig::new()).await;
        let b = instance(&redis.url(), "b", TrackerConfig::new().on_blocked(handler)).await;
        let (ctrl, state) = (a.controller(KEY).unwrap(), b.state(KEY).unwrap());
        for round in 0..2 {
            ctrl.increment(None).await.unwrap();
            eventually(&state, PROPAGATION_LIMIT, "b hears a busy", |s| {
                s.is_blocked()
            })
            .await;
            ctrl.decrement(1).await.unwrap();
            eventually(&state, PROPAGATION_LIMIT, "b hears a idle", |s| {
                !s.is_blocked()
            })
            .await;
            assert_eq!(state.status(), Status::Unblocked, "round {round}");
        }
        // The panic is counted once the default hook has printed it, on the handler thread.
        settles_to_some("the panic is counted", || {
            (b.metrics().handler_panics == 1).then_some(())
        })
        .await;
        // b's own statuses still renew: its driver is alive.
        let renewals = b.metrics().renewals;
        let other = b.controller(OTHER).unwrap();
        other.increment(None).await.unwrap();
        let deadline = std::time::Instant::now() + PROPAGATION_LIMIT;
        while b.metrics().renewals == renewals {
            assert!(std::time::Instant::now() < deadline, "b's driver renews");
            async_io::Timer::after(Duration::from_millis(50)).await;
        }
    });
}

/// A handler that blocks (here until the test lets it go) holds up neither Redis I/O nor
/// any other key: while it blocks, b still hears a's other key flap, and b's own transitions
/// are acknowledged by Redis and heard by a.
#[test]
fn a_blocking_handler_stalls_no_redis_io_and_no_other_key() {
    let redis = RedisServer::start();
    block_on(async {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = parking_lot::Mutex::new(released);
        let blocking = Arc::new(AtomicUsize::new(0));
        let handler = {
            let blocking = blocking.clone();
            move || {
                blocking.store(1, Ordering::SeqCst);
                let _ = released.lock().recv_timeout(Duration::from_secs(60));
                blocking.store(2, Ordering::SeqCst);
            }
        };
        let a = instance(&redis.url(), "a", TrackerConfig::new()).await;
        let b = instance(&redis.url(), "b", TrackerConfig::new().on_blocked(handler)).await;
        a.controller(KEY).unwrap().increment(None).await.unwrap();
        settles_to_some("b's handler blocks", || {
            (blocking.load(Ordering::SeqCst) == 1).then_some(())
        })
        .await;
        let (a_other, b_other) = (a.controller(OTHER).unwrap(), b.controller(OTHER).unwrap());
        let (a_sees, b_sees) = (a.state(OTHER).unwrap(), b.state(OTHER).unwrap());
        for round in 0..3 {
            a_other.increment(None).await.unwrap();
            eventually(
                &b_sees,
                PROPAGATION_LIMIT,
                "b hears a's other key busy",
                |s| s.is_blocked(),
            )
            .await;
            a_other.decrement(1).await.unwrap();
            eventually(
                &b_sees,
                PROPAGATION_LIMIT,
                "b hears a's other key idle",
                |s| !s.is_blocked(),
            )
            .await;
            within("b's acknowledged increment", b_other.increment(None))
                .await
                .unwrap();
            eventually(&a_sees, PROPAGATION_LIMIT, "a hears b busy", |s| {
                s.is_blocked()
            })
            .await;
            within("b's acknowledged decrement", b_other.decrement(1))
                .await
                .unwrap();
            eventually(&a_sees, PROPAGATION_LIMIT, "a hears b idle", |s| {
                !s.is_blocked()
            })
            .await;
            assert_eq!(
                blocking.load(Ordering::SeqCst),
                1,
                "round {round}: the handler was still blocking"
            );
        }
        release.send(()).unwrap();
        settles_to_some("the handler returns", || {
            (blocking.load(Ordering::SeqCst) == 2).then_some(())
        })
        .await;
        a.shutdown().await;
        b.shutdown().await;
    });
}

/// Polls `probe` every 10 ms until it yields something; fails naming `what` after
/// [`PROPAGATION_LIMIT`].
async fn settles_to_some<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + PROPAGATION_LIMIT;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not within {PROPAGATION_LIMIT:?}: {what}"
        );
        async_io::Timer::after(Duration::from_millis(10)).await;
    }
}
