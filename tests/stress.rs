//! Many waiters released by one change, on one executor and on threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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
        // A lost wake-up leaves a task pending forever: fail, naming it, instead of hanging.
        let all = async {
            for task in tasks {
                assert!(task.await, "every task had to wait");
            }
            true
        };
        let in_time = futures_lite::future::or(all, async {
            async_io::Timer::after(Duration::from_secs(30)).await;
            false
        })
        .await;
        assert!(
            in_time,
            "lost wake-up: {} of 1000 tasks resumed within 30 s of the unblock",
            resumed.load(Ordering::SeqCst)
        );
    }));
    assert_eq!(resumed.load(Ordering::SeqCst), 1000);
}

#[test]
fn thousand_waiting_threads_released_by_one_unblock() {
    let ctrl = TrackerController::new(1).unwrap();
    let guard = ctrl.enter_owned(None);
    let state = ctrl.state().clone();
    let barrier = Arc::new(std::sync::Barrier::new(1001));
    let (released, resumed) = std::sync::mpsc::channel();
    let threads: Vec<_> = (0..1000)
        .map(|_| {
            let state = state.clone();
            let barrier = barrier.clone();
            let released = released.clone();
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    barrier.wait();
                    state.wait_if_blocked_blocking();
                    let _ = released.send(());
                })
                .unwrap()
        })
        .collect();
    barrier.wait();
    drop(guard);
    // A lost wake-up leaves a thread parked forever: fail, counting them, instead of hanging.
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in 0..1000 {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            resumed.recv_timeout(left).is_ok(),
            "lost wake-up: {} of 1000 threads still waiting 30 s after the unblock",
            1000 - n
        );
    }
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
