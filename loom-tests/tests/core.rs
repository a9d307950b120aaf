//! loom models of the core's concurrency: the packed controller word, waiter registration,
//! handler ordering, the driver's bell. Every atomic and mutex of the core goes through its
//! `sync` shim, and event-listener is built with its `loom` feature, so loom explores their
//! interleavings.
#![cfg(loom)]

use futures_lite::StreamExt;
use loom::sync::Arc;
use loom::sync::Mutex;
use loom::thread;
use reactive_lock::{Status, TrackerController, TrackerState};

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        // LOOM_MAX_PREEMPTIONS overrides; 3 keeps each model within CI's budget.
        builder.preemption_bound = Some(3);
    }
    builder.check(f);
}

/// Records the handler calls of a state, in the order they ran.
fn log_handlers(state: &TrackerState) -> Arc<Mutex<Vec<bool>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (b, u) = (log.clone(), log.clone());
    state.on_blocked(move || b.lock().unwrap().push(true));
    state.on_unblocked(move || u.lock().unwrap().push(false));
    log
}

/// Handler calls must alternate blocked/unblocked starting from unblocked, and end on the
/// final state: in order, and never twice for one change.
fn assert_consistent(log: &[bool], final_blocked: bool) {
    for (i, &blocked) in log.iter().enumerate() {
        assert_eq!(blocked, i % 2 == 0, "handler calls must alternate: {log:?}");
    }
    assert_eq!(
        log.last().copied().unwrap_or(false),
        final_blocked,
        "last handler matches the state: {log:?}"
    );
}

#[test]
fn two_threads_cross_the_threshold_concurrently() {
    model(|| {
        let ctrl = TrackerController::new(2).unwrap();
        let log = log_handlers(ctrl.state());
        let t: Vec<_> = (0..2)
            .map(|_| {
                let ctrl = ctrl.clone();
                thread::spawn(move || drop(ctrl.increment(None)))
            })
            .collect();
        for t in t {
            t.join().unwrap();
        }
        assert_eq!(ctrl.count(), 2);
        assert!(ctrl.is_busy() && ctrl.state().is_blocked());
        assert_eq!(*log.lock().unwrap(), [true], "exactly one busy transition");

        let t: Vec<_> = (0..2)
            .map(|_| {
                let ctrl = ctrl.clone();
                thread::spawn(move || drop(ctrl.decrement(1)))
            })
            .collect();
        for t in t {
            t.join().unwrap();
        }
        assert_eq!(ctrl.count(), 0);
        assert!(!ctrl.is_busy() && !ctrl.state().is_blocked());
        assert_eq!(
            *log.lock().unwrap(),
            [true, false],
            "exactly one idle transition"
        );
    });
}

#[test]
fn waiter_registering_while_another_thread_unblocks_is_woken() {
    model(|| {
        let state = TrackerState::new();
        state.set_blocked(None);
        let waiter = {
            let state = state.clone();
            // A lost wake-up leaves this thread parked forever: loom reports the deadlock.
            thread::spawn(move || loom::future::block_on(state.wait_if_blocked()))
        };
        let unblocker = {
            let state = state.clone();
            thread::spawn(move || assert!(state.set_unblocked()))
        };
        unblocker.join().unwrap();
        let _waited = waiter.join().unwrap();
        assert!(!state.is_blocked());
    });
}

#[test]
fn handler_order_under_concurrent_transitions() {
    model(|| {
        let state = TrackerState::new();
        let log = log_handlers(&state);
        let a = {
            let state = state.clone();
            thread::spawn(move || {
                state.set_blocked(None);
            })
        };
        let b = {
            let state = state.clone();
            thread::spawn(move || {
                state.set_unblocked();
            })
        };
        a.join().unwrap();
        b.join().unwrap();
        assert_consistent(&log.lock().unwrap(), state.is_blocked());
    });
}

#[test]
fn guard_drop_racing_increment() {
    model(|| {
        let ctrl = TrackerController::new(1).unwrap();
        let log = log_handlers(ctrl.state());
        let guard = ctrl.enter_owned(None);
        let dropper = thread::spawn(move || drop(guard));
        let incrementer = {
            let ctrl = ctrl.clone();
            thread::spawn(move || drop(ctrl.increment(Some("x"))))
        };
        dropper.join().unwrap();
        incrementer.join().unwrap();
        assert_eq!(ctrl.count(), 1);
        assert!(
            ctrl.is_busy(),
            "count 1 at threshold 1 ends busy whatever the order"
        );
        assert!(
            ctrl.state().is_blocked(),
            "local state follows the last transition"
        );
        assert_consistent(&log.lock().unwrap(), true);
    });
}

#[test]
fn waiter_released_by_a_guard_drop_on_another_thread() {
    model(|| {
        let ctrl = TrackerController::new(1).unwrap();
        let guard = ctrl.enter_owned(Some("work"));
        let waiter = {
            let state = ctrl.state().clone();
            thread::spawn(move || loom::future::block_on(state.wait_if_blocked()))
        };
        let dropper = thread::spawn(move || drop(guard));
        dropper.join().unwrap();
        waiter.join().unwrap();
        assert!(!ctrl.state().is_blocked());
        assert_eq!(ctrl.state().lock_data(), None);
    });
}

#[test]
fn saturating_decrement_racing_increment() {
    model(|| {
        let ctrl = TrackerController::new(1).unwrap();
        let log = log_handlers(ctrl.state());
        drop(ctrl.increment(None));
        let dec = {
            let ctrl = ctrl.clone();
            thread::spawn(move || drop(ctrl.decrement(5)))
        };
        let inc = {
            let ctrl = ctrl.clone();
            thread::spawn(move || drop(ctrl.increment(None)))
        };
        dec.join().unwrap();
        inc.join().unwrap();
        let (count, busy, blocked) = (ctrl.count(), ctrl.is_busy(), ctrl.state().is_blocked());
        assert!(
            (count == 1 && busy && blocked) || (count == 0 && !busy && !blocked),
            "count {count}, busy {busy}, blocked {blocked}"
        );
        assert_consistent(&log.lock().unwrap(), blocked);
    });
}

#[test]
fn change_stream_sees_a_change_made_while_it_registers() {
    model(|| {
        let state = TrackerState::new();
        let watcher = {
            let state = state.clone();
            // The stream's first item is the first change after `changes()`; a lost wake-up
            // parks this thread forever and loom reports the deadlock.
            let mut changes = state.changes();
            thread::spawn(move || loom::future::block_on(changes.next()))
        };
        let changer = {
            let state = state.clone();
            thread::spawn(move || assert!(state.set_blocked(None)))
        };
        changer.join().unwrap();
        assert_eq!(watcher.join().unwrap(), Some(Status::Blocked));
    });
}

#[test]
fn hysteresis_holds_while_a_drop_races_an_increment() {
    model(|| {
        let ctrl = TrackerController::new(2).unwrap();
        let log = log_handlers(ctrl.state());
        let first = ctrl.enter_owned(None);
        let second = ctrl.enter_owned(None);
        // 2 -> 1 below the threshold (busy until zero) racing a +1/-1 on another thread:
        // the count never reaches zero, so nothing turns idle and nothing turns busy again.
        let dropper = thread::spawn(move || drop(first));
        let visitor = {
            let ctrl = ctrl.clone();
            thread::spawn(move || drop(ctrl.enter_owned(None)))
        };
        dropper.join().unwrap();
        visitor.join().unwrap();
        assert_eq!(ctrl.count(), 1);
        assert!(
            ctrl.is_busy() && ctrl.state().is_blocked(),
            "busy until zero"
        );
        assert_eq!(*log.lock().unwrap(), [true], "one busy transition so far");
        drop(second);
        assert!(!ctrl.is_busy() && !ctrl.state().is_blocked());
        assert_eq!(*log.lock().unwrap(), [true, false]);
    });
}

/// The driver's bell: a tracker rung while the driver works is never lost, and the driver's
/// look after taking it sees what the ringer did before ringing — also when the second ring
/// found the tracker still queued and pushed nothing (the driver had taken the list but not
/// yet cleared the flag). A lost ring leaves the driver parked and loom reports the deadlock;
/// a stale look sees 1 where 2 was written.
#[test]
fn driver_bell_loses_no_ring_and_shows_what_the_ringer_wrote() {
    use loom::sync::atomic::{AtomicUsize, Ordering};
    use reactive_lock::Bell;
    model(|| {
        let bell = Arc::new(Bell::new(1));
        // Stands for the tracker's pending status, written before each ring.
        let status = Arc::new(AtomicUsize::new(0));
        let ringer = {
            let (bell, status) = (bell.clone(), status.clone());
            thread::spawn(move || {
                status.store(1, Ordering::Relaxed);
                bell.ring(0);
                status.store(2, Ordering::Relaxed);
                bell.ring(0);
            })
        };
        // The driver's loop: listen, take what rang, look; wait only when the look did not
        // see the last status.
        loom::future::block_on(async {
            loop {
                let listener = bell.listen();
                if bell.take().contains(&0) && status.load(Ordering::Relaxed) == 2 {
                    break;
                }
                listener.await;
            }
        });
        ringer.join().unwrap();
    });
}
