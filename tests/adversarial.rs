//! Adversarial tests (LocalBackend, in-process): attempts to break
//! A) "never unblocked while another instance is busy" and
//! B) the careless-use guarantees.
//!
//! Every wait is bounded: a deadlock fails the test instead of hanging it.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use common::until;
use futures_lite::future::block_on;
use reactive_lock::{
    Driver, Error, LocalBackend, ReactiveLock, Status, TrackerConfig, UnknownPolicy,
};

const KEY: &str = "k";

async fn instance(backend: &LocalBackend, name: &str, config: TrackerConfig) -> ReactiveLock {
    ReactiveLock::builder()
        .instance_name(name)
        .tracker(KEY, config)
        .build(backend.clone())
        .await
        .expect("build")
}

async fn instance_with_driver(
    backend: &LocalBackend,
    name: &str,
    config: TrackerConfig,
) -> (ReactiveLock, Driver) {
    ReactiveLock::builder()
        .instance_name(name)
        .tracker(KEY, config)
        .build_with_driver(backend.clone())
        .await
        .expect("build")
}

async fn sleep(d: Duration) {
    async_io::Timer::after(d).await;
}

/// Runs `f` on a thread and waits at most `limit` for its result (a deadlock fails the test).
fn on_thread_within<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("not within {limit:?}: {what} (deadlock?)"))
}

/// A gate around a driver: while closed, the driver is not polled (its process is slow:
/// a GC pause, CPU starvation). The instance stays alive: its controllers publish inline.
#[derive(Default)]
struct Gate {
    closed: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Gate {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }
    fn open(&self) {
        self.closed.store(false, Ordering::SeqCst);
        if let Some(w) = self.waker.lock().unwrap().take() {
            w.wake();
        }
    }
}

struct Gated {
    driver: Driver,
    gate: Arc<Gate>,
}

impl Future for Gated {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.gate.closed.load(Ordering::SeqCst) {
            *self.gate.waker.lock().unwrap() = Some(cx.waker().clone());
            if self.gate.closed.load(Ordering::SeqCst) {
                return Poll::Pending;
            }
        }
        Pin::new(&mut self.driver).poll(cx)
    }
}

fn spawn_gated(driver: Driver) -> Arc<Gate> {
    let gate = Arc::new(Gate::default());
    let g = gate.clone();
    std::thread::spawn(move || block_on(Gated { driver, gate: g }));
    gate
}

/// Counts `on_unblocked` calls of a registry's state.
fn count_unblocks(state: &reactive_lock::TrackerState) -> Arc<AtomicUsize> {
    let n = Arc::new(AtomicUsize::new(0));
    let c = n.clone();
    state.on_unblocked(move || {
        c.fetch_add(1, Ordering::SeqCst);
    });
    n
}

// ---------------------------------------------------------------------------------------
// A. Safety
// ---------------------------------------------------------------------------------------

/// Found by attack, fixed: The README: "Busy entries a restarted server forgot keep blocking until their own
/// expiry unless their owner says otherwise", and "read-throughs never forget". A store
/// restart that lost everything (unavailable, clear, available); B's recovery keeps A's busy
/// entry (as documented), but A — alive, busy, its entry valid for 10 s — has not
/// re-published yet (its driver is slow). A read-through on B (`refresh`, which
/// `wait_if_blocked_consistent` does first) then drops A's entry: B answers Unblocked.
#[test]
fn read_through_after_store_restart_keeps_a_live_busy_instance() {
    block_on(async {
        let backend = LocalBackend::new();
        let (a, a_driver) = instance_with_driver(&backend, "a", TrackerConfig::new()).await;
        let gate = spawn_gated(a_driver);
        let b = instance(&backend, "b", TrackerConfig::new()).await;
        let b_state = b.state(KEY).unwrap();
        let unblocks = count_unblocks(&b_state);

        let a_ctrl = a.controller(KEY).unwrap();
        a_ctrl
            .increment(Some("a-work"))
            .await
            .expect("acknowledged");
        until(&b_state, "B sees A busy", |s| s.status() == Status::Blocked).await;

        // A's process stalls (its controller still works; only its background is slow).
        gate.close();
        // The store restarts empty.
        let resyncs = b.metrics().resyncs;
        backend.set_available(false);
        backend.clear();
        backend.set_available(true);
        let deadline = Instant::now() + Duration::from_secs(10);
        while b.metrics().resyncs == resyncs {
            assert!(Instant::now() < deadline, "B never recovered");
            sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            b_state.status(),
            Status::Blocked,
            "B's recovery keeps A's busy, unexpired entry (documented)"
        );
        assert!(a_ctrl.is_busy(), "A is still busy and alive");

        // A consistent wait on B: it must wait (A is busy); it returns at once instead.
        let waited = futures_lite::future::or(
            async { Some(b_state.wait_if_blocked_consistent().await) },
            async {
                sleep(Duration::from_millis(500)).await;
                None
            },
        )
        .await;
        let status = b_state.status();
        gate.open();
        a_ctrl.decrement(1).await.unwrap();
        assert!(
            waited.is_none(),
            "wait_if_blocked_consistent on B returned {waited:?} (B status {status:?}, \
             on_unblocked calls {}) while A is busy, alive and its entry valid",
            unblocks.load(Ordering::SeqCst)
        );
        a.shutdown().await;
        b.shutdown().await;
    });
}

/// Found by attack, fixed: After the restart above, any write of a
/// third instance C — its own recovery re-publish (always made after a reconnect), or a
/// later transition — reaches B as a full snapshot of the key, which B applies with
/// `apply_snapshot` (not the recovery variant), dropping A's entry: B unblocks while A is
/// busy. So with three instances the recovery rule never holds on LocalBackend.
#[test]
fn a_snapshot_after_store_restart_keeps_a_live_busy_instance() {
    block_on(async {
        let backend = LocalBackend::new();
        let (a, a_driver) = instance_with_driver(&backend, "a", TrackerConfig::new()).await;
        let gate = spawn_gated(a_driver);
        let b = instance(&backend, "b", TrackerConfig::new()).await;
        let c = instance(&backend, "c", TrackerConfig::new()).await;
        let b_state = b.state(KEY).unwrap();
        let unblocks = count_unblocks(&b_state);

        let a_ctrl = a.controller(KEY).unwrap();
        a_ctrl
            .increment(Some("a-work"))
            .await
            .expect("acknowledged");
        until(&b_state, "B sees A busy", |s| s.status() == Status::Blocked).await;

        gate.close();
        let resyncs = (b.metrics().resyncs, c.metrics().resyncs);
        backend.set_available(false);
        backend.clear();
        backend.set_available(true);
        let deadline = Instant::now() + Duration::from_secs(10);
        while b.metrics().resyncs == resyncs.0 || c.metrics().resyncs == resyncs.1 {
            assert!(Instant::now() < deadline, "B or C never recovered");
            sleep(Duration::from_millis(5)).await;
        }
        // (Observed: already here B is Unblocked — C's recovery re-publishes C's idle status,
        // which reaches B as a full snapshot of the key, without A's entry.)
        let after_recovery = b_state.status();

        // C works briefly: B receives the key's snapshot (without A's entry).
        let applied = b.metrics().snapshots_applied;
        let c_ctrl = c.controller(KEY).unwrap();
        c_ctrl.increment(None).await.unwrap();
        c_ctrl.decrement(1).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while b.metrics().snapshots_applied == applied {
            assert!(Instant::now() < deadline, "B never heard C");
            sleep(Duration::from_millis(5)).await;
        }
        sleep(Duration::from_millis(50)).await;
        let status = b_state.status();
        let n = unblocks.load(Ordering::SeqCst);
        gate.open();
        a_ctrl.decrement(1).await.unwrap();
        assert!(
            n == 0 && status != Status::Unblocked && after_recovery != Status::Unblocked,
            "B unblocked while A is busy, alive, its entry valid: status {after_recovery:?} \
             right after B's and C's recoveries, {status:?} after C's transition; \
             {n} on_unblocked calls"
        );
        a.shutdown().await;
        b.shutdown().await;
        c.shutdown().await;
    });
}

/// Found by attack, fixed: A read-through drops A's busy entry at once.
#[test]
fn read_through_after_clear_keeps_a_live_busy_instance() {
    block_on(async {
        let backend = LocalBackend::new();
        let a = instance(&backend, "a", TrackerConfig::new()).await;
        let b = instance(&backend, "b", TrackerConfig::new()).await;
        let b_state = b.state(KEY).unwrap();
        let a_ctrl = a.controller(KEY).unwrap();
        a_ctrl.increment(None).await.unwrap();
        until(&b_state, "B sees A busy", |s| s.is_blocked()).await;
        backend.clear();
        b_state.refresh().await.unwrap();
        let status = b_state.status();
        a_ctrl.decrement(1).await.unwrap();
        assert_ne!(
            status,
            Status::Unblocked,
            "B answers Unblocked while A is busy and alive (A's entry was valid for 10 s)"
        );
        a.shutdown().await;
        b.shutdown().await;
    });
}

/// A consistent read right after A's acknowledged increment must see it.
/// Hammered with concurrent guards on A, a flapping third instance and read-throughs.
#[test]
fn consistent_reads_after_ack_always_see_the_busy_instance() {
    block_on(async {
        let backend = LocalBackend::new();
        let a = instance(&backend, "a", TrackerConfig::new().busy_threshold(2)).await;
        let b = instance(&backend, "b", TrackerConfig::new()).await;
        let c = instance(&backend, "c", TrackerConfig::new()).await;
        let stop = Arc::new(AtomicBool::new(false));
        let c_ctrl = c.controller(KEY).unwrap();
        let s = stop.clone();
        let flapper = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                drop(c_ctrl.enter(None));
            }
        });
        let b_state = b.state(KEY).unwrap();
        let a_ctrl = a.controller(KEY).unwrap();
        for round in 0..300 {
            a_ctrl.increment(None).await.unwrap();
            a_ctrl.increment(Some("two")).await.unwrap(); // threshold reached: busy, acked
            b_state.refresh().await.unwrap();
            assert!(
                b_state.is_blocked(),
                "round {round}: a consistent read after A's acked busy answered {:?}",
                b_state.status()
            );
            a_ctrl.decrement(1).await.unwrap(); // hysteresis: still busy
            b_state.refresh().await.unwrap();
            assert!(b_state.is_blocked(), "round {round}: hysteresis");
            a_ctrl.decrement(1).await.unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        flapper.join().unwrap();
        a.shutdown().await;
        b.shutdown().await;
        c.shutdown().await;
    });
}

/// Once B has seen A busy, B must not unblock while A's long guard is held:
/// A's other threads enter/drop (no transitions), C flaps (B gets snapshots), B reads
/// through concurrently, renewal is fast (20 ms) and the expiry short (200 ms).
#[test]
fn no_unblock_while_a_long_guard_is_held_under_churn() {
    block_on(async {
        let backend = LocalBackend::new();
        let build = |name: &'static str| {
            ReactiveLock::builder()
                .instance_name(name)
                .renewal(Duration::from_millis(20))
                .expiration(Duration::from_millis(200))
                .tracker(KEY, TrackerConfig::new())
                .build(backend.clone())
        };
        let a = build("a").await.unwrap();
        let b = build("b").await.unwrap();
        let c = build("c").await.unwrap();
        let b_state = b.state(KEY).unwrap();
        let unblocks = count_unblocks(&b_state);
        let a_ctrl = a.controller(KEY).unwrap();
        let long = a_ctrl.enter_owned(Some("long"));
        until(&b_state, "B sees A", |s| s.is_blocked()).await;
        let before = unblocks.load(Ordering::SeqCst);

        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for _ in 0..2 {
            let (s, ctrl) = (stop.clone(), a_ctrl.clone());
            threads.push(std::thread::spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    drop(ctrl.enter(None));
                }
            }));
        }
        let (s, ctrl) = (stop.clone(), c.controller(KEY).unwrap());
        threads.push(std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                drop(ctrl.enter(None));
            }
        }));
        let (s, st) = (stop.clone(), b_state.clone());
        threads.push(std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                block_on(st.refresh()).unwrap();
            }
        }));
        let started = Instant::now();
        let mut violation = None;
        while started.elapsed() < Duration::from_secs(2) {
            if b_state.status() == Status::Unblocked {
                violation = Some("status Unblocked");
                break;
            }
            if unblocks.load(Ordering::SeqCst) != before {
                violation = Some("on_unblocked called");
                break;
            }
            sleep(Duration::from_millis(1)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        drop(long);
        assert!(
            violation.is_none(),
            "B: {violation:?} while A's long guard is held"
        );
        a.shutdown().await;
        b.shutdown().await;
        c.shutdown().await;
    });
}

// ---------------------------------------------------------------------------------------
// B. Careless use
// ---------------------------------------------------------------------------------------

/// Found by attack, fixed: `wait_if_blocked_consistent` is documented to fail with `Error::NoDriver` when
/// the key is blocked and the registry's driver "has ended, so that nothing would ever
/// tell this wait that the key unblocked". The check is done only before waiting: a driver
/// that ends while the wait is in progress (its task dropped) leaves the wait hanging
/// forever — even after the busy instance went idle.
#[test]
fn consistent_wait_ends_with_no_driver_when_the_driver_ends_mid_wait() {
    let outcome = block_on(async {
        let backend = LocalBackend::new();
        let a = instance(&backend, "a", TrackerConfig::new()).await;
        let (b, driver) = instance_with_driver(&backend, "b", TrackerConfig::new()).await;
        let task = smol::spawn(driver);
        let b_state = b.state(KEY).unwrap();
        let a_ctrl = a.controller(KEY).unwrap();
        a_ctrl.increment(None).await.unwrap();
        until(&b_state, "B sees A busy", |s| s.status() == Status::Blocked).await;
        let st = b_state.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(block_on(st.wait_if_blocked_consistent()));
        });
        sleep(Duration::from_millis(300)).await; // the wait is parked now
        drop(task); // B's driver ends
        until(&b_state, "B Unknown", |s| s.status() == Status::Unknown).await;
        a_ctrl.decrement(1).await.unwrap(); // even the busy instance leaving doesn't help
        let out = rx.recv_timeout(Duration::from_secs(5));
        a.shutdown().await;
        drop(b);
        out
    });
    match outcome {
        Ok(Err(Error::NoDriver { .. })) => {}
        other => panic!(
            "expected the consistent wait to end with Err(NoDriver) once the driver ended; \
             got {other:?} (Err(Timeout) = it still hangs)"
        ),
    }
}

/// Found by attack, fixed:
#[test]
fn consistent_wait_ends_with_no_driver_when_the_registry_is_dropped_mid_wait() {
    let outcome = block_on(async {
        let backend = LocalBackend::new();
        let a = instance(&backend, "a", TrackerConfig::new()).await;
        let b = instance(&backend, "b", TrackerConfig::new()).await;
        let b_state = b.state(KEY).unwrap();
        let a_ctrl = a.controller(KEY).unwrap();
        a_ctrl.increment(None).await.unwrap();
        until(&b_state, "B sees A busy", |s| s.status() == Status::Blocked).await;
        let st = b_state.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(block_on(st.wait_if_blocked_consistent()));
        });
        sleep(Duration::from_millis(300)).await;
        drop(b); // the driver ends; states turn Unknown (KeepLast: still blocked)
        until(&b_state, "B Unknown", |s| s.status() == Status::Unknown).await;
        let out = rx.recv_timeout(Duration::from_secs(5));
        a_ctrl.decrement(1).await.unwrap();
        a.shutdown().await;
        out
    });
    match outcome {
        Ok(Err(Error::NoDriver { .. })) => {}
        other => panic!(
            "expected Err(NoDriver) once the registry (and its driver) is gone; got {other:?} \
             (Err(Timeout) = the wait hangs forever)"
        ),
    }
}

/// Found by attack, fixed: "Handlers of changes this instance did not make ... run on the registry's handler
/// thread, never on the driver or on a backend's I/O executor". Dropping the registry closes
/// the handler thread first; the driver then ends and its end (Unknown; with
/// `UnknownPolicy::Blocked` a change of the blocked flag) runs `on_blocked` inline on the
/// driver's thread (`reactive-lock-driver-<instance>`; with Redis: smol's executor, see
/// attack_redis.rs).
#[test]
fn handlers_never_run_on_the_driver_thread_when_the_registry_is_dropped() {
    let backend = LocalBackend::new();
    let mut all = Vec::new();
    for round in 0..30 {
        let threads = Arc::new(Mutex::new(Vec::<String>::new()));
        let dropping = Arc::new(AtomicBool::new(false));
        let (t, d) = (threads.clone(), dropping.clone());
        let config = TrackerConfig::new()
            .unknown_policy(UnknownPolicy::Blocked)
            .on_blocked(move || {
                if d.load(Ordering::SeqCst) {
                    let name = std::thread::current().name().unwrap_or("?").to_string();
                    t.lock().unwrap().push(name);
                }
            });
        let b = block_on(instance(&backend, &format!("b{round}"), config));
        dropping.store(true, Ordering::SeqCst);
        drop(b);
        let deadline = Instant::now() + Duration::from_secs(5);
        while threads.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "on_blocked never ran");
            std::thread::sleep(Duration::from_millis(2));
        }
        let names = threads.lock().unwrap().clone();
        let bad = names.iter().any(|n| n.starts_with("reactive-lock-driver-"));
        all.extend(names);
        if bad {
            break;
        }
    }
    assert!(
        all.iter().all(|n| !n.starts_with("reactive-lock-driver-")),
        "a handler ran on the driver's thread: {all:?}"
    );
}

/// Handlers run in change order, once per change, across the caller's threads
/// and the handler thread, with handlers that re-enter (increment/decrement another
/// registry's controller, read the state) and panic now and then; no guard count leaks.
#[test]
fn handlers_alternate_in_order_under_concurrency_and_reentry() {
    block_on(async {
        let backend = LocalBackend::new();
        let a = instance(&backend, "a", TrackerConfig::new()).await;
        let c = instance(&backend, "c", TrackerConfig::new()).await;
        let log = Arc::new(Mutex::new(Vec::<bool>::new()));
        let (l1, l2) = (log.clone(), log.clone());
        let c_ctrl = c.controller(KEY).unwrap();
        let (c1, c2) = (c_ctrl.clone(), c_ctrl.clone());
        let calls = Arc::new(AtomicUsize::new(0));
        let (k1, k2) = (calls.clone(), calls.clone());
        let config = TrackerConfig::new()
            .on_blocked(move || {
                l1.lock().unwrap().push(true);
                drop(c1.enter(None)); // re-enters another registry
                if k1.fetch_add(1, Ordering::Relaxed) % 97 == 0 {
                    panic!("handler bug");
                }
            })
            .on_unblocked(move || {
                l2.lock().unwrap().push(false);
                drop(c2.enter(None));
                if k2.fetch_add(1, Ordering::Relaxed) % 89 == 0 {
                    panic!("handler bug");
                }
            });
        let b = instance(&backend, "b", config).await;
        let b_ctrl = b.controller(KEY).unwrap();
        let a_ctrl = a.controller(KEY).unwrap();
        let mut threads = Vec::new();
        for i in 0..3 {
            let (bc, ac) = (b_ctrl.clone(), a_ctrl.clone());
            threads.push(std::thread::spawn(move || {
                for j in 0..3000 {
                    if (i + j) % 3 == 0 {
                        drop(ac.enter(None));
                    } else {
                        let g = bc.enter(None);
                        if j % 7 == 0 {
                            std::thread::yield_now();
                        }
                        drop(g);
                    }
                }
            }));
        }
        for t in threads {
            on_thread_within("worker", Duration::from_secs(60), move || t.join().unwrap());
        }
        let b_state = b.state(KEY).unwrap();
        until(&b_state, "B idle at the end", |s| !s.is_blocked()).await;
        sleep(Duration::from_millis(100)).await;
        assert_eq!(b_ctrl.count(), 0);
        assert_eq!(a_ctrl.count(), 0);
        assert_eq!(c_ctrl.count(), 0);
        let log = log.lock().unwrap().clone();
        assert!(!log.is_empty());
        for (i, pair) in log.windows(2).enumerate() {
            assert_ne!(
                pair[0],
                pair[1],
                "handler calls out of order at {i}: {:?}",
                &log[i.saturating_sub(3)..(i + 3).min(log.len())]
            );
        }
        assert_eq!(log.first(), Some(&true), "first change is to blocked");
        assert_eq!(
            log.last(),
            Some(&false),
            "last handler matches the final unblocked state"
        );
        a.shutdown().await;
        b.shutdown().await;
        c.shutdown().await;
    });
}

/// A handler that calls `shutdown` (blocking) on its own registry, and one
/// that drops the last registry handle, from the caller's thread and the handler thread:
/// nothing deadlocks and the other instance unblocks.
#[test]
fn handlers_that_shut_down_or_drop_their_registry_do_not_deadlock() {
    block_on(async {
        let backend = LocalBackend::new();
        let slot: Arc<Mutex<Option<ReactiveLock>>> = Arc::new(Mutex::new(None));
        let s = slot.clone();
        let config = TrackerConfig::new().on_blocked(move || {
            if let Some(lock) = s.lock().unwrap().take() {
                block_on(lock.shutdown());
                drop(lock);
            }
        });
        let a = instance(&backend, "a", TrackerConfig::new()).await;
        let b = instance(&backend, "b", config).await;
        let b_state = b.state(KEY).unwrap();
        let b_ctrl = b.controller(KEY).unwrap();
        *slot.lock().unwrap() = Some(b);
        // Remote change: the handler (on B's handler thread) shuts B down and drops it.
        let a_ctrl = a.controller(KEY).unwrap();
        a_ctrl.increment(None).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while slot.lock().unwrap().is_some() {
            assert!(Instant::now() < deadline, "handler never ran");
            sleep(Duration::from_millis(5)).await;
        }
        // Own transitions after the registry is gone still complete.
        let r = on_thread_within("guard after drop", Duration::from_secs(10), move || {
            let g = b_ctrl.enter(None);
            drop(g);
            b_ctrl.count()
        });
        assert_eq!(r, 0);
        a_ctrl.decrement(1).await.unwrap();
        let _ = b_state.status();
        a.shutdown().await;
    });
}

/// Extreme durations are refused at build, naming the field; a blocking wait
/// with `Duration::MAX` waits without a deadline (no panic).
#[test]
fn extreme_durations_are_refused_naming_the_field() {
    block_on(async {
        for (field, d) in [
            ("renewal", Duration::MAX),
            ("expiration", Duration::MAX),
            ("recovery", Duration::MAX),
            ("renewal", Duration::from_nanos(1)),
            ("recovery", Duration::from_nanos(999_999)),
        ] {
            let mut builder = ReactiveLock::builder().tracker(KEY, TrackerConfig::new());
            builder = match field {
                "renewal" => builder.renewal(d),
                "expiration" => builder.expiration(d),
                _ => builder.recovery(d),
            };
            match builder.build(LocalBackend::new()).await {
                Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field, "{d:?}"),
                other => panic!("{field} = {d:?}: expected InvalidConfig, got {other:?}"),
            }
        }
        let backend = LocalBackend::new();
        let a = instance(&backend, "a", TrackerConfig::new()).await;
        let st = a.state(KEY).unwrap();
        let ctrl = a.controller(KEY).unwrap();
        ctrl.increment(None).await.unwrap();
        let s = st.clone();
        let t = std::thread::spawn(move || s.wait_if_blocked_blocking_timeout(Duration::MAX));
        let s2 = st.clone();
        let t2 = std::thread::spawn(move || block_on(s2.wait_if_blocked_timeout(Duration::MAX)));
        sleep(Duration::from_millis(100)).await;
        ctrl.decrement(1).await.unwrap();
        let r = on_thread_within("MAX timeout wait", Duration::from_secs(10), move || {
            (t.join(), t2.join())
        });
        assert!(matches!(r.0, Ok(Ok(true))), "{:?}", r.0);
        assert!(matches!(r.1, Ok(Ok(true))), "{:?}", r.1);
        a.shutdown().await;
    });
}

/// UnknownPolicy variants through an outage while A is busy: B never answers
/// `Status::Unblocked`; with `Unblocked` policy it answers Unknown (fail open, by design).
#[test]
fn unknown_policies_never_answer_status_unblocked_while_a_is_busy() {
    block_on(async {
        for policy in [
            UnknownPolicy::KeepLast,
            UnknownPolicy::Blocked,
            UnknownPolicy::Unblocked,
        ] {
            let backend = LocalBackend::new();
            let a = instance(&backend, "a", TrackerConfig::new()).await;
            let b = instance(&backend, "b", TrackerConfig::new().unknown_policy(policy)).await;
            let b_state = b.state(KEY).unwrap();
            let ctrl = a.controller(KEY).unwrap();
            ctrl.increment(None).await.unwrap();
            until(&b_state, "B sees A", |s| s.status() == Status::Blocked).await;
            let seen = Arc::new(Mutex::new(Vec::new()));
            let stop = Arc::new(AtomicBool::new(false));
            let (s, st, sn) = (stop.clone(), b_state.clone(), seen.clone());
            let watcher = std::thread::spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    let status = st.status();
                    if status == Status::Unblocked {
                        sn.lock().unwrap().push(status);
                    }
                }
            });
            for _ in 0..20 {
                backend.set_available(false);
                sleep(Duration::from_millis(5)).await;
                backend.set_available(true);
                sleep(Duration::from_millis(5)).await;
            }
            until(&b_state, "B back", |s| s.status() == Status::Blocked).await;
            stop.store(true, Ordering::Relaxed);
            watcher.join().unwrap();
            assert!(
                seen.lock().unwrap().is_empty(),
                "{policy:?}: B answered Unblocked while A busy"
            );
            ctrl.decrement(1).await.unwrap();
            until(&b_state, "B free", |s| s.status() == Status::Unblocked).await;
            a.shutdown().await;
            b.shutdown().await;
        }
    });
}

/// Found by attack, fixed: "every key's status is Status::Unknown until its first poll"
/// (build_with_driver). The driver marks every state driven at the very start of its first
/// poll, before it has applied what the subscription delivered meanwhile. B was built
/// (A idle), then A turned busy (acknowledged) long before B's driver was spawned: at the
/// driver's first poll B answers a confident `Status::Unblocked` from its stale initial
/// read until the backlog is applied.
#[test]
fn a_late_spawned_driver_catches_up_before_answering() {
    block_on(async {
        let mut caught = None;
        for round in 0..200 {
            let backend = LocalBackend::new();
            let a = instance(&backend, "a", TrackerConfig::new()).await;
            let (b, driver) = instance_with_driver(&backend, "b", TrackerConfig::new()).await;
            let b_state = b.state(KEY).unwrap();
            let a_ctrl = a.controller(KEY).unwrap();
            a_ctrl.increment(None).await.expect("acknowledged");
            assert_eq!(b_state.status(), Status::Unknown, "not driven yet");
            let stop = Arc::new(AtomicBool::new(false));
            let seen = Arc::new(AtomicBool::new(false));
            let (s, st, sn) = (stop.clone(), b_state.clone(), seen.clone());
            let watcher = std::thread::spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    if st.status() == Status::Unblocked {
                        sn.store(true, Ordering::SeqCst);
                    }
                }
            });
            let task = smol::spawn(driver);
            until(&b_state, "B sees A", |s| s.status() == Status::Blocked).await;
            stop.store(true, Ordering::Relaxed);
            watcher.join().unwrap();
            a_ctrl.decrement(1).await.unwrap();
            a.shutdown().await;
            b.shutdown().await;
            task.await;
            if seen.load(Ordering::SeqCst) {
                caught = Some(round);
                break;
            }
        }
        assert!(
            caught.is_none(),
            "round {caught:?}: B answered Status::Unblocked while A was busy (acknowledged \
             before B's driver was spawned)"
        );
    });
}

/// `changes()` streams end when the driver ends: driver task dropped after
/// running, Driver dropped before its first poll, registry dropped.
#[test]
fn changes_streams_end_when_the_driver_ends() {
    use futures_lite::StreamExt;
    block_on(async {
        let backend = LocalBackend::new();
        for case in 0..3 {
            let (b, driver) = instance_with_driver(&backend, "b", TrackerConfig::new()).await;
            let st = b.state(KEY).unwrap();
            let mut changes = st.changes();
            let task = match case {
                0 => {
                    let t = smol::spawn(driver);
                    sleep(Duration::from_millis(50)).await;
                    drop(t);
                    None
                }
                1 => {
                    drop(driver);
                    None
                }
                _ => Some(smol::spawn(driver)),
            };
            if case == 2 {
                sleep(Duration::from_millis(50)).await;
                drop(b);
            }
            let ended = futures_lite::future::or(
                async {
                    while changes.next().await.is_some() {}
                    true
                },
                async {
                    sleep(Duration::from_secs(10)).await;
                    false
                },
            )
            .await;
            assert!(ended, "case {case}: the changes() stream did not end");
            if let Some(t) = task {
                t.await;
            }
        }
    });
}

/// A handler that blocks (on the handler thread) does not stop the instance
/// hearing others: B's on_blocked blocks for 2 s; meanwhile A goes idle and B's status
/// follows, and B's renewals continue (its own busy status stays in the store).
#[test]
fn a_blocking_remote_handler_does_not_stop_hearing() {
    block_on(async {
        let backend = LocalBackend::new();
        let release = Arc::new(AtomicBool::new(false));
        let r = release.clone();
        let config = TrackerConfig::new().on_blocked(move || {
            let start = Instant::now();
            while !r.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let a = instance(&backend, "a", TrackerConfig::new()).await;
        let b = instance(&backend, "b", config).await;
        let b_state = b.state(KEY).unwrap();
        let a_ctrl = a.controller(KEY).unwrap();
        a_ctrl.increment(None).await.unwrap();
        until(&b_state, "B sees A", |s| s.status() == Status::Blocked).await;
        a_ctrl.decrement(1).await.unwrap();
        until(&b_state, "B hears A idle while its handler blocks", |s| {
            s.status() == Status::Unblocked
        })
        .await;
        assert!(!release.load(Ordering::SeqCst));
        release.store(true, Ordering::SeqCst);
        a.shutdown().await;
        b.shutdown().await;
    });
}

/// Own-transition handlers (caller's thread) that re-enter the same
/// registry: on_blocked shuts the registry down (blocking) from inside `enter`, and
/// on_unblocked increments/decrements the same controller once; nothing deadlocks, the
/// guard's count does not leak, the other instance ends unblocked.
#[test]
fn own_transition_handlers_that_reenter_the_same_registry() {
    block_on(async {
        let backend = LocalBackend::new();
        let slot: Arc<Mutex<Option<ReactiveLock>>> = Arc::new(Mutex::new(None));
        let ctrl_slot: Arc<Mutex<Option<reactive_lock::TrackerController>>> =
            Arc::new(Mutex::new(None));
        let (s, cs) = (slot.clone(), ctrl_slot.clone());
        let once = Arc::new(AtomicBool::new(false));
        let o = once.clone();
        let config = TrackerConfig::new()
            .on_blocked(move || {
                if let Some(lock) = s.lock().unwrap().as_ref() {
                    block_on(lock.shutdown());
                }
            })
            .on_unblocked(move || {
                if !o.swap(true, Ordering::SeqCst) {
                    let c = cs.lock().unwrap().clone();
                    if let Some(c) = c {
                        let _ = block_on(c.increment(None));
                        let _ = block_on(c.decrement(1));
                    }
                }
            });
        let a = instance(&backend, "a", config).await;
        let c = instance(&backend, "c", TrackerConfig::new()).await;
        let ctrl = a.controller(KEY).unwrap();
        *ctrl_slot.lock().unwrap() = Some(ctrl.clone());
        *slot.lock().unwrap() = Some(a.clone());
        let c_state = c.state(KEY).unwrap();
        let ctrl2 = ctrl.clone();
        let count = on_thread_within(
            "enter/drop with re-entrant handlers",
            Duration::from_secs(10),
            move || {
                let g = ctrl2.enter(Some("x"));
                drop(g);
                ctrl2.count()
            },
        );
        assert_eq!(count, 0);
        until(&c_state, "C sees A idle", |s| {
            s.status() == Status::Unblocked
        })
        .await;
        slot.lock().unwrap().take();
        ctrl_slot.lock().unwrap().take();
        c.shutdown().await;
    });
}
