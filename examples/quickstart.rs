//! Three instances of a service in one process share the in-process backend: one turns
//! busy, the others see the key blocked, wait, and wake the moment it turns idle.
//!
//! `cargo run --example quickstart`

use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use reactive_lock::{LocalBackend, ReactiveLock, TrackerConfig};

fn main() -> Result<(), reactive_lock::Error> {
    futures_lite::future::block_on(async {
        let backend = LocalBackend::new(); // shared store: think "Redis", in memory
        let mut instances = Vec::new();
        for name in ["api-1", "api-2", "worker-1"] {
            let lock = ReactiveLock::builder()
                .instance_name(name)
                .tracker(
                    "payments",
                    TrackerConfig::new()
                        .busy_threshold(1)
                        .on_blocked(move || {
                            println!("  [{name}] on_blocked: payments are in flight")
                        })
                        .on_unblocked(move || {
                            println!("  [{name}] on_unblocked: payments are settled")
                        }),
                )
                .build(backend.clone())
                .await?;
            instances.push(lock);
        }
        let worker = &instances[2];
        let api = instances[0].state("payments")?;
        let start = Instant::now();

        println!("worker-1 starts a batch");
        let batch = worker.controller("payments")?;
        let mut changes = api.changes();
        batch.increment(Some("batch-7")).await?;
        while !api.is_blocked() {
            changes.next().await;
        }
        println!(
            "api-1 sees: blocked={} lock_data={:?}",
            api.is_blocked(),
            api.lock_data()
        );

        // The summary endpoint waits for the batch instead of reading half-written totals.
        let reader = {
            let api = api.clone();
            std::thread::spawn(move || {
                let waited = api.wait_if_blocked_blocking();
                println!(
                    "api-1 /payments-summary proceeds (waited: {waited}) after {:?}",
                    start.elapsed()
                );
            })
        };
        async_io::Timer::after(Duration::from_millis(300)).await;
        println!("worker-1 finishes the batch after {:?}", start.elapsed());
        batch.decrement(1).await?;
        reader.join().expect("reader thread");

        for lock in &instances {
            lock.shutdown().await;
        }
        println!("all instances shut down cleanly");
        Ok(())
    })
}
