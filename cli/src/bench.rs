//! `bench`: distributed load in one process. `--instances` registries share the backend,
//! each runs `--tasks` tasks that enter and leave keys as fast as the backend acknowledges;
//! meanwhile one instance flips a probe key that another watches, to time propagation.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use hdrhistogram::Histogram;
use reactive_lock::{ReactiveLock, Status, TrackerConfig};

use crate::keys::AnyBackend;

/// What `bench` measures with.
pub(crate) struct BenchArgs {
    pub(crate) instances: usize,
    pub(crate) tasks: usize,
    pub(crate) keys: usize,
    pub(crate) duration: Duration,
    pub(crate) json: bool,
}

const PROBE: &str = "bench-probe";

fn histogram() -> Histogram<u64> {
    // Microseconds, up to a minute, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    serde_json::json!({
        "count": h.len(),
        "p50_us": h.value_at_quantile(0.50),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
    })
}

pub(crate) async fn bench(backends: Vec<AnyBackend>, args: BenchArgs) -> Result<ExitCode, String> {
    if args.instances < 2 || args.tasks == 0 || args.keys == 0 {
        return Err("bench needs --instances 2 or more, and at least one task and one key".into());
    }
    let keys: Vec<String> = (0..args.keys).map(|k| format!("bench-{k}")).collect();
    let mut locks = Vec::with_capacity(args.instances);
    for (i, backend) in backends.into_iter().enumerate() {
        let mut builder = ReactiveLock::builder()
            .instance_name(format!("bench-{}-{i}", std::process::id()))
            .tracker(PROBE, TrackerConfig::new());
        for key in &keys {
            builder = builder.tracker(key.clone(), TrackerConfig::new());
        }
        locks.push(builder.build(backend).await.map_err(|e| e.to_string())?);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let transitions = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for (i, lock) in locks.iter().enumerate() {
        for t in 0..args.tasks {
            let ctrl = lock
                .controller(&keys[(i * args.tasks + t) % keys.len()])
                .map_err(|e| e.to_string())?;
            let (stop, transitions) = (stop.clone(), transitions.clone());
            workers.push(tokio::spawn(async move {
                let mut acks = histogram();
                while !stop.load(Ordering::Relaxed) {
                    for step in 0..2 {
                        let at = Instant::now();
                        let ack = if step == 0 {
                            ctrl.increment(None)
                        } else {
                            ctrl.decrement(1)
                        };
                        let transition = !ack.is_immediate();
                        if ack.await.is_err() {
                            continue;
                        }
                        if transition {
                            transitions.fetch_add(1, Ordering::Relaxed);
                            let _ = acks.record(at.elapsed().as_micros() as u64);
                        }
                    }
                }
                acks
            }));
        }
    }

    // Propagation: instance 0 flips the probe; instance 1 watches it.
    let probe = {
        let (ctrl, state) = (
            locks[0].controller(PROBE).map_err(|e| e.to_string())?,
            locks[1].state(PROBE).map_err(|e| e.to_string())?,
        );
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seen = histogram();
            let mut changes = state.changes();
            while !stop.load(Ordering::Relaxed) {
                for busy in [true, false] {
                    let at = Instant::now();
                    let ack = if busy {
                        ctrl.increment(None)
                    } else {
                        ctrl.decrement(1)
                    };
                    let _ = ack.await;
                    let want = if busy {
                        Status::Blocked
                    } else {
                        Status::Unblocked
                    };
                    let arrived = tokio::time::timeout(Duration::from_secs(5), async {
                        while state.status() != want {
                            if changes.next().await.is_none() {
                                return;
                            }
                        }
                    })
                    .await;
                    if arrived.is_ok() && state.status() == want {
                        let _ = seen.record(at.elapsed().as_micros() as u64);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        })
    };

    let bar = if args.json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(args.duration.as_secs().max(1))
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} s  {msg}")
            .expect("a valid template"),
    );
    while started.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_millis(250)).await;
        bar.set_position(started.elapsed().as_secs());
        let rate = transitions.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
        bar.set_message(format!("{rate:.0} transitions/s"));
    }
    stop.store(true, Ordering::Relaxed);
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let mut acks = histogram();
    for worker in workers {
        let h = worker.await.map_err(|e| e.to_string())?;
        acks.add(&h).map_err(|e| e.to_string())?;
    }
    let propagation = probe.await.map_err(|e| e.to_string())?;
    for lock in &locks {
        lock.shutdown().await;
    }
    let total = transitions.load(Ordering::Relaxed);
    let report = serde_json::json!({
        "instances": args.instances,
        "tasks_per_instance": args.tasks,
        "keys": args.keys,
        "seconds": elapsed,
        "transitions": total,
        "transitions_per_second": total as f64 / elapsed,
        "acknowledged_transition": percentiles(&acks),
        "propagation": percentiles(&propagation),
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "{total} transitions in {elapsed:.1} s: {:.0}/s",
            total as f64 / elapsed
        );
        for (what, h) in [
            ("acknowledged transition", &acks),
            ("propagation", &propagation),
        ] {
            println!(
                "{what}: p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs ({} samples)",
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max(),
                h.len()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
