//! Wake-ups: the state's waiters against raw `event_listener::Event`s, same protocol.
//!
//! `taskset -c 0 cargo bench -p reactive-lock-benches --bench wake`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use event_listener::{Event, Listener};
use reactive_lock::TrackerState;

/// A blocked flag plus an event: the raw equivalent of a `TrackerState`.
#[derive(Default)]
struct RawGate {
    blocked: AtomicBool,
    event: Event,
}

impl RawGate {
    fn set_blocked(&self) {
        self.blocked.store(true, Ordering::SeqCst);
    }
    fn set_unblocked(&self) {
        self.blocked.store(false, Ordering::SeqCst);
        self.event.notify(usize::MAX);
    }
    fn wait(&self) {
        while self.blocked.load(Ordering::SeqCst) {
            let listener = self.event.listen();
            if !self.blocked.load(Ordering::SeqCst) {
                break;
            }
            listener.wait();
        }
    }
}

trait Gate: Send + Sync + 'static {
    fn block(&self);
    fn unblock(&self);
    fn wait(&self);
}

impl Gate for RawGate {
    fn block(&self) {
        self.set_blocked()
    }
    fn unblock(&self) {
        self.set_unblocked()
    }
    fn wait(&self) {
        RawGate::wait(self)
    }
}

impl Gate for TrackerState {
    fn block(&self) {
        self.set_blocked(None);
    }
    fn unblock(&self) {
        self.set_unblocked();
    }
    fn wait(&self) {
        self.wait_if_blocked_blocking();
    }
}

/// `iters` round trips between two threads through two gates.
fn pingpong<G: Gate>(ping: Arc<G>, pong: Arc<G>, iters: u64) -> Duration {
    ping.block();
    pong.block();
    let (p, q) = (ping.clone(), pong.clone());
    let responder = std::thread::spawn(move || {
        for _ in 0..iters {
            p.wait();
            p.block();
            q.unblock();
        }
    });
    let start = Instant::now();
    for _ in 0..iters {
        pong.block();
        ping.unblock();
        pong.wait();
    }
    let elapsed = start.elapsed();
    responder.join().unwrap();
    elapsed
}

fn wake(c: &mut Criterion) {
    let mut group = c.benchmark_group("wake");
    group.bench_function("raw_event_pingpong", |b| {
        b.iter_custom(|iters| {
            pingpong(
                Arc::new(RawGate::default()),
                Arc::new(RawGate::default()),
                iters,
            )
        })
    });
    group.bench_function("state_pingpong", |b| {
        b.iter_custom(|iters| {
            pingpong(
                Arc::new(TrackerState::new()),
                Arc::new(TrackerState::new()),
                iters,
            )
        })
    });

    group.bench_function("release_1000_waiters", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let state = TrackerState::new();
                state.set_blocked(None);
                let ex = smol::LocalExecutor::new();
                let resumed = Arc::new(AtomicUsize::new(0));
                for _ in 0..1000 {
                    let state = state.clone();
                    let resumed = resumed.clone();
                    ex.spawn(async move {
                        state.wait_if_blocked().await;
                        resumed.fetch_add(1, Ordering::Relaxed);
                    })
                    .detach();
                }
                while ex.try_tick() {}
                assert_eq!(resumed.load(Ordering::Relaxed), 0);
                let start = Instant::now();
                state.set_unblocked();
                while resumed.load(Ordering::Relaxed) < 1000 {
                    ex.try_tick();
                }
                total += start.elapsed();
            }
            total
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = wake
}
criterion_main!(benches);
