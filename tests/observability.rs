//! The events an operator reads: a debug span around every backend call, a debug event on
//! every change of a key's status with its cause, and an info event when a recovery ends
//! with how long the backend was out.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::until;
use futures_lite::future::block_on;
use reactive_lock::{LocalBackend, ReactiveLock, TrackerConfig};

const KEY: &str = "payments";

/// Everything logged in the process, as text.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Waits (bounded) for a line holding every one of `parts`.
    fn wait_for(&self, parts: &[&str]) -> String {
        let deadline = std::time::Instant::now() + common::LIMIT;
        loop {
            if let Some(line) = self
                .text()
                .lines()
                .find(|line| parts.iter().all(|part| line.contains(part)))
            {
                return line.to_string();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no line with {parts:?} in:\n{}",
                self.text()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

#[test]
fn status_changes_and_recoveries_are_logged_with_their_cause() {
    let log = Log::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    block_on(async {
        let backend = LocalBackend::new();
        let build = |name: &'static str| {
            ReactiveLock::builder()
                .instance_name(name)
                .tracker(KEY, TrackerConfig::new())
                .build(backend.clone())
        };
        let (a, b) = (build("a").await.unwrap(), build("b").await.unwrap());
        // Every backend call in a span naming key and backend (here the build's reads).
        log.wait_for(&[
            "reactive_lock.snapshot",
            "key=\"payments\"",
            "LocalBackend",
            "close",
        ]);
        log.wait_for(&["reactive_lock.subscribe", "instance=\"b\"", "close"]);
        a.controller(KEY).unwrap().increment(None).await.unwrap();
        log.wait_for(&[
            "key status changed",
            "key=\"payments\"",
            "status=Blocked",
            "cause=own transition",
        ]);
        // LocalBackend delivers a's change as the key's new state (Redis: as a's entry,
        // `cause=instance a`).
        log.wait_for(&[
            "key status changed",
            "status=Blocked",
            "cause=read of the store",
        ]);

        backend.set_available(false);
        until(&b.state(KEY).unwrap(), "b's status Unknown", |s| {
            s.status() == reactive_lock::Status::Unknown
        })
        .await;
        log.wait_for(&["status=Unknown", "cause=backend lost or back"]);
        backend.set_available(true);
        let line = log.wait_for(&["INFO", "recovered", "outage="]);
        assert!(line.contains("reactive_lock"), "{line}");
        a.shutdown().await;
        b.shutdown().await;
    });
}
