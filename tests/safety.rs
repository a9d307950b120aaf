//! The one guarantee where Redis cannot produce the fault (its clock cannot be stepped
//! under libfaketime): an instance never answers "unblocked" while another is busy.
//! `SteppedClockStore` sends per-entry updates the way the Redis backend does, stamped on a
//! store clock the test can step back; `LosingSubscriptions` ends subscriptions and refuses
//! new ones while reads still work.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::{Stream, StreamExt};
use reactive_lock::{
    Backend, BackendError, BackendErrorKind, BackendEvent, Entry, InstanceStatus, LocalBackend,
    ReactiveLock, Snapshot, Status, StoreTime, TrackerConfig, UnknownPolicy,
};

mod common;
use common::until;

const KEY: &str = "k";

type Events = Pin<Box<dyn Stream<Item = BackendEvent> + Send>>;
/// Subscribers of a store: the instance and where its events go.
type Subscribers = Arc<Mutex<Vec<(String, async_channel::Sender<BackendEvent>)>>>;

/// A store whose clock runs `behind` nanoseconds behind the system clock.
#[derive(Clone, Default)]
struct SteppedClockStore {
    behind: Arc<AtomicU64>,
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    subscribers: Subscribers,
}

impl SteppedClockStore {
    fn now(&self) -> StoreTime {
        let now = StoreTime::now_system().as_unix_nanos();
        StoreTime::from_unix_nanos(now - self.behind.load(Ordering::SeqCst))
    }

    fn step_back(&self, by: Duration) {
        self.behind.store(by.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Backend for SteppedClockStore {
    type Events = Events;

    async fn publish(
        &self,
        key: &str,
        instance: &str,
        status: &InstanceStatus,
    ) -> Result<(), BackendError> {
        let now = self.now();
        let entry = Entry::new(
            instance,
            status.busy,
            status.lock_data.clone(),
            now + status.valid_for,
        )
        .with_seq(status.seq);
        {
            let mut entries = self.entries.lock().unwrap();
            if let Some(held) = entries.get(instance)
                && held.seq > status.seq
            {
                return Err(BackendError::superseded(held.seq, "older"));
            }
            entries.insert(instance.into(), entry.clone());
        }
        for (subscriber, tx) in self.subscribers.lock().unwrap().iter() {
            if subscriber != instance {
                let _ = tx.try_send(BackendEvent::Update {
                    key: key.into(),
                    entry: entry.clone(),
                    store_now: now,
                });
            }
        }
        Ok(())
    }

    async fn snapshot(&self, key: &str) -> Result<Snapshot, BackendError> {
        let entries = self.entries.lock().unwrap().values().cloned().collect();
        Ok(Snapshot::new(key, entries, self.now()))
    }

    async fn subscribe(&self, instance: &str, _keys: &[String]) -> Result<Events, BackendError> {
        let (tx, rx) = async_channel::unbounded();
        self.subscribers.lock().unwrap().push((instance.into(), tx));
        Ok(Box::pin(rx))
    }
}

fn count_unblocks(lock: &ReactiveLock) -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    lock.state(KEY).unwrap().on_unblocked(move || {
        c.fetch_add(1, Ordering::SeqCst);
    });
    count
}

#[test]
fn a_store_clock_stepping_back_does_not_expire_live_entries() {
    futures_lite::future::block_on(async {
        let store = SteppedClockStore::default();
        let a = ReactiveLock::builder()
            .instance_name("a")
            .renewal(Duration::from_millis(300))
            .expiration(Duration::from_secs(1))
            .tracker(KEY, TrackerConfig::new())
            .build(store.clone())
            .await
            .unwrap();
        let b = ReactiveLock::builder()
            .instance_name("b")
            .tracker(KEY, TrackerConfig::new())
            .build(store.clone())
            .await
            .unwrap();
        let unblocks = count_unblocks(&b);
        let state = b.state(KEY).unwrap();
        a.controller(KEY).unwrap().increment(None).await.unwrap();
        until(&state, "B sees A busy", |s| s.is_blocked()).await;

        store.step_back(Duration::from_secs(60));
        // A keeps renewing on the stepped clock; B must keep judging on it.
        async_io::Timer::after(Duration::from_secs(2)).await;
        assert_eq!(
            unblocks.load(Ordering::SeqCst),
            0,
            "B was released while A is busy"
        );
        assert!(state.is_blocked());
        a.shutdown().await;
        until(&state, "B sees A idle", |s| !s.is_blocked()).await;
        b.shutdown().await;
    });
}

/// LocalBackend whose subscriptions end on `cut` and cannot be opened again while `down`;
/// reads keep working.
#[derive(Clone)]
struct LosingSubscriptions {
    store: LocalBackend,
    down: Arc<AtomicBool>,
    cut: async_channel::Receiver<()>,
}

impl Backend for LosingSubscriptions {
    type Events = Events;

    async fn publish(
        &self,
        key: &str,
        instance: &str,
        status: &InstanceStatus,
    ) -> Result<(), BackendError> {
        self.store.publish(key, instance, status).await
    }

    async fn snapshot(&self, key: &str) -> Result<Snapshot, BackendError> {
        self.store.snapshot(key).await
    }

    async fn subscribe(&self, instance: &str, keys: &[String]) -> Result<Events, BackendError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(BackendError::new(
                BackendErrorKind::Unavailable,
                "subscriptions are down",
            ));
        }
        let events = self.store.subscribe(instance, keys).await?;
        let cut = self.cut.clone();
        // The stream ends at the first cut.
        let ended = futures_lite::stream::once_future(async move {
            let _ = cut.recv().await;
            None
        });
        Ok(Box::pin(
            events
                .map(Some)
                .or(ended)
                .take_while(Option::is_some)
                .map(Option::unwrap),
        ))
    }
}

#[test]
fn a_read_through_does_not_end_unknown_while_the_subscription_is_down() {
    futures_lite::future::block_on(async {
        let store = LocalBackend::new();
        let (cut_tx, cut_rx) = async_channel::unbounded();
        let down = Arc::new(AtomicBool::new(false));
        let b = ReactiveLock::builder()
            .instance_name("b")
            .unknown_policy(UnknownPolicy::Blocked)
            .tracker(KEY, TrackerConfig::new())
            .build(LosingSubscriptions {
                store: store.clone(),
                down: down.clone(),
                cut: cut_rx,
            })
            .await
            .unwrap();
        let state = b.state(KEY).unwrap();
        down.store(true, Ordering::SeqCst);
        cut_tx.send(()).await.unwrap();
        until(&state, "B lost its subscription", |s| {
            s.status() == Status::Unknown
        })
        .await;

        // A turns busy: B cannot hear it. A read-through succeeds meanwhile...
        let a = ReactiveLock::builder()
            .instance_name("a")
            .tracker(KEY, TrackerConfig::new())
            .build(store.clone())
            .await
            .unwrap();
        state.refresh().await.expect("reads still work");
        // ...but it is not a subscription: changes still cannot reach B.
        assert_eq!(
            state.status(),
            Status::Unknown,
            "the read-through ended Unknown"
        );
        a.controller(KEY).unwrap().increment(None).await.unwrap();
        assert!(state.is_blocked(), "UnknownPolicy::Blocked answers blocked");

        down.store(false, Ordering::SeqCst);
        until(&state, "B back, and blocked by A", |s| {
            s.status() == Status::Blocked
        })
        .await;
        a.shutdown().await;
        until(&state, "B sees A idle", |s| s.status() == Status::Unblocked).await;
        b.shutdown().await;
    });
}
