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

/// Lock data of every length, and none, in turn: each transition's status reaches the store
/// with exactly its own lock data (the copies along the inline path reuse their allocations
/// from one transition to the next; none may carry over a previous transition's text).
#[test]
fn each_inline_transition_stores_exactly_its_own_lock_data() {
    futures_lite::future::block_on(async {
        let store = LocalBackend::new();
        let writer = registry(store.clone(), "writer").await;
        let a = writer.controller("a").unwrap();
        let long = "x".repeat(5_000);
        let datas: [Option<&str>; 9] = [
            Some("a-long-first-lock-data"),
            None,
            Some("b"),
            Some(""),
            Some(&long),
            None,
            Some("c"),
            Some("déjà-vu;\n"),
            None,
        ];
        for data in datas.iter().copied().cycle().take(3 * datas.len()) {
            a.increment(data).await.unwrap();
            let busy = store.snapshot("a").await.unwrap();
            let entry = &busy.entries[0];
            assert!(entry.busy);
            let expected = data.filter(|data| !data.is_empty());
            assert_eq!(
                entry.lock_data.as_deref(),
                expected,
                "the store holds this transition's data"
            );
            assert_eq!(writer.state("a").unwrap().lock_data().as_deref(), expected);
            a.decrement(1).await.unwrap();
            let idle = store.snapshot("a").await.unwrap();
            assert!(!idle.entries[0].busy);
            assert_eq!(
                idle.entries[0].lock_data, None,
                "an idle status carries no data"
            );
            assert_eq!(writer.state("a").unwrap().lock_data(), None);
        }
        writer.shutdown().await;
    });
}
