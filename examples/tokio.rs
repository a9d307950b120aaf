//! Two instances of a payments service under tokio, sharing the in-process `LocalBackend`
//! (in production: Redis or gRPC from `reactive-lock-backends`). A worker task on one
//! instance holds a guard while it processes a batch; the summary endpoint on the other
//! waits for the batch instead of reading half-written totals.
//!
//! `cargo run --example tokio`

use std::time::{Duration, Instant};

use reactive_lock::{LocalBackend, ReactiveLock, TrackerConfig};

#[tokio::main]
async fn main() -> Result<(), reactive_lock::Error> {
    // Clones of one LocalBackend are one store: each registry below stands for a separate
    // process with its own instance name.
    let backend = LocalBackend::new();
    let worker = instance("worker-1", &backend).await?;
    let api = instance("api-1", &backend).await?;
    let start = Instant::now();

    // The guard is owned ('static), so it can move into a spawned task; dropping it (at the
    // end of the task, or on a panic) turns the instance idle again.
    let batch = worker.controller("payments")?.enter_owned(Some("batch-7"));
    println!("worker-1 starts batch-7");
    let processing = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await; // persisting the batch
        println!("worker-1 finishes batch-7 after {:?}", start.elapsed());
        drop(batch);
    });

    // A summary request arrives on the other instance while the batch is in flight.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let payments = api.state("payments")?;
    println!(
        "api-1 sees payments blocked={} by {:?}",
        payments.is_blocked(),
        payments.lock_data()
    );
    // Woken by worker-1's idle status, not by polling.
    let waited = payments.wait_if_blocked().await;
    println!(
        "api-1 reads the summary (waited: {waited}) after {:?}",
        start.elapsed()
    );

    processing.await.expect("the batch task panicked");
    // A clean exit: the other instances learn at once that these are gone, instead of
    // waiting for their entries to expire.
    worker.shutdown().await;
    api.shutdown().await;
    Ok(())
}

async fn instance(
    name: &str,
    backend: &LocalBackend,
) -> Result<ReactiveLock, reactive_lock::Error> {
    ReactiveLock::builder()
        .instance_name(name)
        .tracker("payments", TrackerConfig::new().busy_threshold(1))
        .build(backend.clone())
        .await
}
