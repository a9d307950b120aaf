//! An `Ack` dropped before its first poll, on a backend that publishes only asynchronously:
//! its transition still reaches the store long before the next renewal, published by the
//! driver (handed over when the `Ack` is dropped, and at the latest when its lease on the
//! key's publishing role runs out).

use std::time::Duration;

use reactive_lock::{
    Backend, BackendError, InstanceStatus, LocalBackend, LocalEvents, ReactiveLock, Snapshot,
    Status, TrackerConfig,
};

mod common;
use common::until;

/// The in-process store without its inline publish: every transition goes through the
/// asynchronous `publish`, as over Redis or gRPC.
#[derive(Clone)]
struct AsyncOnly(LocalBackend);

impl Backend for AsyncOnly {
    type Events = LocalEvents;

    async fn publish(
        &self,
        key: &str,
        instance: &str,
        status: &InstanceStatus,
    ) -> Result<(), BackendError> {
        self.0.publish(key, instance, status).await
    }

    async fn snapshot(&self, key: &str) -> Result<Snapshot, BackendError> {
        self.0.snapshot(key).await
    }

    async fn subscribe(
        &self,
        instance: &str,
        keys: &[String],
    ) -> Result<LocalEvents, BackendError> {
        self.0.subscribe(instance, keys).await
    }
}

async fn registry<B: Backend>(backend: B, name: &str) -> ReactiveLock {
    // Renewals far beyond the wait in `until`: only the driver's hand-over can publish in
    // time.
    ReactiveLock::builder()
        .instance_name(name)
        .renewal(Duration::from_secs(60))
        .expiration(Duration::from_secs(120))
        .tracker("k", TrackerConfig::new())
        .build(backend)
        .await
        .unwrap()
}

#[test]
fn an_ack_dropped_before_its_first_poll_still_publishes_its_transition() {
    futures_lite::future::block_on(async {
        let store = LocalBackend::new();
        let writer = registry(AsyncOnly(store.clone()), "writer").await;
        let reader = registry(store, "reader").await;
        let ctrl = writer.controller("k").unwrap();
        let seen = reader.state("k").unwrap();
        until(&seen, "the reader to see the writer idle", |s| {
            s.status() == Status::Unblocked
        })
        .await;

        let ack = ctrl.increment(Some("dropped"));
        assert!(!ack.is_immediate(), "the transition waits for the backend");
        drop(ack);
        until(&seen, "the busy transition of a dropped Ack", |s| {
            s.lock_data().as_deref() == Some("dropped")
        })
        .await;

        drop(ctrl.decrement(1));
        until(&seen, "the idle transition of a dropped Ack", |s| {
            s.status() == Status::Unblocked
        })
        .await;
        writer.shutdown().await;
        reader.shutdown().await;
    });
}
