//! Two instances of a payments service sharing the key "payments" through a gRPC hub: one
//! processes a batch, the other's summary endpoint waits for it and is woken the moment the
//! batch is done.
//!
//! ```sh
//! cargo run -p reactive-lock-backends --features grpc-server --example grpc                          # runs a hub in-process
//! cargo run -p reactive-lock-backends --features grpc-server --example grpc -- http://127.0.0.1:50051
//! ```
//!
//! A standalone hub is `reactive-lock hub --listen 127.0.0.1:50051` (crate
//! `reactive-lock-cli`); the .NET ReactiveLock's gRPC server works too.

use std::time::{Duration, Instant};

use reactive_lock::{ReactiveLock, TrackerConfig};
use reactive_lock_backends::grpc::GrpcBackend;
use reactive_lock_backends::grpc::server::Hub;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let (stop_hub, hub_stopped) = tokio::sync::oneshot::channel::<()>();
    let (url, hub) = match std::env::args().nth(1) {
        Some(url) => (url, None),
        None => {
            // Port 0: the OS picks a free port, and the bound listener goes to the hub.
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let url = format!("http://{}", listener.local_addr()?);
            let hub = tokio::spawn(async move {
                let shutdown = async {
                    let _ = hub_stopped.await;
                };
                Hub::default()
                    .serve_listener(listener, None, None, shutdown)
                    .await
            });
            println!("started a hub at {url}");
            (url, Some(hub))
        }
    };

    // Each instance connects on its own, as separate processes would.
    let worker = instance(&url, "worker-1").await?;
    let api = instance(&url, "api-1").await?;
    let start = Instant::now();

    // The guard publishes "busy" to the hub; every instance sees the key blocked until it is
    // dropped, which publishes "idle". Owned, so it can move into a spawned task.
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
    // Woken by worker-1's idle status, streamed from the hub, not by polling.
    let waited = payments.wait_if_blocked().await;
    println!(
        "api-1 reads the summary (waited: {waited}) after {:?}",
        start.elapsed()
    );
    processing.await?;

    // A clean exit publishes idle for both, so no entry is left to expire.
    worker.shutdown().await;
    api.shutdown().await;
    if let Some(hub) = hub {
        // The hub ends its subscriptions and returns once the calls in flight are done.
        let _ = stop_hub.send(());
        hub.await??;
    }
    Ok(())
}

async fn instance(url: &str, name: &str) -> Result<ReactiveLock, Error> {
    let backend = GrpcBackend::connect([url]).await?;
    let lock = ReactiveLock::builder()
        .instance_name(name)
        .tracker("payments", TrackerConfig::new())
        .build(backend)
        .await?;
    Ok(lock)
}
