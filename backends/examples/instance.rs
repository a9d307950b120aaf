//! One reactive-lock instance as its own process, on Redis (`redis://`, `rediss://`) or on
//! gRPC hubs (`http://`, `https://`; several hubs comma-separated). Used by the fault tests,
//! and handy by hand:
//!
//! ```sh
//! cargo run -p reactive-lock-backends --all-features --example instance -- hold redis://127.0.0.1:6379/ payments worker-1
//! cargo run -p reactive-lock-backends --all-features --example instance -- watch http://127.0.0.1:50051 payments
//! ```
//!
//! `hold` turns busy (renewal 300 ms, expiration 1.5 s), prints `BUSY` and keeps running until
//! killed. `watch` reads the key once through to the store and prints
//! `blocked=<bool> data=<lock data>`.

use std::io::Write;
use std::time::Duration;

use reactive_lock::Backend;
use reactive_lock::{ReactiveLock, TrackerConfig};
use reactive_lock_backends::grpc::GrpcBackend;
use reactive_lock_backends::redis::RedisBackend;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, url, key, rest @ ..] = args.as_slice() else {
        eprintln!("usage: instance hold|watch URL[,URL...] KEY [INSTANCE]");
        std::process::exit(2);
    };
    let name = rest
        .first()
        .cloned()
        .unwrap_or_else(|| format!("{mode}-{}", std::process::id()));
    futures_lite::future::block_on(async {
        if url.starts_with("http") {
            let backend = GrpcBackend::connect(url.split(','))
                .await
                .unwrap_or_else(|e| exit_with(&e));
            run(mode.as_str(), key.as_str(), name, backend).await
        } else {
            let backend = RedisBackend::connect(url)
                .await
                .unwrap_or_else(|e| exit_with(&e));
            run(mode.as_str(), key.as_str(), name, backend).await
        }
    });
}

fn exit_with(e: &dyn std::fmt::Display) -> ! {
    eprintln!("{e}");
    std::process::exit(1)
}

async fn run(mode: &str, key: &str, name: String, backend: impl Backend) {
    {
        let lock = ReactiveLock::builder()
            .instance_name(name)
            .renewal(Duration::from_millis(300))
            .expiration(Duration::from_millis(1500))
            .tracker(key, TrackerConfig::new())
            .build(backend)
            .await
            .expect("build");
        match mode {
            "hold" => {
                let _busy = lock.controller(key).unwrap().enter_owned(Some("held"));
                lock.controller(key)
                    .unwrap()
                    .increment(Some("held"))
                    .await
                    .expect("publish busy");
                println!("BUSY");
                std::io::stdout().flush().unwrap();
                futures_lite::future::pending::<()>().await;
            }
            "watch" => {
                let state = lock.state(key).unwrap();
                state.refresh().await.expect("read-through");
                println!(
                    "blocked={} data={}",
                    state.is_blocked(),
                    state.lock_data().unwrap_or_default()
                );
                lock.shutdown().await;
            }
            other => {
                eprintln!("unknown mode {other}: hold or watch");
                std::process::exit(2);
            }
        }
    }
}
