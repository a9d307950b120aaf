//! Hot path and local transitions, each beside its baseline in the same run.
//!
//! Run pinned to one CPU (a wake-up that crosses CPUs costs more than most of what is measured
//! here, and varies from run to run):
//! `taskset -c 0 cargo bench -p reactive-lock-benches --bench hot_path`

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use crossbeam_utils::CachePadded;
use reactive_lock::{
    Backend, InstanceStatus, LocalBackend, ReactiveLock, TrackerConfig, TrackerController,
    TrackerState,
};

/// Polls a future exactly once; the benched calls must complete on their first poll.
fn poll_once<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("expected the call to complete on its first poll"),
    }
}

fn registry_controller(threshold: usize) -> (ReactiveLock, TrackerController) {
    let lock = futures_lite::future::block_on(
        ReactiveLock::builder()
            .instance_name("bench")
            .tracker("k", TrackerConfig::new().busy_threshold(threshold))
            .build(LocalBackend::new()),
    )
    .expect("build");
    let ctrl = lock.controller("k").expect("tracker");
    (lock, ctrl)
}

fn hot_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("hot_path");

    let counter = CachePadded::new(AtomicUsize::new(0));
    group.bench_function("atomic_pair", |b| {
        b.iter(|| {
            black_box(counter.fetch_add(1, Ordering::AcqRel));
            black_box(counter.fetch_sub(1, Ordering::AcqRel));
        })
    });

    // Threshold 2: 0 → 1 → 0 never crosses it, so every call is the one-RMW path.
    let (_lock, ctrl) = registry_controller(2);
    group.bench_function("guard_enter_drop", |b| {
        b.iter(|| drop(black_box(ctrl.enter(None))))
    });
    group.bench_function("increment_decrement", |b| {
        b.iter(|| {
            poll_once(ctrl.increment(None)).expect("increment");
            poll_once(ctrl.decrement(1)).expect("decrement");
        })
    });

    // Threshold 1 on LocalBackend, no waiters: busy and back each iteration, acknowledged
    // inline (the in-process store answers on the first poll).
    let (_lock1, ctrl1) = registry_controller(1);
    group.bench_function("transition_pair_local", |b| {
        b.iter(|| {
            poll_once(ctrl1.increment(None)).expect("busy transition");
            poll_once(ctrl1.decrement(1)).expect("idle transition");
        })
    });

    // The same with lock data on the busy transition, as callers usually pass it: the text
    // is copied along the inline path into allocations kept from the previous transition.
    group.bench_function("transition_pair_local_with_data", |b| {
        b.iter(|| {
            poll_once(ctrl1.increment(Some("payment-7f3a91c2"))).expect("busy transition");
            poll_once(ctrl1.decrement(1)).expect("idle transition");
        })
    });

    // The synchronization a local transition cannot do without, and nothing else: per
    // transition one read-modify-write of a count word and two uncontended lock rounds (the
    // state's and the in-process store's), a small write under each. Beside
    // `transition_pair_local` it separates the cost of synchronizing from the cost of the
    // code around it, on CPUs whose locked instructions differ (BENCHMARKS.md).
    let word = CachePadded::new(AtomicUsize::new(0));
    let state_lock = parking_lot::Mutex::new((false, 0u64));
    let store_lock = parking_lot::Mutex::new((false, 0u64));
    group.bench_function("locked_transition_floor_pair", |b| {
        b.iter(|| {
            for busy in [true, false] {
                if busy {
                    black_box(word.fetch_add(1, Ordering::AcqRel));
                } else {
                    black_box(word.fetch_sub(1, Ordering::AcqRel));
                }
                for lock in [&state_lock, &store_lock] {
                    let mut held = lock.lock();
                    held.0 = busy;
                    held.1 += 1;
                }
            }
        })
    });

    // The two shared structures a local transition writes, each alone (the decomposition of
    // `transition_pair_local` in BENCHMARKS.md): the in-process store's publish — bound to
    // the key and instance, as a registry's transitions publish, and by name — and the
    // state's change (with its waiter check).
    // (Increasing sequences: the store keeps the newest status and ignores older ones.)
    let store = LocalBackend::new();
    let valid_for = Duration::from_secs(10);
    let mut seq = 0;
    let bound = store.bind_publisher("k", "a").expect("the store binds");
    group.bench_function("local_store_bound_publish_pair", |b| {
        b.iter(|| {
            seq += 2;
            let busy = InstanceStatus::busy(None, seq - 1, valid_for);
            let idle = InstanceStatus::idle(seq, valid_for);
            bound.publish_now(&busy).expect("busy");
            bound.publish_now(&idle).expect("idle");
        })
    });
    group.bench_function("local_store_publish_pair", |b| {
        b.iter(|| {
            seq += 2;
            let busy = InstanceStatus::busy(None, seq - 1, valid_for);
            let idle = InstanceStatus::idle(seq, valid_for);
            assert!(matches!(store.publish_now("k", "a", &busy), Some(Ok(()))));
            assert!(matches!(store.publish_now("k", "a", &idle), Some(Ok(()))));
        })
    });
    let state = TrackerState::new();
    group.bench_function("state_change_pair", |b| {
        b.iter(|| {
            black_box(state.set_blocked(None));
            black_box(state.set_unblocked());
        })
    });

    const THREADS: usize = 8;
    let standalone = TrackerController::new(usize::MAX >> 33).expect("controller");
    group.bench_function("contended_8_threads", |b| {
        b.iter_custom(|iters| {
            std::thread::scope(|s| {
                let start = Instant::now();
                for _ in 0..THREADS {
                    s.spawn(|| {
                        for _ in 0..iters {
                            drop(black_box(standalone.enter(None)));
                        }
                    });
                }
                start
            })
            .elapsed()
        })
    });
    group.bench_function("contended_atomic_8_threads", |b| {
        b.iter_custom(|iters| {
            std::thread::scope(|s| {
                let start = Instant::now();
                for _ in 0..THREADS {
                    s.spawn(|| {
                        for _ in 0..iters {
                            black_box(counter.fetch_add(1, Ordering::AcqRel));
                            black_box(counter.fetch_sub(1, Ordering::AcqRel));
                        }
                    });
                }
                start
            })
            .elapsed()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = hot_path
}
criterion_main!(benches);
