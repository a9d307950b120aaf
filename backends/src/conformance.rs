//! The backend conformance suite: one set of async scenarios, parameterised by a backend
//! factory, that every [`Backend`] must pass (object_store style).
//!
//! Each scenario builds three or more registries (instances) with distinct instance names
//! on backend handles from one [`BackendFactory`] — all sharing one store — and checks what
//! the instances see of each other. Scenarios panic with a message naming the expectation
//! on failure, so a `#[test]` wrapping one reads like the scenario.
//!
//! ```
//! use reactive_lock::LocalBackend;
//! use reactive_lock_backends::conformance;
//!
//! futures_lite::future::block_on(conformance::busy_blocks_others(&LocalBackend::new()));
//! ```
//!
//! [`run_all`] runs every scenario in order.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use reactive_lock::{
    Backend, LOCK_DATA_SEPARATOR, LocalBackend, ReactiveLock, ReactiveLockBuilder, TrackerConfig,
    TrackerState,
};

/// The key every scenario uses.
pub const KEY: &str = "conformance";

/// How long a scenario waits for a change to propagate before failing. Generous: it bounds
/// a liveness check, it does not measure speed.
pub const PROPAGATION_LIMIT: Duration = Duration::from_secs(10);

/// Makes backend handles that share one store: one call per instance.
pub trait BackendFactory: Send + Sync {
    /// The backend type.
    type Backend: Backend;
    /// A new handle (connection) to the shared store, for one more instance.
    fn connect(&self) -> impl Future<Output = Self::Backend> + Send;
}

impl BackendFactory for LocalBackend {
    type Backend = LocalBackend;
    async fn connect(&self) -> LocalBackend {
        self.clone()
    }
}

/// A builder with the suite's defaults: `name`, one tracker on [`KEY`] with `threshold`.
pub fn builder(name: &str, threshold: usize) -> ReactiveLockBuilder {
    ReactiveLock::builder()
        .instance_name(name)
        .tracker(KEY, TrackerConfig::new().busy_threshold(threshold))
}

/// Builds `n` instances named `i0`, `i1`, ... with busy threshold `threshold`.
pub async fn instances<F: BackendFactory>(
    factory: &F,
    n: usize,
    threshold: usize,
) -> Vec<ReactiveLock> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let lock = builder(&format!("i{i}"), threshold)
            .build(factory.connect().await)
            .await
            .unwrap_or_else(|e| panic!("building instance i{i} failed: {e}"));
        out.push(lock);
    }
    out
}

/// Waits until `check(state)` holds, woken by the state's changes (and re-checked every
/// 50 ms for changes that only the clock makes, such as expiry judged at read time).
/// Panics with `what` after `limit`.
pub async fn eventually(
    state: &TrackerState,
    limit: Duration,
    what: &str,
    check: impl Fn(&TrackerState) -> bool,
) {
    let deadline = Instant::now() + limit;
    let mut changes = state.changes();
    while !check(state) {
        if Instant::now() >= deadline {
            panic!(
                "not within {limit:?}: {what} (status {:?}, data {:?})",
                state.status(),
                state.lock_data()
            );
        }
        // A stream that ended (the registry's driver is gone) leaves the clock to wake this.
        futures_lite::future::or(
            async {
                if changes.next().await.is_none() {
                    futures_lite::future::pending::<()>().await;
                }
            },
            async {
                async_io::Timer::after(Duration::from_millis(50)).await;
            },
        )
        .await;
    }
}

/// Polls `probe` every 10 ms until it returns `expected`, for at most `limit`; panics naming
/// `what` and the last value if it never does. For conditions outside a state (a count on a
/// server, a stored value).
pub async fn settles_to<T: PartialEq + std::fmt::Debug>(
    limit: Duration,
    what: &str,
    expected: T,
    mut probe: impl FnMut() -> T,
) {
    let deadline = Instant::now() + limit;
    loop {
        let value = probe();
        if value == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not within {limit:?}: {what} (expected {expected:?}, last {value:?})"
        );
        async_io::Timer::after(Duration::from_millis(10)).await;
    }
}

/// [`eventually`] for `key`'s state in each of `locks`, one after the other (the limit
/// applies to each).
pub async fn eventually_all<'a>(
    locks: impl IntoIterator<Item = &'a ReactiveLock>,
    key: &str,
    limit: Duration,
    what: &str,
    check: impl Fn(&TrackerState) -> bool,
) {
    for lock in locks {
        let state = lock
            .state(key)
            .unwrap_or_else(|e| panic!("{what}: no tracker for `{key}`: {e}"));
        eventually(&state, limit, what, &check).await;
    }
}

fn state(lock: &ReactiveLock) -> TrackerState {
    lock.state(KEY).expect("the suite's tracker exists")
}

/// Waits until every instance sees the key unblocked.
async fn all_unblocked(locks: &[ReactiveLock], what: &str) {
    eventually_all(locks, KEY, PROPAGATION_LIMIT, what, |s| !s.is_blocked()).await;
}

async fn shutdown_all(locks: &[ReactiveLock]) {
    for lock in locks {
        lock.shutdown().await;
    }
}

/// A busy → B and C blocked, with A's lock data; the busy instance sees itself blocked
/// before any round trip.
pub async fn busy_blocks_others<F: BackendFactory>(factory: &F) {
    let locks = instances(factory, 3, 1).await;
    let a = locks[0].controller(KEY).unwrap();
    let ack = a.increment(Some("batch-7"));
    assert!(
        state(&locks[0]).is_blocked(),
        "own busy status applies locally at once"
    );
    ack.await
        .expect("the backend acknowledges the busy transition");
    eventually_all(
        &locks[1..],
        KEY,
        PROPAGATION_LIMIT,
        "others see A busy with its data",
        |s| s.is_blocked() && s.lock_data().as_deref() == Some("batch-7"),
    )
    .await;
    a.decrement(1).await.unwrap();
    all_unblocked(&locks, "all unblocked after A idles").await;
    shutdown_all(&locks).await;
}

/// A and B busy → C sees both lock data entries, joined with the separator.
pub async fn lock_data_of_all_busy<F: BackendFactory>(factory: &F) {
    let locks = instances(factory, 3, 1).await;
    locks[0]
        .controller(KEY)
        .unwrap()
        .increment(Some("a-data"))
        .await
        .unwrap();
    locks[1]
        .controller(KEY)
        .unwrap()
        .increment(Some("b-data"))
        .await
        .unwrap();
    let c = state(&locks[2]);
    eventually(&c, PROPAGATION_LIMIT, "C sees the data of A and B", |s| {
        s.lock_data_entries().len() == 2
    })
    .await;
    let mut entries = c.lock_data_entries();
    entries.sort();
    assert_eq!(entries, ["a-data", "b-data"]);
    let joined = c.lock_data().expect("joined data");
    assert!(
        joined == format!("a-data{LOCK_DATA_SEPARATOR}b-data")
            || joined == format!("b-data{LOCK_DATA_SEPARATOR}a-data"),
        "joined with the separator: {joined}"
    );
    // A's own view: its own data first.
    eventually(&state(&locks[0]), PROPAGATION_LIMIT, "A sees B too", |s| {
        s.lock_data_entries().len() == 2
    })
    .await;
    assert_eq!(state(&locks[0]).lock_data_entries()[0], "a-data");
    shutdown_all(&locks).await;
}

/// All idle → unblocked everywhere and every waiter released.
pub async fn all_idle_releases_waiters<F: BackendFactory>(factory: &F) {
    let locks = instances(factory, 3, 1).await;
    let a = locks[0].controller(KEY).unwrap();
    let b = locks[1].controller(KEY).unwrap();
    a.increment(None).await.unwrap();
    b.increment(None).await.unwrap();
    let c = state(&locks[2]);
    eventually(&c, PROPAGATION_LIMIT, "C blocked by A and B", |s| {
        s.lock_data_entries().is_empty() && s.is_blocked()
    })
    .await;
    let released = Arc::new(AtomicUsize::new(0));
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let c = c.clone();
            let released = released.clone();
            std::thread::spawn(move || {
                let waited = c.wait_if_blocked_blocking();
                released.fetch_add(1, Ordering::SeqCst);
                waited
            })
        })
        .collect();
    a.decrement(1).await.unwrap();
    // Still blocked by B: nobody may be released yet — check after C has seen A's idle
    // status through a read-through.
    c.refresh().await.expect("read-through");
    assert!(c.is_blocked(), "B is still busy");
    assert_eq!(
        released.load(Ordering::SeqCst),
        0,
        "a waiter was released while B is busy"
    );
    b.decrement(1).await.unwrap();
    for w in waiters {
        w.join().expect("waiter thread");
    }
    assert_eq!(released.load(Ordering::SeqCst), 10, "every waiter released");
    all_unblocked(&locks, "unblocked everywhere").await;
    shutdown_all(&locks).await;
}

/// Threshold 3 with hysteresis: 2 → not busy, 3 → busy, 2 → still busy, 0 → idle.
pub async fn threshold_hysteresis<F: BackendFactory>(factory: &F) {
    let locks = instances(factory, 3, 3).await;
    let a = locks[0].controller(KEY).unwrap();
    let b = state(&locks[1]);
    a.increment(None).await.unwrap();
    a.increment(None).await.unwrap();
    assert!(
        !b.wait_if_blocked_consistent().await.unwrap(),
        "2 < 3: not busy"
    );
    a.increment(Some("third")).await.unwrap();
    eventually(&b, PROPAGATION_LIMIT, "3: busy", |s| s.is_blocked()).await;
    a.decrement(1).await.unwrap();
    b.refresh().await.expect("read-through");
    assert!(
        a.is_busy() && b.is_blocked(),
        "2 after busy: still busy (hysteresis)"
    );
    a.decrement(2).await.unwrap();
    eventually(&b, PROPAGATION_LIMIT, "0: idle", |s| !s.is_blocked()).await;
    shutdown_all(&locks).await;
}

/// An instance that stops renewing (dropped without shutdown, as a crash) stops blocking
/// the others within its expiration, with no other activity.
pub async fn crashed_instance_expires<F: BackendFactory>(factory: &F) {
    let expiration = Duration::from_millis(1500);
    let crashing = builder("crashing", 1)
        .renewal(Duration::from_millis(500))
        .expiration(expiration)
        .build(factory.connect().await)
        .await
        .unwrap();
    let others = instances(factory, 2, 1).await;
    crashing
        .controller(KEY)
        .unwrap()
        .increment(Some("doomed"))
        .await
        .unwrap();
    eventually_all(
        &others,
        KEY,
        PROPAGATION_LIMIT,
        "others see the busy instance",
        |s| s.is_blocked(),
    )
    .await;
    // Renewal keeps it alive past its expiration while it runs.
    async_io::Timer::after(expiration + Duration::from_millis(500)).await;
    for lock in &others {
        assert!(
            state(lock).is_blocked(),
            "renewed status must not expire while the instance lives"
        );
    }
    drop(crashing);
    eventually_all(
        &others,
        KEY,
        expiration + Duration::from_secs(3),
        "the crashed instance's entry expires",
        |s| !s.is_blocked(),
    )
    .await;
    shutdown_all(&others).await;
}

/// A clean shutdown unblocks the others at once (long before expiry).
pub async fn shutdown_unblocks_at_once<F: BackendFactory>(factory: &F) {
    let leaving = builder("leaving", 1)
        .expiration(Duration::from_secs(60))
        .renewal(Duration::from_secs(20))
        .build(factory.connect().await)
        .await
        .unwrap();
    let others = instances(factory, 2, 1).await;
    let _busy_forever = leaving
        .controller(KEY)
        .unwrap()
        .enter_owned(Some("leaving"));
    eventually_all(
        &others,
        KEY,
        PROPAGATION_LIMIT,
        "others see the busy instance",
        |s| s.is_blocked(),
    )
    .await;
    leaving.shutdown().await;
    // 10 s against a 60 s expiration: only the goodbye can unblock this early.
    all_unblocked(&others, "unblocked by the goodbye").await;
    shutdown_all(&others).await;
}

/// 10,000 random increments/decrements from many threads across 3 instances, with waiters
/// throughout: the final state everywhere equals the truth and no waiter is left hanging.
pub async fn random_operations_converge<F: BackendFactory>(factory: &F) {
    let locks = instances(factory, 3, 1).await;
    let truth: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let waiters_done = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for t in 0..9usize {
        let lock_index = t % 3;
        let ctrl = locks[lock_index].controller(KEY).unwrap();
        let truth = truth[lock_index].clone();
        let watcher = state(&locks[(t + 1) % 3]);
        let waiters_done = waiters_done.clone();
        threads.push(std::thread::spawn(move || {
            let mut rng = fastrand::Rng::with_seed(t as u64);
            let mut held = 0usize;
            futures_lite::future::block_on(async {
                for op in 0..1112usize {
                    if held > 0 && rng.bool() {
                        let n = rng.usize(1..=held);
                        held -= n;
                        truth.fetch_sub(n, Ordering::SeqCst);
                        ctrl.decrement(n).await.expect("decrement acknowledged");
                    } else {
                        held += 1;
                        truth.fetch_add(1, Ordering::SeqCst);
                        ctrl.increment(Some("r"))
                            .await
                            .expect("increment acknowledged");
                    }
                    if op % 100 == 0 {
                        // A waiter that must be released by the final unblock.
                        let watcher = watcher.clone();
                        let waiters_done = waiters_done.clone();
                        std::thread::spawn(move || {
                            watcher.wait_if_blocked_blocking();
                            waiters_done.fetch_add(1, Ordering::SeqCst);
                        });
                    }
                }
                held
            })
        }));
    }
    let mut left = [0usize; 3];
    for (t, thread) in threads.into_iter().enumerate() {
        left[t % 3] += thread.join().expect("worker thread");
    }
    for i in 0..3 {
        let ctrl = locks[i].controller(KEY).unwrap();
        assert_eq!(
            ctrl.count(),
            left[i],
            "instance {i}: count equals the truth"
        );
        assert_eq!(truth[i].load(Ordering::SeqCst), left[i]);
        assert_eq!(
            ctrl.is_busy(),
            left[i] > 0,
            "instance {i}: busy iff count > 0 (threshold 1)"
        );
    }
    let any_busy = left.iter().any(|&n| n > 0);
    for lock in &locks {
        eventually(
            &state(lock),
            PROPAGATION_LIMIT,
            "every instance's view equals the truth",
            |s| s.is_blocked() == any_busy,
        )
        .await;
    }
    // Release everything: every waiter must come back.
    for (i, lock) in locks.iter().enumerate() {
        lock.controller(KEY)
            .unwrap()
            .decrement(left[i])
            .await
            .unwrap();
    }
    all_unblocked(&locks, "all unblocked at the end").await;
    let deadline = Instant::now() + PROPAGATION_LIMIT;
    while waiters_done.load(Ordering::SeqCst) < 9 * 12 {
        assert!(
            Instant::now() < deadline,
            "waiters left hanging: {} of 108 released",
            waiters_done.load(Ordering::SeqCst)
        );
        async_io::Timer::after(Duration::from_millis(10)).await;
    }
    shutdown_all(&locks).await;
}

#[doc(hidden)]
pub use futures_lite::future::block_on as __block_on;

/// Generates one `#[test]` per scenario of the suite. `$setup` is evaluated in each test and
/// returns `(guard, factory)`: the guard (e.g. a server) lives until the scenario ends.
///
/// ```
/// mod local {
///     reactive_lock_backends::conformance_tests!(((), reactive_lock::LocalBackend::new()));
/// }
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($setup:expr) => {
        $crate::conformance_tests!(@each $setup; busy_blocks_others, lock_data_of_all_busy,
            all_idle_releases_waiters, threshold_hysteresis, crashed_instance_expires,
            shutdown_unblocks_at_once, random_operations_converge);
    };
    (@each $setup:expr; $($scenario:ident),*) => {
        $(
            #[test]
            fn $scenario() {
                let (_guard, factory) = $setup;
                $crate::conformance::__block_on($crate::conformance::$scenario(&factory));
            }
        )*
    };
}

/// Every scenario, in order.
pub async fn run_all<F: BackendFactory>(factory: &F) {
    busy_blocks_others(factory).await;
    lock_data_of_all_busy(factory).await;
    all_idle_releases_waiters(factory).await;
    threshold_hysteresis(factory).await;
    crashed_instance_expires(factory).await;
    shutdown_unblocks_at_once(factory).await;
    random_operations_converge(factory).await;
}
