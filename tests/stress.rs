//! Many waiters released by one change, on one executor and on threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use reactive_lock::{TrackerController, TrackerState};

#[test]
fn thousand_waiting_tasks_released_by_one_unblock() {
    let state = TrackerState::new();
    state.set_blocked(Some("batch"));
    let ex = smol::LocalExecutor::new();
    let resumed = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let state = state.clone();
            let resumed = resumed.clone();
            ex.spawn(async move {
                let waited = state.wait_if_blocked().await;
                resumed.fetch_add(1, Ordering::SeqCst);
                waited
            })
        })
        .collect();
    smol::block_on(ex.run(async {
        // Let every task register as a waiter.
        while ex.try_tick() {}
        assert_eq!(
            resumed.load(Ordering::SeqCst),
            0,
            "nobody passes while blocked"
        );
        assert!(state.set_unblocked());
        for task in tasks {
            assert!(task.await, "every task had to wait");
        }
    }));
    assert_eq!(resumed.load(Ordering::SeqCst), 1000);
}

#[test]
fn thousand_waiting_threads_released_by_one_unblock() {
    let ctrl = TrackerController::new(1).unwrap();
    let guard = ctrl.enter_owned(None);
    let state = ctrl.state().clone();
    let barrier = Arc::new(std::sync::Barrier::new(1001));
    let threads: Vec<_> = (0..1000)
        .map(|_| {
            let state = state.clone();
            let barrier = barrier.clone();
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    barrier.wait();
                    state.wait_if_blocked_blocking();
                })
                .unwrap()
        })
        .collect();
    barrier.wait();
    drop(guard);
    for t in threads {
        t.join().unwrap();
    }
    assert!(!state.is_blocked());
}

/// On an in-process store every transition is acknowledged inline, also while the driver
/// renews the same key on its own thread: its renewals publish inline too, so it never holds
/// the publishing role that would make a transition wait for it (an unpinned
/// `hot_path/transition_pair_local` run once found a transition pending).
#[test]
fn local_transitions_stay_immediate_while_the_driver_renews() {
    use reactive_lock::{LocalBackend, ReactiveLock, TrackerConfig};
    use std::time::{Duration, Instant};

    let lock = futures_lite::future::block_on(
        ReactiveLock::builder()
            .instance_name("renewing")
            .renewal(Duration::from_millis(1))
            .expiration(Duration::from_secs(5))
            .tracker("k", TrackerConfig::new().busy_threshold(1))
            .build(LocalBackend::new()),
    )
    .expect("build");
    let ctrl = lock.controller("k").expect("tracker");
    let renewals_before = lock.metrics().renewals;
    let until = Instant::now() + Duration::from_millis(400);
    let mut pairs = 0u64;
    while Instant::now() < until {
        for _ in 0..1000 {
            let busy = ctrl.increment(None);
            assert!(busy.is_immediate(), "busy transition {pairs} waited");
            drop(busy);
            let idle = ctrl.decrement(1);
            assert!(idle.is_immediate(), "idle transition {pairs} waited");
            drop(idle);
            pairs += 1;
        }
    }
    assert!(
        lock.metrics().renewals > renewals_before + 10,
        "the driver renewed meanwhile ({} renewals)",
        lock.metrics().renewals - renewals_before
    );
    futures_lite::future::block_on(lock.shutdown());
}
