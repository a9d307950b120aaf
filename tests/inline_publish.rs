//! Which way a registry publishes its transitions when the backend publishes inline: through
//! the publisher it bound per key (`Backend::bind_publisher`) when the backend offers one,
//! else through `Backend::publish_now` by name; never through the asynchronous `publish`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reactive_lock::{
    Backend, BackendError, BoundPublisher, InstanceStatus, LocalBackend, LocalEvents, ReactiveLock,
    Snapshot, TrackerConfig,
};

mod common;
use common::until;

/// Calls of each publishing method, shared by a backend and its bound publishers.
#[derive(Default)]
struct Calls {
    publish: AtomicUsize,
    publish_now: AtomicUsize,
    bound: AtomicUsize,
}

/// The in-process store, counting how it is asked to publish; `bind` says whether it
/// offers bound publishers.
#[derive(Clone)]
struct Counting {
    store: LocalBackend,
    calls: Arc<Calls>,
    bind: bool,
}

struct CountingBound {
    inner: Box<dyn BoundPublisher>,
    calls: Arc<Calls>,
}

impl BoundPublisher for CountingBound {
    fn publish_now(&self, status: &InstanceStatus) -> Result<(), BackendError> {
        self.calls.bound.fetch_add(1, Ordering::SeqCst);
        self.inner.publish_now(status)
    }
}

impl Backend for Counting {
    type Events = LocalEvents;

    async fn publish(
        &self,
        key: &str,
        instance: &str,
        status: &InstanceStatus,
    ) -> Result<(), BackendError> {
        self.calls.publish.fetch_add(1, Ordering::SeqCst);
        self.store.publish(key, instance, status).await
    }

    async fn snapshot(&self, key: &str) -> Result<Snapshot, BackendError> {
        self.store.snapshot(key).await
    }

    async fn subscribe(
        &self,
        instance: &str,
        keys: &[String],
    ) -> Result<LocalEvents, BackendError> {
        self.store.subscribe(instance, keys).await
    }

    fn publish_now(
        &self,
        key: &str,
        instance: &str,
        status: &InstanceStatus,
    ) -> Option<Result<(), BackendError>> {
        self.calls.publish_now.fetch_add(1, Ordering::SeqCst);
        self.store.publish_now(key, instance, status)
    }

    fn bind_publisher(&self, key: &str, instance: &str) -> Option<Box<dyn BoundPublisher>> {
        if !self.bind {
            return None;
        }
        Some(Box::new(CountingBound {
            inner: self.store.bind_publisher(key, instance)?,
            calls: self.calls.clone(),
        }))
    }
}

async fn registry<B: Backend>(backend: B, name: &str) -> ReactiveLock {
    // Renewals far away: the only publishes in these tests are the transitions.
    ReactiveLock::builder()
        .instance_name(name)
        .renewal(Duration::from_secs(30))
        .expiration(Duration::from_secs(60))
        .tracker("a", TrackerConfig::new())
        .tracker("b", TrackerConfig::new())
        .build(backend)
        .await
        .unwrap()
}

/// Four transitions on two keys (by `increment`/`decrement` and by a guard), each seen by
/// a second registry; returns the calls the publishing registry made.
fn four_transitions(bind: bool) -> (usize, usize, usize) {
    futures_lite::future::block_on(async {
        let store = LocalBackend::new();
        let calls = Arc::new(Calls::default());
        let backend = Counting {
            store: store.clone(),
            calls: calls.clone(),
            bind,
        };
        let writer = registry(backend, "writer").await;
        let reader = registry(store, "reader").await;
        let (reader_a, reader_b) = (reader.state("a").unwrap(), reader.state("b").unwrap());

        let a = writer.controller("a").unwrap();
        a.increment(Some("job")).await.unwrap();
        until(&reader_a, "a blocked", |s| s.is_blocked()).await;
        assert_eq!(reader_a.lock_data().as_deref(), Some("job"));
        a.decrement(1).await.unwrap();
        until(&reader_a, "a unblocked", |s| !s.is_blocked()).await;

        let b = writer.controller("b").unwrap();
        let guard = b.enter(None);
        until(&reader_b, "b blocked", |s| s.is_blocked()).await;
        drop(guard);
        until(&reader_b, "b unblocked", |s| !s.is_blocked()).await;

        let counts = (
            calls.bound.load(Ordering::SeqCst),
            calls.publish_now.load(Ordering::SeqCst),
            calls.publish.load(Ordering::SeqCst),
        );
        writer.shutdown().await;
        reader.shutdown().await;
        counts
    })
}

#[test]
fn transitions_publish_through_the_bound_publisher() {
    let (bound, publish_now, publish) = four_transitions(true);
    assert_eq!(
        bound, 6,
        "the initial idle status of each key and each transition through its key's bound publisher"
    );
    assert_eq!(publish_now, 0, "no publish by name");
    assert_eq!(publish, 0, "nothing waited for");
}

#[test]
fn without_a_binding_transitions_publish_inline_by_name() {
    let (bound, publish_now, publish) = four_transitions(false);
    assert_eq!(bound, 0);
    assert_eq!(
        publish_now, 6,
        "the initial idle status of each key and each transition through publish_now"
    );
    assert_eq!(publish, 0, "nothing waited for");
}
