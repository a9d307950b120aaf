//! Careless use must never wedge a key, silence an instance or panic inside the library:
//! a handler that panics (inside a guard's `enter`, on the driver), a handler that blocks,
//! a `Driver` never spawned or dropped, extreme durations. Every wait is bounded, so a
//! deadlock fails the test instead of hanging it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::until;
use futures_lite::StreamExt;
use futures_lite::future::block_on;
use reactive_lock::{
    Driver, Error, LocalBackend, ReactiveLock, ReactiveLockBuilder, Status, TrackerConfig,
};

const KEY: &str = "payments";
const OTHER: &str = "orders";

async fn instance(backend: &LocalBackend, name: &str, config: TrackerConfig) -> ReactiveLock {
    ReactiveLock::builder()
        .instance_name(name)
        .tracker(KEY, config)
        .tracker(OTHER, TrackerConfig::new())
        .build(backend.clone())
        .await
        .expect("build")
}

/// An instance whose `Driver` is handed to the test, to spawn late, drop or never poll.
async fn instance_with_driver(backend: &LocalBackend, name: &str) -> (ReactiveLock, Driver) {
    ReactiveLock::builder()
        .instance_name(name)
        .tracker(KEY, TrackerConfig::new())
        .build_with_driver(backend.clone())
        .await
        .expect("build")
}

/// A handler that panics the first `times` calls, counting every call.
fn panicking(times: usize) -> (Arc<AtomicUsize>, impl Fn() + Send + Sync + 'static) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let handler = move || {
        if c.fetch_add(1, Ordering::SeqCst) < times {
            panic!("a handler bug");
        }
    };
    (calls, handler)
}

/// Bounds a future: a deadlock fails the test.
async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    futures_lite::future::or(async { Some(future.await) }, async {
        async_io::Timer::after(common::LIMIT).await;
        None
    })
    .await
    .unwrap_or_else(|| panic!("not within {:?}: {what}", common::LIMIT))
}

#[test]
fn a_panicking_handler_inside_enter_leaks_no_count() {
    block_on(async {
        let backend = LocalBackend::new();
        let (calls, handler) = panicking(1);
        let a = instance(&backend, "a", TrackerConfig::new().on_blocked(handler)).await;
        let b = instance(&backend, "b", TrackerConfig::new()).await;
        let ctrl = a.controller(KEY).unwrap();

        // The caller guards against panics around its unit of work, as a web framework does.
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _guard = ctrl.enter(Some("batch-7"));
        }));
        assert!(unwound.is_ok(), "the handler's panic reached the caller");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the handler ran");
        assert_eq!(ctrl.count(), 0, "the guard gave its count back");
        until(&b.state(KEY).unwrap(), "b sees the key unblocked", |s| {
            !s.is_blocked()
        })
        .await;
        assert!(!a.state(KEY).unwrap().is_blocked());
        assert_eq!(a.state(KEY).unwrap().handler_panics(), 1);
        assert_eq!(a.metrics().handler_panics, 1);
    });
}

#[test]
fn a_panicking_handler_never_stops_the_local_driver() {
    block_on(async {
        let backend = LocalBackend::new();
        let (calls, handler) = panicking(1);
        let a = instance(&backend, "a", TrackerConfig::new()).await;
        // b's handler runs for a's changes, which b's driver applies.
        let b = instance(&backend, "b", TrackerConfig::new().on_blocked(handler)).await;
        let (ctrl, state) = (a.controller(KEY).unwrap(), b.state(KEY).unwrap());

        ctrl.increment(None).await.unwrap();
        until(&state, "b sees a busy", |s| s.is_blocked()).await;
        ctrl.decrement(1).await.unwrap();
        until(&state, "b still hears a after its handler panicked", |s| {
            !s.is_blocked()
        })
        .await;
        ctrl.increment(None).await.unwrap();
        until(&state, "b hears a busy again", |s| s.is_blocked()).await;
        settles(
            || calls.load(Ordering::SeqCst) == 2,
            "the handler ran twice",
        )
        .await;
        assert_eq!(b.metrics().handler_panics, 1);
        assert_eq!(state.status(), Status::Blocked);
    });
}

#[test]
fn a_blocking_handler_for_a_remote_change_stalls_no_other_key() {
    block_on(async {
        let backend = LocalBackend::new();
        let (entered_tx, entered) = async_channel::bounded::<()>(1);
        let (release, release_rx) = async_channel::bounded::<()>(1);
        let handler = move || {
            let _ = entered_tx.try_send(());
            // Blocks, as a handler calling a slow service would, until the test lets it go.
            let _ = block_on(release_rx.recv());
        };
        let a = instance(&backend, "a", TrackerConfig::new()).await;
        let b = instance(&backend, "b", TrackerConfig::new().on_blocked(handler)).await;

        a.controller(KEY).unwrap().increment(None).await.unwrap();
        within("b's handler starts", entered.recv()).await.unwrap();
        // While b's handler blocks, b still hears a on the other key, and renews.
        let other = a.controller(OTHER).unwrap();
        other.increment(None).await.unwrap();
        until(
            &b.state(OTHER).unwrap(),
            "b hears the other key busy",
            |s| s.is_blocked(),
        )
        .await;
        other.decrement(1).await.unwrap();
        until(
            &b.state(OTHER).unwrap(),
            "b hears the other key idle",
            |s| !s.is_blocked(),
        )
        .await;
        release.send(()).await.unwrap();
    });
}

#[test]
fn a_driver_never_spawned_answers_unknown_not_unblocked() {
    block_on(async {
        let backend = LocalBackend::new();
        let a = instance(&backend, "a", TrackerConfig::new()).await;
        // The careless binding: the driver lives, but nothing polls it.
        let (b, _driver) = instance_with_driver(&backend, "b").await;
        a.controller(KEY).unwrap().increment(None).await.unwrap();

        let state = b.state(KEY).unwrap();
        assert_eq!(state.status(), Status::Unknown);
        // The consistent wait reads a busy through, and no driver would ever release it.
        match within("the consistent wait", state.wait_if_blocked_consistent()).await {
            Err(Error::NoDriver { key }) => assert_eq!(key, KEY),
            other => panic!("expected NoDriver, got {other:?}"),
        }
    });
}

#[test]
fn a_driver_dropped_turns_every_key_unknown_and_ends_changes() {
    block_on(async {
        let backend = LocalBackend::new();
        let a = instance(&backend, "a", TrackerConfig::new()).await;
        let (b, driver) = instance_with_driver(&backend, "b").await;
        let state = b.state(KEY).unwrap();
        let mut driver = Box::pin(driver);
        // Polled once: it runs, and the state is known.
        assert!(futures_lite::future::poll_once(&mut driver).await.is_none());
        assert_eq!(state.status(), Status::Unblocked);

        let mut changes = state.changes();
        drop(driver);
        assert_eq!(state.status(), Status::Unknown);
        assert_eq!(
            within("the change to Unknown", changes.next()).await,
            Some(Status::Unknown)
        );
        assert_eq!(within("the end of the stream", changes.next()).await, None);

        a.controller(KEY).unwrap().increment(None).await.unwrap();
        assert!(matches!(
            within("the consistent wait", state.wait_if_blocked_consistent()).await,
            Err(Error::NoDriver { .. })
        ));
    });
}

#[test]
fn a_driver_handed_to_an_executor_is_given_time_to_start() {
    block_on(async {
        let backend = LocalBackend::new();
        let a = instance(&backend, "a", TrackerConfig::new()).await;
        let (b, driver) = instance_with_driver(&backend, "b").await;
        let ctrl = a.controller(KEY).unwrap();
        ctrl.increment(None).await.unwrap();
        let state = b.state(KEY).unwrap();
        // The wait starts before the driver's first poll, and ends when a goes idle.
        let wait = smol::spawn(async move { state.wait_if_blocked_consistent().await });
        async_io::Timer::after(Duration::from_millis(100)).await;
        let task = smol::spawn(driver);
        async_io::Timer::after(Duration::from_millis(100)).await;
        ctrl.decrement(1).await.unwrap();
        assert!(matches!(within("the wait", wait).await, Ok(true)));
        b.shutdown().await;
        within("the driver's end", task).await;
    });
}

#[test]
fn changes_end_after_shutdown() {
    block_on(async {
        let backend = LocalBackend::new();
        let a = instance(&backend, "a", TrackerConfig::new()).await;
        let mut changes = a.state(KEY).unwrap().changes();
        a.shutdown().await;
        let rest: Vec<Status> = within("the end of the stream", async {
            let mut rest = Vec::new();
            while let Some(status) = changes.next().await {
                rest.push(status);
            }
            rest
        })
        .await;
        assert_eq!(rest, [Status::Unknown]);
    });
}

#[test]
fn a_blocking_wait_with_an_endless_timeout_waits() {
    let backend = LocalBackend::new();
    let a = block_on(instance(&backend, "a", TrackerConfig::new()));
    let ctrl = a.controller(KEY).unwrap();
    let guard = ctrl.enter_owned(None);
    let state = a.state(KEY).unwrap();
    let releaser = {
        let state = state.clone();
        std::thread::spawn(move || {
            // Released only once the wait below waits, so it must have waited.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while state.waiting() == 0 {
                assert!(std::time::Instant::now() < deadline, "the wait never began");
                std::thread::yield_now();
            }
            drop(guard);
        })
    };
    assert_eq!(
        state.wait_if_blocked_blocking_timeout(Duration::MAX),
        Ok(true)
    );
    releaser.join().unwrap();
}

fn rejected_field(builder: ReactiveLockBuilder) -> String {
    match block_on(
        builder
            .tracker(KEY, TrackerConfig::new())
            .build(LocalBackend::new()),
    ) {
        Err(Error::InvalidConfig { field, .. }) => field,
        Err(other) => panic!("expected InvalidConfig, got {other}"),
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn extreme_durations_are_rejected_at_build_naming_the_field() {
    let secs = Duration::from_secs;
    let b = ReactiveLock::builder;
    // A renewal that would spin the driver.
    assert_eq!(
        rejected_field(b().renewal(Duration::from_nanos(1))),
        "renewal"
    );
    // Durations that overflow instants and wire timestamps.
    assert_eq!(
        rejected_field(b().renewal(secs(u64::MAX / 2)).expiration(Duration::MAX)),
        "renewal"
    );
    assert_eq!(rejected_field(b().expiration(secs(u64::MAX))), "expiration");
    assert_eq!(rejected_field(b().recovery(Duration::MAX)), "recovery");
    // The bounds themselves are accepted.
    let lock = block_on(
        b().renewal(reactive_lock::MIN_DURATION)
            .expiration(reactive_lock::MAX_DURATION)
            .recovery(reactive_lock::MAX_DURATION)
            .tracker(KEY, TrackerConfig::new())
            .build(LocalBackend::new()),
    )
    .expect("the bounds are valid");
    drop(lock);
}

/// Waits until `check` holds (polled every 10 ms), for conditions outside a state (a
/// handler's count); fails naming `what` after [`common::LIMIT`].
async fn settles(check: impl Fn() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + common::LIMIT;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "not within {:?}: {what}",
            common::LIMIT
        );
        async_io::Timer::after(Duration::from_millis(10)).await;
    }
}

/// Issue 21 part 8: a guard cannot carry an error, so lock data holding the separator
/// panics with a message naming the key, and leaves the count as it was.
#[test]
fn a_guard_with_the_separator_in_its_lock_data_panics_naming_the_key() {
    let ctrl = reactive_lock::TrackerController::new(1).unwrap();
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _guard = ctrl.enter(Some("a#REACTIVELOCK#b"));
    }))
    .expect_err("panics");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("#REACTIVELOCK#"), "{message}");
    assert_eq!(ctrl.count(), 0);
    assert!(!ctrl.state().is_blocked());
}
