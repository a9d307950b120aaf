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
