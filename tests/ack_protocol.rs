//! `Ack` left behind in every way (dropped before or after a poll, kept and awaited late,
//! dropped on other threads, the registry shut down or dropped meanwhile) against the real
//! registry, driver and in-process store, through a wrapper that forces the asynchronous
//! publish path and slows, stalls or fails it on script: no transition is lost, an awaited
//! `Ack` is Ok only once the store holds its status, none waits forever, nothing leaks.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_lite::future::{block_on, poll_once};
use reactive_lock::{
    Ack, Backend, BackendError, BackendErrorKind, InstanceStatus, LocalBackend, LocalEvents,
    ReactiveLock, Snapshot, Status, TrackerConfig,
};

mod common;
use common::until;

const KEY: &str = "k";
/// How long a test waits for something that must happen "soon" before calling it lost.
const BOUND: Duration = Duration::from_secs(5);

enum Step {
    /// The publish hangs until the sender is used or dropped.
    Stall(async_channel::Receiver<()>),
    /// The publish hangs until the sender is used or dropped, then fails.
    StallThenFail(async_channel::Receiver<()>),
    /// The publish fails.
    Fail,
}

#[derive(Default)]
struct Ctl {
    script: Mutex<VecDeque<Step>>,
    calls: AtomicUsize,
    failures: AtomicUsize,
    /// Every publish sleeps this long first (a slow store).
    delay_ms: AtomicU64,
}

impl Ctl {
    fn stall_next(&self) -> async_channel::Sender<()> {
        let (tx, rx) = async_channel::bounded(1);
        self.script.lock().unwrap().push_back(Step::Stall(rx));
        tx
    }
    fn stall_then_fail_next(&self) -> async_channel::Sender<()> {
        let (tx, rx) = async_channel::bounded(1);
        self.script
            .lock()
            .unwrap()
            .push_back(Step::StallThenFail(rx));
        tx
    }
    /// Counts a scripted failure and returns it.
    fn failure(&self) -> BackendError {
        self.failures.fetch_add(1, Ordering::SeqCst);
        BackendError::new(BackendErrorKind::Unavailable, "scripted failure")
    }
    fn fail_next(&self) {
        self.script.lock().unwrap().push_back(Step::Fail);
    }
}

/// The in-process store without its inline publish (only the required methods), with a
/// scripted asynchronous `publish`. `marker` is shared by every clone: its weak count tells
/// whether the registry still holds the backend.
#[derive(Clone)]
struct Scripted {
    store: LocalBackend,
    ctl: Arc<Ctl>,
    marker: Arc<()>,
}

impl Scripted {
    fn new(store: &LocalBackend) -> Self {
        Scripted {
            store: store.clone(),
            ctl: Arc::new(Ctl::default()),
            marker: Arc::new(()),
        }
    }
}

impl Backend for Scripted {
    type Events = LocalEvents;

    async fn publish(
        &self,
        key: &str,
        instance: &str,
        status: &InstanceStatus,
    ) -> Result<(), BackendError> {
        self.ctl.calls.fetch_add(1, Ordering::SeqCst);
        let step = self.ctl.script.lock().unwrap().pop_front();
        match step {
            Some(Step::Stall(rx)) => {
                let _ = rx.recv().await;
            }
            Some(Step::StallThenFail(rx)) => {
                let _ = rx.recv().await;
                return Err(self.ctl.failure());
            }
            Some(Step::Fail) => return Err(self.ctl.failure()),
            None => {}
        }
        let delay = self.ctl.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            async_io::Timer::after(Duration::from_millis(delay)).await;
        }
        self.store.publish(key, instance, status).await
    }

    async fn snapshot(&self, key: &str) -> Result<Snapshot, BackendError> {
        self.store.snapshot(key).await
    }

    async fn subscribe(
        &self,
        instance: &str,
        keys: &[String],
    ) -> Result<LocalEvents, BackendError> {
        self.store.subscribe(instance, keys).await
    }
}

async fn registry<B: Backend>(backend: B, name: &str, threshold: usize) -> ReactiveLock {
    // Renewals far beyond every bound here: only the hand-over and the lease can publish.
    ReactiveLock::builder()
        .instance_name(name)
        .renewal(Duration::from_secs(60))
        .expiration(Duration::from_secs(120))
        .tracker(KEY, TrackerConfig::new().busy_threshold(threshold))
        .build(backend)
        .await
        .unwrap()
}

/// `name`'s entry in the store: (busy, lock data).
fn stored(store: &LocalBackend, name: &str) -> Option<(bool, Option<String>)> {
    let snap = block_on(store.snapshot(KEY)).unwrap();
    snap.entries
        .iter()
        .find(|e| e.instance == name)
        .map(|e| (e.busy, e.lock_data.clone()))
}

fn until_stored(store: &LocalBackend, name: &str, what: &str, busy: bool) {
    let deadline = Instant::now() + BOUND;
    loop {
        if stored(store, name).map(|(b, _)| b) == Some(busy) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not within {BOUND:?}: {what} (store holds {:?})",
            stored(store, name)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Awaits `ack` for at most `limit`; `None` if it did not resolve.
fn await_bounded(ack: Ack, limit: Duration) -> Option<reactive_lock::Result<()>> {
    block_on(futures_lite::future::or(async { Some(ack.await) }, async {
        async_io::Timer::after(limit).await;
        None
    }))
}

// ---------------------------------------------------------------------------------------
// Guarantee 4: no deadlock when the registry is shut down / dropped with Acks outstanding.
// ---------------------------------------------------------------------------------------

/// An `Ack` polled once (it holds the key's publishing role, its publish in flight) and
/// kept, as a `select!` that took another branch keeps it; the registry is then shut down.
/// An older transition's `Ack`, awaited after the shutdown, must resolve (Ok or
/// `Error::Shutdown`), not wait forever for a role holder nobody polls: the lease that
/// would take the role over died with the driver.
#[test]
fn an_ack_awaited_after_shutdown_while_a_kept_ack_holds_the_role_resolves() {
    let store = LocalBackend::new();
    let backend = Scripted::new(&store);
    let ctl = backend.ctl.clone();
    let writer = block_on(registry(backend, "writer", 1));
    let ctrl = writer.controller(KEY).unwrap();

    let a1 = ctrl.increment(Some("one")); // busy, not polled
    assert!(!a1.is_immediate());
    let _release = ctl.stall_next();
    let mut a2 = ctrl.decrement(1); // idle
    assert!(
        block_on(poll_once(&mut a2)).is_none(),
        "a2 holds the role, its publish stalled"
    );
    block_on(writer.shutdown());

    let outcome = await_bounded(a1, BOUND);
    assert!(
        outcome.is_some(),
        "an Ack awaited after shutdown never resolved: it waits for the publishing role held \
         by a kept, unpolled Ack, and no driver is left to take that role over"
    );
    drop(a2);
}

/// The same with the registry dropped (no shutdown).
#[test]
fn an_ack_awaited_after_the_registry_is_dropped_while_a_kept_ack_holds_the_role_resolves() {
    let store = LocalBackend::new();
    let backend = Scripted::new(&store);
    let ctl = backend.ctl.clone();
    let writer = block_on(registry(backend, "writer", 1));
    let ctrl = writer.controller(KEY).unwrap();

    let a1 = ctrl.increment(Some("one"));
    let _release = ctl.stall_next();
    let mut a2 = ctrl.decrement(1);
    assert!(block_on(poll_once(&mut a2)).is_none());
    drop(writer);

    let outcome = await_bounded(a1, BOUND);
    assert!(
        outcome.is_some(),
        "an Ack awaited after the registry was dropped never resolved"
    );
    drop(a2);
}

// ---------------------------------------------------------------------------------------
// Guarantee 1: the newest status reaches the store even with a kept Ack.
// ---------------------------------------------------------------------------------------

/// The newest (idle) transition's lease is spent on a publish that fails; an older publish
/// that was in flight then succeeds. The idle transition's `Ack`, polled once, must see the
/// failure rather than take the role (its publish would stall, it would be kept, and the
/// driver's retry would find the role held with no lease left), and the idle status must
/// reach the store through the driver's retry within a bounded time (renewal 60 s).
#[test]
fn the_newest_status_reaches_the_store_after_a_failed_lease_publish_and_a_kept_ack() {
    let store = LocalBackend::new();
    let backend = Scripted::new(&store);
    let ctl = backend.ctl.clone();
    let writer = block_on(registry(backend, "writer", 1));
    let reader = block_on(registry(store.clone(), "reader", 1));
    let ctrl = writer.controller(KEY).unwrap();
    let seen = reader.state(KEY).unwrap();
    block_on(until(&seen, "reader sees idle", |s| {
        s.status() == Status::Unblocked
    }));

    // a1: busy, takes the role, its publish stalls.
    let release1 = ctl.stall_next();
    let mut a1 = ctrl.increment(Some("one"));
    assert!(block_on(poll_once(&mut a1)).is_none());
    // a2: idle, not polled; the driver's lease publish of it fails.
    ctl.fail_next();
    let mut a2 = ctrl.decrement(1);
    until_count(&ctl.failures, 1, "the lease publish of a2's status failed");
    // The older publish completes and is acknowledged: the newer status's failure stands.
    release1.try_send(()).unwrap();
    assert!(block_on(a1).is_ok());
    // a2 polled once within the driver's retry backoff. Had the failure been
    // forgotten, it would take the role, its publish would stall, and it would be kept (a
    // select! that awaits it later) holding the role with no lease left.
    let release2 = ctl.stall_next();
    let first = block_on(poll_once(&mut a2));
    match &first {
        None => {} // holds the role: kept, its stall kept with it
        Some(result) => {
            assert!(result.is_err(), "a2's status failed: {first:?}");
            // Nobody took the stall: the driver's retry must not wait on it.
            drop(release2);
        }
    }

    until_stored(
        &store,
        "writer",
        "the writer's newest (idle) status in the store while an Ack holding it is kept",
        false,
    );
    block_on(until(&seen, "the reader sees the writer idle", |s| {
        s.status() == Status::Unblocked
    }));
    drop(a2);
    block_on(writer.shutdown());
    block_on(reader.shutdown());
}

/// Waits until `counter` reaches `n`.
fn until_count(counter: &AtomicUsize, n: usize, what: &str) {
    let deadline = Instant::now() + BOUND;
    while counter.load(Ordering::SeqCst) < n {
        assert!(Instant::now() < deadline, "not within {BOUND:?}: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The interleaving of an older publish failing after a newer one failed: a1 (e1) holds the
/// role, its publish stalled; a2 (e2) is never polled and the driver's lease publish of it
/// fails; then a1's publish fails too. Returns a2 and the store, with the registries.
fn older_failure_after_newer(first_busy: bool) -> (Ack, Arc<Ctl>, LocalBackend, ReactiveLock) {
    let store = LocalBackend::new();
    let backend = Scripted::new(&store);
    let ctl = backend.ctl.clone();
    let writer = block_on(registry(backend, "writer", 1));
    let ctrl = writer.controller(KEY).unwrap();
    if !first_busy {
        block_on(ctrl.increment(Some("zero"))).unwrap();
        until_stored(&store, "writer", "the writer busy with zero", true);
    }
    let failures = ctl.failures.load(Ordering::SeqCst);
    let release1 = ctl.stall_then_fail_next();
    let mut a1 = if first_busy {
        ctrl.increment(Some("one"))
    } else {
        ctrl.decrement(1)
    };
    assert!(block_on(poll_once(&mut a1)).is_none(), "a1 holds the role");
    ctl.fail_next();
    let a2 = if first_busy {
        ctrl.decrement(1)
    } else {
        ctrl.increment(Some("two"))
    };
    until_count(
        &ctl.failures,
        failures + 1,
        "the lease publish of e2 failed",
    );
    std::thread::sleep(Duration::from_millis(5));
    release1.try_send(()).unwrap();
    assert!(block_on(a1).is_err(), "a1's own publish failed");
    (a2, ctl, store, writer)
}

/// An older status's failure recorded after a newer one's does not hide the newer: the
/// newer `Ack`, polled once within the driver's retry backoff, reports its failure rather
/// than take the role unleased (its publish would stall, it would be kept, and the driver's
/// retry would find the role held), and the newest status reaches the store.
#[test]
fn an_older_failure_recorded_late_does_not_hide_a_newer_failure() {
    let (mut a2, ctl, store, writer) = older_failure_after_newer(false);
    let release2 = ctl.stall_next();
    let first = block_on(poll_once(&mut a2));
    if first.is_some() {
        drop(release2);
    }
    let want = Some((true, Some(String::from("two"))));
    let deadline = Instant::now() + BOUND;
    while stored(&store, "writer") != want {
        assert!(
            Instant::now() < deadline,
            "not within {BOUND:?}: the newest status in the store (store holds {:?}, a2's \
             first poll gave {first:?})",
            stored(&store, "writer")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(a2);
    block_on(writer.shutdown());
}

/// The same interleaving, the newer `Ack` awaited: its status failed and nothing newer was
/// acknowledged, so it reports the failure.
#[test]
fn an_ack_whose_status_failed_reports_it_after_an_older_failure() {
    let (mut a2, _ctl, _store, writer) = older_failure_after_newer(true);
    let first = block_on(poll_once(&mut a2));
    assert!(
        matches!(first, Some(Err(reactive_lock::Error::Backend { .. }))),
        "a2's status failed, nothing newer acknowledged: {first:?}"
    );
    block_on(writer.shutdown());
}

/// Older `Ack`s waiting on several threads while a kept one holds the role, the registry
/// shut down or dropped at varying moments: every waiter resolves (no lost wake-up).
fn waiters_resolve_when_closed(drop_instead: bool) {
    for round in 0..10u64 {
        let store = LocalBackend::new();
        let backend = Scripted::new(&store);
        let ctl = backend.ctl.clone();
        let writer = block_on(registry(backend, "writer", 1));
        let ctrl = writer.controller(KEY).unwrap();
        let mut older = Vec::new();
        for _ in 0..3 {
            older.push(ctrl.increment(Some("x")));
            older.push(ctrl.decrement(1));
        }
        let release = ctl.stall_next();
        let mut holder = ctrl.increment(Some("holder"));
        assert!(block_on(poll_once(&mut holder)).is_none());
        let started = Arc::new(AtomicUsize::new(0));
        let waiters: Vec<_> = older
            .into_iter()
            .map(|ack| {
                let started = started.clone();
                std::thread::spawn(move || {
                    started.fetch_add(1, Ordering::SeqCst);
                    await_bounded(ack, BOUND)
                })
            })
            .collect();
        until_count(&started, waiters.len(), "the waiters started");
        if round % 3 != 0 {
            std::thread::sleep(Duration::from_micros(fastrand::u64(0..2000)));
        }
        if drop_instead {
            drop(writer);
        } else {
            block_on(writer.shutdown());
        }
        for waiter in waiters {
            match waiter.join().unwrap() {
                Some(Ok(())) | Some(Err(reactive_lock::Error::Shutdown { .. })) => {}
                other => panic!("round {round}: a waiter at close: {other:?}"),
            }
        }
        drop(holder);
        drop(release);
    }
}

#[test]
fn waiters_on_several_threads_resolve_at_shutdown() {
    waiters_resolve_when_closed(false);
}

#[test]
fn waiters_on_several_threads_resolve_at_drop() {
    waiters_resolve_when_closed(true);
}

// ---------------------------------------------------------------------------------------
// Guarantees 1 and 3 under load: every drop pattern, several threads, thresholds 1 and 2.
// ---------------------------------------------------------------------------------------

fn handle(ack: Ack, choice: u8, kept: &mut Vec<Ack>, dropper: &std::sync::mpsc::Sender<Ack>) {
    let mut ack = ack;
    match choice {
        0 => drop(ack),
        1 => {
            if block_on(poll_once(&mut ack)).is_none() {
                drop(ack);
            }
        }
        2 => {
            if block_on(poll_once(&mut ack)).is_none() {
                kept.push(ack);
            }
        }
        3 => kept.push(ack), // never polled, awaited late
        4 => dropper.send(ack).unwrap(),
        _ => block_on(ack).expect("an awaited Ack with no failure is Ok"),
    }
}

fn churn(threshold: usize, delay_ms: u64, threads: usize, iterations: usize, seed: u64) {
    let store = LocalBackend::new();
    let backend = Scripted::new(&store);
    backend.ctl.delay_ms.store(delay_ms, Ordering::Relaxed);
    let writer = block_on(registry(backend, "writer", threshold));
    let reader = block_on(registry(store.clone(), "reader", threshold));
    let ctrl = writer.controller(KEY).unwrap();
    let seen = reader.state(KEY).unwrap();

    let (dropper, dropped) = std::sync::mpsc::channel::<Ack>();
    let dropper_thread = std::thread::spawn(move || {
        for ack in dropped {
            drop(ack);
        }
    });
    for round in 0..3u64 {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let ctrl = ctrl.clone();
                let dropper = dropper.clone();
                std::thread::spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(seed ^ (round << 8) ^ t as u64);
                    let mut kept = Vec::new();
                    for i in 0..iterations {
                        let data = format!("t{t}-{i}");
                        handle(
                            ctrl.increment(Some(&data)),
                            rng.u8(0..6),
                            &mut kept,
                            &dropper,
                        );
                        if rng.u8(0..4) == 0 {
                            std::thread::yield_now();
                        }
                        handle(ctrl.decrement(1), rng.u8(0..6), &mut kept, &dropper);
                    }
                    // Awaited late, each resolves (Ok: nothing fails here).
                    for ack in kept {
                        match await_bounded(ack, BOUND) {
                            Some(Ok(())) => {}
                            other => panic!("a kept Ack awaited late: {other:?}"),
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(ctrl.count(), 0);
        assert!(!ctrl.is_busy());
        // Everything done: the store and the reader agree the writer is idle.
        until_stored(
            &store,
            "writer",
            "the writer idle in the store after churn",
            false,
        );
        block_on(until(&seen, "the reader sees the writer idle", |s| {
            s.status() == Status::Unblocked
        }));

        // A busy transition whose Ack is dropped before its first poll: visible.
        for _ in 0..threshold.saturating_sub(1) {
            block_on(ctrl.increment(None)).unwrap();
        }
        drop(ctrl.increment(Some("last")));
        until_stored(
            &store,
            "writer",
            "the dropped busy transition in the store",
            true,
        );
        block_on(until(
            &seen,
            "the reader sees the dropped busy transition",
            |s| s.status() == Status::Blocked && s.lock_data().as_deref() == Some("last"),
        ));
        let mut ack = ctrl.decrement(threshold);
        let _ = block_on(poll_once(&mut ack));
        drop(ack);
        until_stored(
            &store,
            "writer",
            "the dropped idle transition in the store",
            false,
        );
        block_on(until(
            &seen,
            "the reader sees the dropped idle transition",
            |s| s.status() == Status::Unblocked,
        ));
    }
    drop(dropper);
    dropper_thread.join().unwrap();
    block_on(writer.shutdown());
    block_on(reader.shutdown());
}

#[test]
fn dropped_and_kept_acks_lose_nothing_threshold_1() {
    churn(1, 0, 4, 400, 0xA11);
}

#[test]
fn dropped_and_kept_acks_lose_nothing_threshold_2() {
    churn(2, 0, 4, 400, 0xB22);
}

#[test]
fn dropped_and_kept_acks_lose_nothing_on_a_slow_store() {
    churn(1, 3, 3, 60, 0xC33);
}

#[test]
fn dropped_and_kept_acks_lose_nothing_on_a_slow_store_threshold_2() {
    churn(2, 3, 3, 60, 0xD44);
}

// ---------------------------------------------------------------------------------------
// Guarantee 2: an awaited Ack is Ok only once the store holds its status (or newer).
// ---------------------------------------------------------------------------------------

#[test]
fn an_awaited_ack_is_ok_only_when_the_store_holds_the_status() {
    for delay in [0, 2] {
        let store = LocalBackend::new();
        let backend = Scripted::new(&store);
        backend.ctl.delay_ms.store(delay, Ordering::Relaxed);
        let ctl = backend.ctl.clone();
        let writer = block_on(registry(backend, "writer", 1));
        let ctrl = writer.controller(KEY).unwrap();
        let mut rng = fastrand::Rng::with_seed(99 + delay);
        let mut older: Vec<Ack> = Vec::new();
        for i in 0..150 {
            // Older transitions left behind in every way: dropped, polled once, kept.
            let data = format!("d{i}");
            let mut up = ctrl.increment(Some(&data));
            match rng.u8(0..3) {
                0 => drop(up),
                1 => {
                    let _ = block_on(poll_once(&mut up));
                    older.push(up);
                }
                _ => older.push(up),
            }
            if rng.bool() {
                // Awaited: the store must hold busy with this data right then.
                let mut down = ctrl.decrement(1);
                let _ = block_on(poll_once(&mut down));
                drop(down);
                let up = ctrl.increment(Some(&data));
                if rng.u8(0..4) == 0 {
                    ctl.stall_next().close(); // a stall that is released at once
                }
                block_on(up).unwrap();
                assert_eq!(
                    stored(&store, "writer"),
                    Some((true, Some(data.clone()))),
                    "Ok resolved before the store held the busy status"
                );
            }
            let down = ctrl.decrement(1);
            block_on(down).unwrap();
            assert_eq!(
                stored(&store, "writer").map(|(b, _)| b),
                Some(false),
                "Ok resolved before the store held the idle status"
            );
            if older.len() > 20 {
                for ack in older.drain(..) {
                    assert!(matches!(await_bounded(ack, BOUND), Some(Ok(()))));
                }
            }
        }
        drop(older);
        block_on(writer.shutdown());
    }
}

/// On the in-process store, every transition is acknowledged inline: no Ack waits. Two
/// threads flap one controller, so transitions race (a busy one can reach the slot after the
/// idle one that follows it).
#[test]
fn every_ack_on_the_in_process_store_is_immediate_even_when_transitions_race() {
    let store = LocalBackend::new();
    let writer = block_on(registry(store.clone(), "writer", 1));
    let ctrl = writer.controller(KEY).unwrap();
    let not_immediate = Arc::new(AtomicUsize::new(0));
    // Flapped for up to 4 s, stopping at the first Ack that is not immediate (the race is
    // rare on a given run, certain over a few seconds on two cores).
    let start = Instant::now();
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let ctrl = ctrl.clone();
            let not_immediate = not_immediate.clone();
            std::thread::spawn(move || {
                while start.elapsed() < Duration::from_secs(4)
                    && not_immediate.load(Ordering::Relaxed) == 0
                {
                    for mut ack in [ctrl.increment(None), ctrl.decrement(1)] {
                        if !ack.is_immediate() {
                            not_immediate.fetch_add(1, Ordering::Relaxed);
                            // Nothing to wait for, though: ready on its first poll.
                            assert!(matches!(block_on(poll_once(&mut ack)), Some(Ok(()))));
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(ctrl.count(), 0);
    assert_eq!(stored(&store, "writer").map(|(b, _)| b), Some(false));
    let n = not_immediate.load(Ordering::Relaxed);
    block_on(writer.shutdown());
    assert_eq!(
        n, 0,
        "{n} Acks of transitions on LocalBackend (inline acknowledgement) were not is_immediate()"
    );
}

// ---------------------------------------------------------------------------------------
// Guarantee 4: no leak, no panic, with Acks outstanding at shutdown / drop / panics.
// ---------------------------------------------------------------------------------------

fn until_released(marker: &Weak<()>, what: &str) {
    let deadline = Instant::now() + BOUND;
    while marker.strong_count() > 0 {
        assert!(
            Instant::now() < deadline,
            "not within {BOUND:?}: {what} ({} holders of the backend left)",
            marker.strong_count()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn nothing_leaks_when_the_registry_goes_with_acks_outstanding() {
    for shutdown in [true, false] {
        let store = LocalBackend::new();
        let backend = Scripted::new(&store);
        let marker = Arc::downgrade(&backend.marker);
        let ctl = backend.ctl.clone();
        let writer = block_on(registry(backend, "writer", 1));
        let ctrl = writer.controller(KEY).unwrap();

        let mut kept = Vec::new();
        // Polled once with a stalled publish, polled once on a slow publish, never polled.
        let release = ctl.stall_next();
        let mut a = ctrl.increment(Some("x"));
        assert!(block_on(poll_once(&mut a)).is_none());
        kept.push(a);
        ctl.delay_ms.store(50, Ordering::Relaxed);
        let mut b = ctrl.decrement(1);
        let _ = block_on(poll_once(&mut b));
        kept.push(b);
        kept.push(ctrl.increment(Some("y")));
        let guard = ctrl.enter_owned(None);

        if shutdown {
            block_on(writer.shutdown());
        }
        drop(writer);
        // Acks and the guard dropped on other threads, one in a panicking thread.
        let last = kept.pop().unwrap();
        let panicked = std::thread::spawn(move || {
            let _held = last;
            let _guard = guard;
            panic!("a task holding an Ack panics");
        })
        .join();
        assert!(panicked.is_err());
        std::thread::spawn(move || drop(kept)).join().unwrap();
        drop(release);
        drop(ctrl);
        until_released(
            &marker,
            "the backend (and every tracker) released after the registry and its Acks went",
        );
    }
}

/// Acks awaited on another thread while the registry is shut down mid-flight: each
/// resolves (Ok or Shutdown), none hangs or panics; the store ends idle (goodbye).
#[test]
fn acks_in_flight_across_a_shutdown_resolve() {
    for threshold in [1, 2] {
        let store = LocalBackend::new();
        let backend = Scripted::new(&store);
        backend.ctl.delay_ms.store(2, Ordering::Relaxed);
        let marker = Arc::downgrade(&backend.marker);
        let writer = block_on(registry(backend, "writer", threshold));
        let ctrl = writer.controller(KEY).unwrap();
        let workers: Vec<_> = (0..3)
            .map(|t| {
                let ctrl = ctrl.clone();
                std::thread::spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(t);
                    let start = Instant::now();
                    while start.elapsed() < Duration::from_millis(600) {
                        for ack in [ctrl.increment(Some("w")), ctrl.decrement(1)] {
                            let mut ack = ack;
                            match rng.u8(0..3) {
                                0 => drop(ack),
                                1 => {
                                    let _ = block_on(poll_once(&mut ack));
                                }
                                _ => match await_bounded(ack, BOUND) {
                                    Some(Ok(())) | Some(Err(reactive_lock::Error::Shutdown { .. })) => {}
                                    Some(Err(e)) => {
                                        // Recorded as a closed-backend failure after shutdown.
                                        assert!(
                                            matches!(&e, reactive_lock::Error::Backend { source, .. } if source.kind() == BackendErrorKind::Closed),
                                            "{e:?}"
                                        );
                                    }
                                    None => panic!("an Ack hung across the shutdown"),
                                },
                            }
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        block_on(writer.shutdown());
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(ctrl.count(), 0);
        assert_eq!(stored(&store, "writer").map(|(b, _)| b), Some(false));
        drop(writer);
        drop(ctrl);
        until_released(&marker, "the backend released");
    }
}
