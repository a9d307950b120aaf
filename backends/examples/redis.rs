//! Two instances of a payments service sharing the key "payments" through Redis: one
//! processes a batch, the other's summary endpoint waits for it and is woken the moment the
//! batch is done.
//!
//! ```sh
//! cargo run -p reactive-lock-backends --features redis --example redis                          # starts its own redis-server
//! cargo run -p reactive-lock-backends --features redis --example redis -- redis://127.0.0.1:6379/
//! ```
//!
//! No async runtime is needed: the backend runs its connections on its own executor, so a
//! plain `block_on` drives the example (tokio, smol or async-std work the same).

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_io::Timer;
use futures_lite::future;
use reactive_lock::{ReactiveLock, TrackerConfig};
use reactive_lock_backends::redis::RedisBackend;

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    // Kept alive until main returns; dropping it stops the server.
    let (url, _server) = match std::env::args().nth(1) {
        Some(url) => (url, None),
        None => {
            let server = RedisServer::start()?;
            (server.url(), Some(server))
        }
    };
    println!("using {url}");
    future::block_on(run(&url))
}

async fn run(url: &str) -> Result<(), Error> {
    // Each instance connects on its own, as separate processes would.
    let worker = instance(url, "worker-1").await?;
    let api = instance(url, "api-1").await?;
    let start = Instant::now();

    let processing = async {
        // The guard publishes "busy" to Redis; every instance sees the key blocked until it
        // is dropped, which publishes "idle".
        let payments = worker.controller("payments")?;
        let _batch = payments.enter(Some("batch-7"));
        println!("worker-1 starts batch-7");
        Timer::after(Duration::from_millis(500)).await; // persisting the batch
        println!("worker-1 finishes batch-7 after {:?}", start.elapsed());
        Ok::<_, Error>(())
    };
    let summary = async {
        // A summary request arrives on the other instance while the batch is in flight.
        Timer::after(Duration::from_millis(100)).await;
        let payments = api.state("payments")?;
        println!(
            "api-1 sees payments blocked={} by {:?}",
            payments.is_blocked(),
            payments.lock_data()
        );
        // Woken by worker-1's idle status arriving through Redis, not by polling.
        let waited = payments.wait_if_blocked().await;
        println!(
            "api-1 reads the summary (waited: {waited}) after {:?}",
            start.elapsed()
        );
        Ok::<_, Error>(())
    };
    let (processed, summarized) = future::zip(processing, summary).await;
    processed?;
    summarized?;

    // A clean exit publishes idle for both, so no entry is left to expire.
    worker.shutdown().await;
    api.shutdown().await;
    Ok(())
}

async fn instance(url: &str, name: &str) -> Result<ReactiveLock, Error> {
    let backend = RedisBackend::connect(url).await?;
    let lock = ReactiveLock::builder()
        .instance_name(name)
        .tracker("payments", TrackerConfig::new())
        .build(backend)
        .await?;
    Ok(lock)
}

/// A throwaway `redis-server` on a free local port, without persistence, stopped on drop.
struct RedisServer {
    port: u16,
    child: Child,
}

impl RedisServer {
    fn start() -> Result<Self, Error> {
        // Port 0 lets the OS pick a free port; the listener is closed again so the server can
        // bind it.
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start redis-server ({e}): install Redis (Debian: apt-get install \
                     redis-server) or pass a redis:// URL"
                )
            })?;
        let mut server = RedisServer { port, child };
        // The server accepts connections a moment after it starts.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if let Some(status) = server.child.try_wait()? {
                return Err(format!("redis-server exited at start: {status}").into());
            }
            if Instant::now() > deadline {
                return Err(
                    format!("redis-server did not listen on port {port} within 10 s").into(),
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        println!("started redis-server on port {}", server.port);
        Ok(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
