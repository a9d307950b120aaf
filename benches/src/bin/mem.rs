//! Memory: a registry with N trackers, a tenth of them busy, over Redis or in-process.
//!
//! `cargo run -p reactive-lock-benches --release --bin mem -- --trackers 10000 --backend redis|local`
//! (`--max-rss-mb N` makes it fail when the peak RSS exceeds N MB, for CI)
//!
//! Prints two JSON lines: the resident set after convergence (`rss_bytes`, growth per tracker
//! over the process before the registry was built), then the peak resident set while one
//! tracker flaps at ~100,000 transitions/s for 5 s (coalescing keeps memory flat).

use std::time::{Duration, Instant};

use futures_lite::future::block_on;
use reactive_lock::{Backend, LocalBackend, ReactiveLock, TrackerConfig};
use reactive_lock_backends::redis::RedisBackend;
use reactive_lock_backends::testing::RedisServer;
use reactive_lock_benches::arg;

/// A `/proc/self/status` field in bytes (`VmRSS`, `VmHWM`).
fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

async fn run(backend: impl Backend, trackers: usize, name: &str) {
    let before = proc_status_bytes("VmRSS:");
    let mut builder = ReactiveLock::builder().instance_name("mem");
    for i in 0..trackers {
        builder = builder.tracker(format!("key-{i}"), TrackerConfig::new());
    }
    let lock = builder.build(backend).await.expect("build");
    for i in (0..trackers).step_by(10) {
        lock.controller(&format!("key-{i}"))
            .unwrap()
            .increment(Some("busy"))
            .await
            .expect("busy");
    }
    // Converged: every busy tracker acknowledged; give the subscription a moment to settle.
    async_io::Timer::after(Duration::from_millis(500)).await;
    let rss = proc_status_bytes("VmRSS:");
    println!(
        "{{\"backend\":\"{name}\",\"trackers\":{trackers},\"rss_bytes\":{rss},\"baseline_rss_bytes\":{before},\"per_tracker_bytes\":{}}}",
        rss.saturating_sub(before) / trackers as u64
    );

    let ctrl = lock.controller("key-1").unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    let mut transitions = 0u64;
    while Instant::now() < end {
        for _ in 0..1_000 {
            drop(ctrl.enter(None));
        }
        transitions += 2_000;
        async_io::Timer::after(Duration::from_millis(20)).await; // ~100,000 transitions/s
    }
    println!(
        "{{\"backend\":\"{name}\",\"flapping_transitions\":{transitions},\"peak_rss_bytes\":{},\"rss_after_bytes\":{}}}",
        proc_status_bytes("VmHWM:"),
        proc_status_bytes("VmRSS:")
    );
    lock.shutdown().await;
    if let Ok(max_mb) = arg("--max-rss-mb", "").parse::<u64>() {
        let peak = proc_status_bytes("VmHWM:");
        if peak > max_mb * 1_000_000 {
            eprintln!("peak RSS {peak} bytes exceeds --max-rss-mb {max_mb}");
            std::process::exit(1);
        }
    }
}

fn main() {
    let trackers: usize = arg("--trackers", "10000").parse().expect("--trackers N");
    match arg("--backend", "redis").as_str() {
        "local" => block_on(run(LocalBackend::new(), trackers, "local")),
        "redis" => {
            let server = RedisServer::start();
            block_on(async {
                run(
                    RedisBackend::connect(&server.url()).await.expect("connect"),
                    trackers,
                    "redis",
                )
                .await
            });
        }
        other => panic!("--backend redis|local, not {other}"),
    }
}
