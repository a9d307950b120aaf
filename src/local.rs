//! `LocalBackend`: the in-process store, and the reference the conformance suite runs first.

use crate::sync::{AtomicBool, Ordering};
use alloc::boxed::Box;
use alloc::collections::BTreeSet;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::pin::Pin;
use core::task::{Context, Poll};
use std::collections::HashMap;

use foldhash::fast::RandomState;

use event_listener::{Event, EventListener};
use futures_core::Stream;
use parking_lot::Mutex;

use crate::backend::{
    Backend, BackendEvent, BoundPublisher, Entry, InstanceStatus, Snapshot, StoreTime,
};
use crate::error::{BackendError, BackendErrorKind};
use crate::publish::set_lock_data;

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
            .field("keys", &self.inner.store.lock().slots.len())
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

/// Keys and instance names are resolved to numbers once (a key's slot, an instance's id),
/// so that a bound publish ([`Backend::bind_publisher`]) finds the entry to write and the
/// subscribers to tell without hashing or comparing a string.
#[derive(Default)]
struct Store {
    /// Each key's position in `slots`, assigned on first use and kept for the store's life
    /// (bound publishers hold it; `clear` empties slots, never removes them).
    slot_of: HashMap<Arc<str>, usize, RandomState>,
    slots: Vec<Slot>,
    /// Each instance's id, assigned on first use (an index into `instances`).
    id_of: HashMap<String, InstanceId, RandomState>,
    instances: Vec<String>,
    /// Every subscriber (for connection events). One whose stream is gone is dropped from
    /// here and from its keys' lists when next seen.
    subscribers: Vec<Arc<Subscriber>>,
    publishes: u64,
}

struct Slot {
    /// Shared with `slot_of`: one allocation per key.
    key: Arc<str>,
    /// Each instance's entry, beside the instance's id and the allocation the entry's lock
    /// data gave up, for its next lock data ([`set_lock_data`]).
    entries: Vec<(InstanceId, Entry, String)>,
    /// The subscribers to this key.
    subscribers: Vec<Arc<Subscriber>>,
}

struct Subscriber {
    /// The subscribing instance's id: its own publishes are not echoed back to it.
    instance: InstanceId,
    pending: Mutex<Pending>,
    wake: Event,
    /// Set when its stream is dropped.
    gone: AtomicBool,
}

#[derive(Default)]
struct Pending {
    /// Connection events not yet delivered, oldest first.
    connection: Vec<BackendEvent>,
    /// Slots of the keys changed since the subscriber last looked (latest wins: each
    /// becomes one snapshot read when delivered).
    dirty: BTreeSet<usize>,
}

/// An instance's number in a [`Store`]: the index of its name in `instances`.
type InstanceId = usize;

/// A [`LocalBackend`]'s publish bound to one key slot and instance id.
struct LocalBound {
    backend: LocalBackend,
    slot: usize,
    instance: InstanceId,
}

impl BoundPublisher for LocalBound {
    fn publish_now(&self, status: &InstanceStatus) -> Result<(), BackendError> {
        self.backend.check_available("publish")?;
        let now = store_now();
        let mut store = self.backend.inner.store.lock();
        store.publish(self.slot, self.instance, status, now)
    }
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
        for slot in &mut self.inner.store.lock().slots {
            slot.entries.clear();
        }
    }

    /// How many publishes the store has applied (for tests and benches; feature
    /// `test-util`).
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(reactive_lock::LocalBackend::new().publish_count(), 0);
    /// ```
    #[cfg(any(test, feature = "test-util"))]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn publish_count(&self) -> u64 {
        self.inner.store.lock().publishes
    }

    #[inline]
    fn check_available(&self, what: &str) -> Result<(), BackendError> {
        if self.is_available() {
            Ok(())
        } else {
            Err(unavailable(what))
        }
    }

    fn for_each_subscriber(&self, f: impl FnMut(&Subscriber)) {
        self.inner.store.lock().for_each_subscriber(f);
    }

    fn read(&self, key: &str) -> Snapshot {
        let entries = {
            let store = self.inner.store.lock();
            store
                .slot_of
                .get(key)
                .map(|&slot| store.slots[slot].entries())
                .unwrap_or_default()
        };
        Snapshot::new(key, entries, store_now())
    }

    fn read_slot(&self, slot: usize) -> Snapshot {
        let (key, entries) = {
            let store = self.inner.store.lock();
            let slot = &store.slots[slot];
            (String::from(&*slot.key), slot.entries())
        };
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
        let slot = store.slot(key);
        let id = store.id_by_entry(slot, instance);
        store.publish(slot, id, status, now)
    }
}

/// The store's clock: the system clock, read coarse where the kernel offers it (Linux: the
/// last tick, 1–4 ms resolution, cheaper to read than a precise clock, which on a VM's
/// paravirtual clock costs about as much as the rest of an in-process transition). It is
/// read on every publish and only ever judges expiry, which is seconds away, so a tick's
/// resolution is enough.
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

impl Slot {
    /// A copy of the entries, for a snapshot.
    fn entries(&self) -> Vec<Entry> {
        self.entries
            .iter()
            .map(|(_, entry, _)| entry.clone())
            .collect()
    }
}

impl Store {
    fn for_each_subscriber(&mut self, f: impl FnMut(&Subscriber)) {
        for_each_live(&mut self.subscribers, f);
    }

    /// The slot of `key`, made on its first use.
    fn slot(&mut self, key: &str) -> usize {
        // Look up by `&str` first: the key's `String` is allocated only on its first use.
        if let Some(&slot) = self.slot_of.get(key) {
            return slot;
        }
        let slot = self.slots.len();
        let key: Arc<str> = Arc::from(key);
        self.slots.push(Slot {
            key: key.clone(),
            entries: Vec::new(),
            subscribers: Vec::new(),
        });
        self.slot_of.insert(key, slot);
        slot
    }

    /// The id of `instance`, made on its first use.
    fn id(&mut self, instance: &str) -> InstanceId {
        if let Some(&id) = self.id_of.get(instance) {
            return id;
        }
        // Ids index `instances`, so each is the position of its name: two names never share
        // one (a narrower id would have to saturate or wrap, and then alias).
        let id = self.instances.len();
        self.instances.push(instance.to_string());
        self.id_of.insert(instance.to_string(), id);
        id
    }

    /// The id of `instance`, read from its entry in `slot` when it has one (the common
    /// case: no hashing of the name).
    fn id_by_entry(&mut self, slot: usize, instance: &str) -> InstanceId {
        let held = &self.slots[slot];
        match held.entries.iter().find(|(_, e, _)| e.instance == instance) {
            Some(&(id, _, _)) => id,
            None => self.id(instance),
        }
    }

    /// Writes `status` as instance `id`'s entry in `slot` and marks the key for the slot's
    /// other subscribers; a [`Superseded`](BackendErrorKind::Superseded) error, writing
    /// nothing, when the slot holds a newer status of that instance.
    fn publish(
        &mut self,
        slot: usize,
        id: InstanceId,
        status: &InstanceStatus,
        now: StoreTime,
    ) -> Result<(), BackendError> {
        let name = &self.instances;
        let Slot {
            entries,
            subscribers,
            ..
        } = &mut self.slots[slot];
        let valid_until = now.saturating_add(status.valid_for);
        match entries.iter_mut().find(|(owner, _, _)| *owner == id) {
            // Latest wins: never replace a newer status with an older one.
            Some((_, held, _)) if held.seq > status.seq => {
                return Err(superseded(held, status.seq));
            }
            // In place: the instance's name is not allocated again on every write.
            Some((_, held, spare)) => {
                held.busy = status.busy;
                set_lock_data(&mut held.lock_data, spare, status.lock_data.as_deref());
                held.valid_until = valid_until;
                held.seq = status.seq;
            }
            None => {
                let instance = name.get(id).cloned().unwrap_or_default();
                let entry =
                    Entry::new(instance, status.busy, status.lock_data.clone(), valid_until)
                        .with_seq(status.seq);
                entries.push((id, entry, String::new()));
            }
        }
        self.publishes += 1;
        for_each_live(subscribers, |s| {
            if s.instance == id {
                return;
            }
            let mut pending = s.pending.lock();
            // Latest wins: a key already marked is read once, whatever else changed.
            if pending.dirty.insert(slot) {
                drop(pending);
                s.wake.notify(usize::MAX);
            }
        });
        Ok(())
    }
}

/// The error of a call during a simulated outage (out of line: the cold path).
#[cold]
#[inline(never)]
fn unavailable(what: &str) -> BackendError {
    BackendError::new(
        BackendErrorKind::Unavailable,
        std::format!("local store unavailable (simulated outage) during {what}"),
    )
}

/// The refusal of a status older than the one `held`: out of line, as the publish path
/// rarely takes it and formatting would otherwise widen that path's stack frame.
#[cold]
#[inline(never)]
fn superseded(held: &Entry, seq: u64) -> BackendError {
    BackendError::superseded(
        held.seq,
        alloc::format!(
            "the in-process store holds sequence {} of instance `{}`, newer than {}",
            held.seq,
            held.instance,
            seq
        ),
    )
}

/// Runs `f` for each subscriber in `list` whose stream is still there, and drops the others
/// from the list.
fn for_each_live(list: &mut Vec<Arc<Subscriber>>, mut f: impl FnMut(&Subscriber)) {
    // A plain loop: a subscriber whose stream is gone (rare) is the only reason to rewrite
    // the list.
    let mut gone = false;
    for s in list.iter() {
        if s.gone.load(Ordering::Acquire) {
            gone = true;
        } else {
            f(s);
        }
    }
    if gone {
        list.retain(|s| !s.gone.load(Ordering::Acquire));
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

    fn bind_publisher(&self, key: &str, instance: &str) -> Option<Box<dyn BoundPublisher>> {
        let (slot, instance) = {
            let mut store = self.inner.store.lock();
            (store.slot(key), store.id(instance))
        };
        Some(Box::new(LocalBound {
            backend: self.clone(),
            slot,
            instance,
        }))
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
        let mut store = self.inner.store.lock();
        let subscriber = Arc::new(Subscriber {
            instance: store.id(instance),
            pending: Mutex::new(Pending::default()),
            wake: Event::new(),
            gone: AtomicBool::new(false),
        });
        // Each key once, however often it is listed: one mark per change.
        let slots: BTreeSet<usize> = keys.iter().map(|key| store.slot(key)).collect();
        for slot in slots {
            let subscribers = &mut store.slots[slot].subscribers;
            // Streams dropped since the key's last publish go now: the list stays bounded by
            // the live subscribers even for a key nobody publishes.
            subscribers.retain(|s| !s.gone.load(Ordering::Acquire));
            subscribers.push(subscriber.clone());
        }
        store.subscribers.push(subscriber.clone());
        drop(store);
        Ok(LocalEvents {
            backend: self.clone(),
            keys: keys.to_vec(),
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
    /// The subscribed keys (for `Debug`).
    keys: Vec<String>,
    subscriber: Arc<Subscriber>,
    listener: Option<EventListener>,
}

impl core::fmt::Debug for LocalEvents {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LocalEvents")
            .field("keys", &self.keys)
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
                    && let Some(slot) = pending.dirty.pop_first()
                {
                    drop(pending);
                    this.listener = None;
                    return Poll::Ready(Some(BackendEvent::Snapshot(this.backend.read_slot(slot))));
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

impl Drop for LocalEvents {
    fn drop(&mut self) {
        // The store drops it from its lists when it next passes by.
        self.subscriber.gone.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::time::Duration;
    use futures_lite::StreamExt;
    use futures_lite::future::block_on;

    /// Issue 21 part 2: instance ids are positions in the name list, as wide as the list
    /// can be long, so no count of names makes two share an id (a `u32` id saturated at
    /// four billion names and aliased every later one).
    #[test]
    fn instance_ids_never_alias() {
        const { assert!(core::mem::size_of::<InstanceId>() == core::mem::size_of::<usize>()) };
        let mut store = Store::default();
        let ids: alloc::vec::Vec<InstanceId> = (0..1_000)
            .map(|i| store.id(&alloc::format!("instance-{i}")))
            .collect();
        for (i, &id) in ids.iter().enumerate() {
            assert_eq!(store.instances[id], alloc::format!("instance-{i}"));
            assert_eq!(store.id(&alloc::format!("instance-{i}")), id, "stable");
        }
        let distinct: alloc::collections::BTreeSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }

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
            assert_eq!(backend.publish_count(), 1, "the write itself happened");
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
        // An older sequence loses, inline as through `publish`, and says so.
        let older = InstanceStatus::idle(1, Duration::from_secs(5));
        assert!(matches!(
            backend.publish_now("k", "a", &older),
            Some(Err(e)) if e.kind() == BackendErrorKind::Superseded && e.held_seq() == Some(2)
        ));
        assert!(backend.read("k").is_blocked());
        backend.set_available(false);
        assert!(matches!(
            backend.publish_now("k", "a", &status),
            Some(Err(e)) if e.kind() == BackendErrorKind::Unavailable
        ));
    }

    #[test]
    fn bound_publish_is_the_publish_and_survives_clear() {
        let backend = LocalBackend::new();
        let valid = Duration::from_secs(5);
        let bound = backend.bind_publisher("k", "a").expect("the store binds");
        bound
            .publish_now(&InstanceStatus::busy(Some("x".into()), 2, valid))
            .unwrap();
        let snapshot = backend.read("k");
        assert_eq!(snapshot.entries.len(), 1);
        assert_eq!(snapshot.entries[0].instance, "a");
        assert_eq!(snapshot.entries[0].lock_data.as_deref(), Some("x"));
        assert_eq!(snapshot.entries[0].seq, 2);
        // Latest wins, and the bound and the unbound publish write the same entry.
        let older = bound.publish_now(&InstanceStatus::idle(1, valid));
        assert!(
            matches!(&older, Err(e) if e.held_seq() == Some(2)),
            "an older status is refused as superseded: {older:?}"
        );
        assert!(backend.read("k").is_blocked(), "an older status is ignored");
        backend
            .publish_now("k", "a", &InstanceStatus::idle(3, valid))
            .unwrap()
            .unwrap();
        assert!(!backend.read("k").is_blocked());
        assert_eq!(backend.read("k").entries.len(), 1, "one entry per instance");
        assert_eq!(backend.publish_count(), 2);
        // A restart that lost everything: the binding still writes where readers look.
        backend.clear();
        assert!(backend.read("k").entries.is_empty());
        bound
            .publish_now(&InstanceStatus::busy(None, 4, valid))
            .unwrap();
        assert!(backend.read("k").is_blocked());
        backend.set_available(false);
        assert!(matches!(
            bound.publish_now(&InstanceStatus::idle(5, valid)),
            Err(e) if e.kind() == BackendErrorKind::Unavailable
        ));
        backend.set_available(true);
        assert!(
            backend.read("k").is_blocked(),
            "a failed publish wrote nothing"
        );
    }

    #[test]
    fn bound_publish_marks_other_subscribers_once_and_drops_gone_ones() {
        block_on(async {
            let backend = LocalBackend::new();
            let valid = Duration::from_secs(5);
            // Listed twice: still one mark, one snapshot.
            let mut b = backend
                .subscribe("b", &["k".into(), "k".into(), "other".into()])
                .await
                .unwrap();
            let a_events = backend.subscribe("a", &["k".into()]).await.unwrap();
            let c_events = backend.subscribe("c", &["k".into()]).await.unwrap();
            drop(c_events);
            let bound = backend.bind_publisher("k", "a").unwrap();
            bound
                .publish_now(&InstanceStatus::busy(None, 1, valid))
                .unwrap();
            {
                let store = backend.inner.store.lock();
                let slot = &store.slots[store.slot_of["k"]];
                assert_eq!(
                    slot.subscribers.len(),
                    2,
                    "c's dropped stream is gone from the key's list"
                );
                for s in &slot.subscribers {
                    let dirty = s.pending.lock().dirty.len();
                    let expected = usize::from(s.instance != store.id_of["a"]);
                    assert_eq!(dirty, expected, "only b is told, and once");
                }
            }
            match b.next().await {
                Some(BackendEvent::Snapshot(s)) => {
                    assert_eq!(s.key, "k");
                    assert!(s.is_blocked());
                }
                other => panic!("unexpected {other:?}"),
            }
            assert!(
                b.subscriber.pending.lock().dirty.is_empty(),
                "one snapshot for one change"
            );
            drop(a_events);
        });
    }
}
