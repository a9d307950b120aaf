//! `LocalBackend`: the in-process store, and the reference the conformance suite runs first.

use alloc::collections::BTreeSet;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::pin::Pin;
use core::sync::atomic::{AtomicBool, Ordering};
use core::task::{Context, Poll};
use std::collections::HashMap;

use foldhash::fast::RandomState;

use event_listener::{Event, EventListener};
use futures_core::Stream;
use parking_lot::Mutex;

use crate::backend::{Backend, BackendEvent, Entry, InstanceStatus, Snapshot, StoreTime};
use crate::error::{BackendError, BackendErrorKind};

/// An in-process backend: a store of instance statuses per key shared by every clone.
///
/// Several registries with different instance names built on clones of one `LocalBackend`
/// see each other as if they were separate processes sharing Redis — with real expiry on
/// the store's clock (the system clock). Subscribers get coalesced, latest-wins snapshots
/// of the keys that changed, so a slow subscriber costs bounded memory.
///
/// For tests of failure handling it can simulate an outage
/// ([`set_available`](Self::set_available)) and a restart that lost everything
/// ([`clear`](Self::clear)).
///
/// # Examples
///
/// ```
/// use futures_lite::StreamExt;
/// use reactive_lock::{LocalBackend, ReactiveLock, TrackerConfig};
///
/// # futures_lite::future::block_on(async {
/// let backend = LocalBackend::new();
/// let a = ReactiveLock::builder().instance_name("a")
///     .tracker("payments", TrackerConfig::new()).build(backend.clone()).await?;
/// let b = ReactiveLock::builder().instance_name("b")
///     .tracker("payments", TrackerConfig::new()).build(backend.clone()).await?;
///
/// let b_state = b.state("payments")?;
/// let mut changes = b_state.changes();
/// a.controller("payments")?.increment(Some("batch-7")).await?;
/// // B learns through the backend: its driver applies A's status in the background.
/// while !b_state.is_blocked() {
///     changes.next().await;
/// }
/// assert_eq!(b_state.lock_data().as_deref(), Some("batch-7"));
/// a.controller("payments")?.decrement(1).await?;
/// b_state.wait_if_blocked().await; // woken when A turns idle
/// assert!(!b_state.is_blocked());
/// # a.shutdown().await;
/// # b.shutdown().await;
/// # Ok::<(), reactive_lock::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Default)]
pub struct LocalBackend {
    inner: Arc<LocalInner>,
}

impl core::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LocalBackend")
            .field("keys", &self.inner.store.lock().keys.len())
            .field("available", &self.is_available())
            .finish()
    }
}

#[derive(Default)]
struct LocalInner {
    /// Entries and subscribers under one lock: a publish takes it once.
    store: Mutex<Store>,
    unavailable: AtomicBool,
}

#[derive(Default)]
struct Store {
    keys: HashMap<String, Vec<Entry>, RandomState>,
    /// Shared with each subscriber's stream; an entry whose stream is gone (the store holds
    /// the only reference) is dropped on the next publish.
    subscribers: Vec<Arc<Subscriber>>,
    publishes: u64,
}

struct Subscriber {
    /// The subscribing instance: its own publishes are not echoed back to it.
    instance: String,
    keys: BTreeSet<String>,
    pending: Mutex<Pending>,
    wake: Event,
}

#[derive(Default)]
struct Pending {
    /// Connection events not yet delivered, oldest first.
    connection: Vec<BackendEvent>,
    /// Keys changed since the subscriber last looked (latest wins: each becomes one
    /// snapshot read when delivered).
    dirty: BTreeSet<String>,
}

impl LocalBackend {
    /// A new, empty store.
    ///
    /// # Examples
    ///
    /// ```
    /// let backend = reactive_lock::LocalBackend::new();
    /// assert!(backend.is_available());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates losing (`false`) or regaining (`true`) the store: while unavailable every
    /// call fails with [`BackendErrorKind::Unavailable`] and subscribers receive
    /// [`BackendEvent::Disconnected`]; on return they receive [`BackendEvent::Reconnected`].
    ///
    /// # Examples
    ///
    /// ```
    /// let backend = reactive_lock::LocalBackend::new();
    /// backend.set_available(false);
    /// assert!(!backend.is_available());
    /// ```
    pub fn set_available(&self, available: bool) {
        let was = !self.inner.unavailable.swap(!available, Ordering::SeqCst);
        if was != available {
            let event = if available {
                BackendEvent::Reconnected
            } else {
                BackendEvent::Disconnected
            };
            self.for_each_subscriber(|s| {
                s.pending.lock().connection.push(event.clone());
                s.wake.notify(usize::MAX);
            });
        }
    }

    /// Whether the store is reachable (see [`set_available`](Self::set_available)).
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(reactive_lock::LocalBackend::new().is_available());
    /// ```
    pub fn is_available(&self) -> bool {
        !self.inner.unavailable.load(Ordering::SeqCst)
    }

    /// Simulates a store restart that lost every entry (as a Redis without persistence
    /// does). Subscribers are not told: like after a real restart, only the recovery that
    /// follows a reconnect, and renewals, put the statuses back.
    ///
    /// # Examples
    ///
    /// ```
    /// let backend = reactive_lock::LocalBackend::new();
    /// backend.clear();
    /// ```
    pub fn clear(&self) {
        self.inner.store.lock().keys.clear();
    }

    /// How many publishes the store has applied (for tests and benches).
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(reactive_lock::LocalBackend::new().publish_count(), 0);
    /// ```
    pub fn publish_count(&self) -> u64 {
        self.inner.store.lock().publishes
    }

    fn check_available(&self, what: &str) -> Result<(), BackendError> {
        if self.is_available() {
            Ok(())
        } else {
            Err(BackendError::new(
                BackendErrorKind::Unavailable,
                std::format!("local store unavailable (simulated outage) during {what}"),
            ))
        }
    }

    fn for_each_subscriber(&self, f: impl FnMut(&Subscriber)) {
        self.inner.store.lock().for_each_subscriber(f);
    }

    fn read(&self, key: &str) -> Snapshot {
        let entries = self
            .inner
            .store
            .lock()
            .keys
            .get(key)
            .cloned()
            .unwrap_or_default();
        Snapshot::new(key, entries, store_now())
    }

    /// The whole publish; it never waits, so `publish` and `publish_now` share it.
    fn publish_sync(
        &self,
        key: &str,
        instance: &str,
        status: &InstanceStatus,
    ) -> Result<(), BackendError> {
        self.check_available("publish")?;
        let now = store_now();
        let mut store = self.inner.store.lock();
        if store.write(key, instance, status, now) {
            store.publishes += 1;
            store.for_each_subscriber(|s| {
                if s.instance != instance && s.keys.contains(key) {
                    let mut pending = s.pending.lock();
                    // Latest wins: a key already marked is read once, whatever else changed.
                    if !pending.dirty.contains(key) {
                        pending.dirty.insert(key.to_string());
                        drop(pending);
                        s.wake.notify(usize::MAX);
                    }
                }
            });
        }
        Ok(())
    }
}

/// The store's clock: the system clock, read coarse where the kernel offers it (Linux: the
/// last tick, 1–4 ms resolution, a few nanoseconds per read instead of some 25 on a VM's
/// paravirtual clock). It is read on every publish and only ever judges expiry, which is
/// seconds away; a precise read cost more than the rest of an in-process transition.
fn store_now() -> StoreTime {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
        let nanos = u64::try_from(now.tv_sec)
            .unwrap_or(0)
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::try_from(now.tv_nsec).unwrap_or(0));
        StoreTime::from_unix_nanos(nanos)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        StoreTime::now_system()
    }
}

impl Store {
    fn for_each_subscriber(&mut self, mut f: impl FnMut(&Subscriber)) {
        // A plain loop: this runs on every publish, and a subscriber whose stream is gone
        // (rare) is the only reason to rewrite the list.
        let mut gone = false;
        for s in &self.subscribers {
            if Arc::strong_count(s) > 1 {
                f(s);
            } else {
                gone = true;
            }
        }
        if gone {
            self.subscribers.retain(|s| Arc::strong_count(s) > 1);
        }
    }

    fn write(
        &mut self,
        key: &str,
        instance: &str,
        status: &InstanceStatus,
        now: StoreTime,
    ) -> bool {
        // Look up by `&str` first: the key's `String` is allocated only on its first write.
        if let Some(entries) = self.keys.get_mut(key) {
            return Self::write_entry(entries, instance, status, now);
        }
        let entries = self.keys.entry(key.to_string()).or_default();
        Self::write_entry(entries, instance, status, now)
    }

    fn write_entry(
        entries: &mut Vec<Entry>,
        instance: &str,
        status: &InstanceStatus,
        now: StoreTime,
    ) -> bool {
        let valid_until = now.saturating_add(status.valid_for);
        match entries.iter_mut().find(|e| e.instance == instance) {
            // Latest wins: never replace a newer status with an older one.
            Some(held) if held.seq > status.seq => return false,
            // In place: the instance's name is not allocated again on every write.
            Some(held) => {
                held.busy = status.busy;
                held.lock_data.clone_from(&status.lock_data);
                held.valid_until = valid_until;
                held.seq = status.seq;
            }
            None => entries.push(
                Entry::new(instance, status.busy, status.lock_data.clone(), valid_until)
                    .with_seq(status.seq),
            ),
        }
        true
    }
}

impl Backend for LocalBackend {
    type Events = LocalEvents;

    async fn publish(
        &self,
        key: &str,
        instance: &str,
        status: &InstanceStatus,
    ) -> Result<(), BackendError> {
        self.publish_sync(key, instance, status)
    }

    fn publish_now(
        &self,
        key: &str,
        instance: &str,
        status: &InstanceStatus,
    ) -> Option<Result<(), BackendError>> {
        Some(self.publish_sync(key, instance, status))
    }

    async fn snapshot(&self, key: &str) -> Result<Snapshot, BackendError> {
        self.check_available("snapshot")?;
        Ok(self.read(key))
    }

    async fn subscribe(
        &self,
        instance: &str,
        keys: &[String],
    ) -> Result<LocalEvents, BackendError> {
        self.check_available("subscribe")?;
        let subscriber = Arc::new(Subscriber {
            instance: instance.to_string(),
            keys: keys.iter().cloned().collect(),
            pending: Mutex::new(Pending::default()),
            wake: Event::new(),
        });
        self.inner.store.lock().subscribers.push(subscriber.clone());
        Ok(LocalEvents {
            backend: self.clone(),
            subscriber,
            listener: None,
        })
    }
}

/// The subscription stream of a [`LocalBackend`].
///
/// # Examples
///
/// ```
/// use futures_lite::StreamExt;
/// use reactive_lock::{Backend, BackendEvent, InstanceStatus, LocalBackend};
/// use std::time::Duration;
///
/// # futures_lite::future::block_on(async {
/// let backend = LocalBackend::new();
/// let mut events = backend.subscribe("reader", &["k".to_string()]).await?;
/// backend.publish("k", "a", &InstanceStatus::busy(None, 1, Duration::from_secs(5))).await?;
/// match events.next().await {
///     Some(BackendEvent::Snapshot(s)) => assert!(s.is_blocked()),
///     other => panic!("unexpected {other:?}"),
/// }
/// # Ok::<(), reactive_lock::BackendError>(())
/// # }).unwrap();
/// ```
pub struct LocalEvents {
    backend: LocalBackend,
    subscriber: Arc<Subscriber>,
    listener: Option<EventListener>,
}

impl core::fmt::Debug for LocalEvents {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LocalEvents")
            .field("keys", &self.subscriber.keys)
            .finish()
    }
}

impl Stream for LocalEvents {
    type Item = BackendEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<BackendEvent>> {
        let this = &mut *self;
        loop {
            {
                let mut pending = this.subscriber.pending.lock();
                if !pending.connection.is_empty() {
                    this.listener = None;
                    return Poll::Ready(Some(pending.connection.remove(0)));
                }
                if this.backend.is_available()
                    && let Some(key) = pending.dirty.pop_first()
                {
                    drop(pending);
                    this.listener = None;
                    return Poll::Ready(Some(BackendEvent::Snapshot(this.backend.read(&key))));
                }
            }
            match &mut this.listener {
                None => this.listener = Some(this.subscriber.wake.listen()),
                Some(listener) => {
                    core::task::ready!(Pin::new(listener).poll(cx));
                    this.listener = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::time::Duration;
    use futures_lite::StreamExt;
    use futures_lite::future::block_on;

    #[test]
    fn own_publishes_are_not_echoed_to_the_subscriber() {
        block_on(async {
            let backend = LocalBackend::new();
            let mut events = backend.subscribe("a", &["k".into()]).await.unwrap();
            let valid = Duration::from_secs(5);
            backend
                .publish("k", "a", &InstanceStatus::busy(None, 1, valid))
                .await
                .unwrap();
            assert!(
                backend.inner.store.lock().subscribers[0]
                    .pending
                    .lock()
                    .dirty
                    .is_empty(),
                "a's own write marks nothing for a"
            );
            backend
                .publish("k", "b", &InstanceStatus::busy(Some("x".into()), 1, valid))
                .await
                .unwrap();
            match events.next().await {
                Some(BackendEvent::Snapshot(s)) => {
                    assert_eq!(s.entries.len(), 2, "the read still holds both entries");
                }
                other => panic!("unexpected {other:?}"),
            }
        });
    }

    #[test]
    fn publish_now_is_the_publish() {
        let backend = LocalBackend::new();
        let status = InstanceStatus::busy(None, 2, Duration::from_secs(5));
        assert!(matches!(
            backend.publish_now("k", "a", &status),
            Some(Ok(()))
        ));
        // An older sequence loses, inline as through `publish`.
        let older = InstanceStatus::idle(1, Duration::from_secs(5));
        assert!(matches!(
            backend.publish_now("k", "a", &older),
            Some(Ok(()))
        ));
        assert!(backend.read("k").is_blocked());
        backend.set_available(false);
        assert!(matches!(
            backend.publish_now("k", "a", &status),
            Some(Err(e)) if e.kind() == BackendErrorKind::Unavailable
        ));
    }
}
