//! `LocalBackend`: the in-process store, and the reference the conformance suite runs first.

use alloc::collections::BTreeSet;
use alloc::string::{String, ToString};
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::pin::Pin;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use core::task::{Context, Poll};
use std::collections::HashMap;

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
            .field("keys", &self.inner.keys.lock().len())
            .field("available", &self.is_available())
            .finish()
    }
}

struct LocalInner {
    keys: Mutex<HashMap<String, Vec<Entry>>>,
    subscribers: Mutex<Vec<Weak<Subscriber>>>,
    unavailable: AtomicBool,
    publishes: AtomicU64,
}

impl Default for LocalInner {
    fn default() -> Self {
        LocalInner {
            keys: Mutex::new(HashMap::new()),
            subscribers: Mutex::new(Vec::new()),
            unavailable: AtomicBool::new(false),
            publishes: AtomicU64::new(0),
        }
    }
}

struct Subscriber {
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
        self.inner.keys.lock().clear();
    }

    /// How many publishes the store has applied (for tests and benches).
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(reactive_lock::LocalBackend::new().publish_count(), 0);
    /// ```
    pub fn publish_count(&self) -> u64 {
        self.inner.publishes.load(Ordering::Relaxed)
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

    fn for_each_subscriber(&self, mut f: impl FnMut(&Subscriber)) {
        let mut subscribers = self.inner.subscribers.lock();
        subscribers.retain(|weak| match weak.upgrade() {
            Some(s) => {
                f(&s);
                true
            }
            None => false,
        });
    }

    fn read(&self, key: &str) -> Snapshot {
        let entries = self.inner.keys.lock().get(key).cloned().unwrap_or_default();
        Snapshot::new(key, entries, StoreTime::now_system())
    }

    fn write(&self, key: &str, instance: &str, status: &InstanceStatus) -> bool {
        let now = StoreTime::now_system();
        let mut keys = self.inner.keys.lock();
        // Look up by `&str` first: the key's `String` is allocated only on its first write.
        if !keys.contains_key(key) {
            keys.insert(key.to_string(), Vec::new());
        }
        let entries = keys.get_mut(key).expect("inserted above");
        let entry = Entry::new(
            instance,
            status.busy,
            status.lock_data.clone(),
            now.saturating_add(status.valid_for),
        )
        .with_seq(status.seq);
        match entries.iter_mut().find(|e| e.instance == instance) {
            // Latest wins: never replace a newer status with an older one.
            Some(held) if held.seq > status.seq => return false,
            Some(held) => *held = entry,
            None => entries.push(entry),
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
        self.check_available("publish")?;
        if self.write(key, instance, status) {
            self.inner.publishes.fetch_add(1, Ordering::Relaxed);
            self.for_each_subscriber(|s| {
                if s.keys.contains(key) {
                    let newly = s.pending.lock().dirty.insert(key.to_string());
                    if newly {
                        s.wake.notify(usize::MAX);
                    }
                }
            });
        }
        Ok(())
    }

    async fn snapshot(&self, key: &str) -> Result<Snapshot, BackendError> {
        self.check_available("snapshot")?;
        Ok(self.read(key))
    }

    async fn subscribe(&self, keys: &[String]) -> Result<LocalEvents, BackendError> {
        self.check_available("subscribe")?;
        let subscriber = Arc::new(Subscriber {
            keys: keys.iter().cloned().collect(),
            pending: Mutex::new(Pending::default()),
            wake: Event::new(),
        });
        self.inner
            .subscribers
            .lock()
            .push(Arc::downgrade(&subscriber));
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
/// let mut events = backend.subscribe(&["k".to_string()]).await?;
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
