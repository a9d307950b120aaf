//! `TrackerState`: the aggregate, reactive view of one key.
//!
//! A key is **blocked** while this instance is busy for it (its local entry) or any other
//! instance's entry is busy and unexpired on the store's clock. Readers check a single atomic
//! byte; waiters use an `event_listener::Event` (register, re-check, await: no lost wake-ups);
//! changes of the aggregate run the `on_blocked` / `on_unblocked` handlers in order, exactly
//! once each, never while a lock is held.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::pin::Pin;
use core::task::{Context, Poll};

use event_listener::EventListener;
use futures_core::Stream;

use crate::backend::{DynBackend, Entry, Snapshot, StoreTime};
use crate::publish::{LockData, PublishSlot, SlotLock, epoch_is_newer};
use crate::sync::{
    AtomicU8, AtomicU64, AtomicUsize, Mutex, MutexGuard, Ordering, Signal, SignalListener,
};

pub use crate::backend::LOCK_DATA_SEPARATOR;
use crate::backend::split_lock_data;

/// A key's aggregate status.
///
/// # Examples
///
/// ```
/// use reactive_lock::{Status, TrackerState};
///
/// let state = TrackerState::new();
/// assert_eq!(state.status(), Status::Unblocked);
/// state.set_blocked(None);
/// assert_eq!(state.status(), Status::Blocked);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// No instance is busy for the key.
    Unblocked,
    /// Some instance (maybe this one) is busy for the key.
    Blocked,
    /// The backend is unreachable, so other instances' statuses are not known. What
    /// [`TrackerState::is_blocked`] answers then is set by the [`UnknownPolicy`].
    Unknown,
}

/// What [`TrackerState::is_blocked`] (and so the waits) answer while the status is
/// [`Status::Unknown`]. This instance's own busy status is always known and always blocks.
///
/// # Examples
///
/// ```
/// use reactive_lock::{TrackerConfig, UnknownPolicy};
///
/// let config = TrackerConfig::new().unknown_policy(UnknownPolicy::Blocked);
/// # let _ = config;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum UnknownPolicy {
    /// Keep answering from the last known entries (still honouring their expiry): the .NET
    /// ReactiveLock's behaviour, and the default.
    #[default]
    KeepLast,
    /// Treat the key as blocked until the backend is back (fail closed).
    Blocked,
    /// Treat the key as unblocked until the backend is back (fail open).
    Unblocked,
}

// Layout of `StateInner::flags` (one byte, read lock-free by `is_blocked` / `status`):
//
//   bit 0  BLOCKED  effective answer of is_blocked(), policy applied
//   bit 1  UNKNOWN  the backend is unreachable and this instance is not busy itself
//   bit 2  ENDED    a registry's driver has ended: nothing updates this state any more
const BLOCKED: u8 = 1;
const UNKNOWN: u8 = 2;
const ENDED: u8 = 4;

type Handler = Arc<dyn Fn() + Send + Sync + 'static>;

/// What changed a state, for the debug event on every change of a key's status.
#[derive(Clone, Copy, Debug)]
enum Cause<'a> {
    /// This instance's own transition (or `set_blocked`/`set_unblocked`).
    Own,
    /// Another instance's status, by name.
    Instance(&'a str),
    /// A read of the key (a subscription's snapshot, a recovery, a read-through).
    Read,
    /// An entry expired on the store's clock.
    Expiry,
    /// The backend was lost or is back.
    Connection,
    /// The registry's driver started or ended.
    Driver,
}

impl fmt::Display for Cause<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Own => f.write_str("own transition"),
            Cause::Instance(name) => write!(f, "instance {name}"),
            Cause::Read => f.write_str("read of the store"),
            Cause::Expiry => f.write_str("expiry"),
            Cause::Connection => f.write_str("backend lost or back"),
            Cause::Driver => f.write_str("driver started or ended"),
        }
    }
}

/// The reactive, aggregate view of one key: blocked or not, lock data, waits and handlers.
///
/// A registry hands one out per tracker ([`ReactiveLock::state`](crate::ReactiveLock::state));
/// [`TrackerState::new`] makes a standalone one driven only by
/// [`set_blocked`](Self::set_blocked) / [`set_unblocked`](Self::set_unblocked). It is a cheap
/// handle: clones share the same state. `Send + Sync`.
///
/// # Examples
///
/// ```
/// use reactive_lock::TrackerState;
///
/// # futures_lite::future::block_on(async {
/// let state = TrackerState::new();
/// assert!(!state.wait_if_blocked().await); // unblocked: returns at once
///
/// state.set_blocked(Some("batch-7"));
/// assert_eq!(state.lock_data().as_deref(), Some("batch-7"));
/// let waiter = {
///     let state = state.clone();
///     std::thread::spawn(move || state.wait_if_blocked_blocking())
/// };
/// state.set_unblocked();
/// assert!(waiter.join().unwrap() || !state.is_blocked());
/// # });
/// ```
#[derive(Clone)]
pub struct TrackerState {
    inner: Arc<StateInner>,
}

struct StateInner {
    /// `BLOCKED | UNKNOWN`, see the layout above. Written under `data`'s lock with release
    /// stores; a waiter that registered before re-checking cannot miss a change stored
    /// before the notify (see [`Signal`] for why acquire/release is enough).
    flags: AtomicU8,
    /// Bumped on every change of `flags`, for [`StatusChanges`].
    version: AtomicU64,
    /// Notified on every change of `flags`.
    changed: Signal,
    data: Mutex<StateData>,
    handlers: Mutex<Handlers>,
    /// Handler calls that panicked (caught, logged and counted).
    handler_panics: AtomicU64,
    /// Tasks and threads inside a `wait_if_blocked*` call on a blocked key.
    waiting: AtomicUsize,
    policy: UnknownPolicy,
    link: Option<Link>,
}

/// How a registry's state reads through to the store.
pub(crate) struct Link {
    pub(crate) backend: Arc<dyn DynBackend>,
    pub(crate) key: Arc<str>,
    pub(crate) own_instance: Arc<str>,
    /// Wakes the driver so it re-arms this key's expiry after a read-through.
    #[cfg(feature = "std")]
    pub(crate) bell: Arc<crate::publish::Bell>,
    /// This key's tracker in the registry.
    #[cfg(feature = "std")]
    pub(crate) index: usize,
    /// Runs the handlers of changes this instance did not make (see `handlers.rs`).
    #[cfg(feature = "std")]
    pub(crate) handlers: Arc<crate::handlers::HandlerThread>,
    /// This key's metrics.
    #[cfg(feature = "metrics")]
    pub(crate) instruments: Arc<crate::instruments::KeyInstruments>,
}

#[derive(Default)]
struct Handlers {
    on_blocked: Vec<Handler>,
    on_unblocked: Vec<Handler>,
}

struct StateData {
    local_busy: bool,
    local_data: LockData,
    /// Epoch of the controller transition last applied; older ones are dropped (two racing
    /// transitions may reach here in either order).
    local_epoch: u32,
    /// Other instances' entries (never this instance's: its own state is authoritative here
    /// and applied before any I/O, so a stale echo from the store must not override it).
    remote: Vec<Held>,
    /// Counts the entries applied from the subscription (updates and snapshots). A
    /// read-through notes it when its read is issued: an entry applied after that may be
    /// newer than the read's reply, which then must not drop or downgrade it.
    applied: u64,
    /// The store's clock as last known (from a snapshot, an update, or advanced by the
    /// driver's timer), against which `remote` expiry is judged.
    remote_now: StoreTime,
    /// The local monotonic instant at which `remote_now` was true.
    #[cfg(feature = "std")]
    clock_base: Option<std::time::Instant>,
    connected: bool,
    /// Whether a driver applies the subscription to this state: a registry's state starts
    /// without one and turns Unknown again when its driver ends (a standalone state is
    /// always "driven": nothing else feeds it).
    driven: bool,
    /// The registry's driver ended: this state no longer changes but for local transitions.
    ended: bool,
    /// Blocked-flag changes not yet handed to the handlers, oldest first.
    pending: VecDeque<bool>,
    /// Set while one thread runs the handler queue; others leave their items to it.
    dispatching: bool,
    /// Whether any handler was ever registered: without one, changes queue nothing.
    has_handlers: bool,
    /// A registry controller's latest-wins publish slot for this key. It lives under this
    /// lock so that a transition applies itself locally and publishes inline in one critical
    /// section (one lock round per transition instead of two).
    slot: PublishSlot,
}

/// The publish slot of a state, locked (see [`TrackerState::slot`]).
pub(crate) struct SlotGuard<'a>(MutexGuard<'a, StateData>);

impl core::ops::Deref for SlotGuard<'_> {
    type Target = PublishSlot;
    fn deref(&self) -> &PublishSlot {
        &self.0.slot
    }
}

impl core::ops::DerefMut for SlotGuard<'_> {
    fn deref_mut(&mut self) -> &mut PublishSlot {
        &mut self.0.slot
    }
}

impl SlotLock for TrackerState {
    fn slot(&self) -> impl core::ops::DerefMut<Target = PublishSlot> + '_ {
        TrackerState::slot(self)
    }
}

impl Default for TrackerState {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for TrackerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackerState")
            .field("status", &self.status())
            .field("is_blocked", &self.is_blocked())
            .finish_non_exhaustive()
    }
}

impl TrackerState {
    /// A standalone state with no backend: unblocked, driven by
    /// [`set_blocked`](Self::set_blocked) / [`set_unblocked`](Self::set_unblocked).
    ///
    /// # Examples
    ///
    /// ```
    /// let state = reactive_lock::TrackerState::new();
    /// assert!(!state.is_blocked());
    /// ```
    pub fn new() -> Self {
        Self::with_parts(UnknownPolicy::KeepLast, None)
    }

    pub(crate) fn with_parts(policy: UnknownPolicy, link: Option<Link>) -> Self {
        // A registry's state starts Unknown (no driver yet), and says so from the start:
        // its first change is then to what the driver finds, with no detour for handlers.
        let flags = match (&link, policy) {
            (None, _) => 0,
            (Some(_), UnknownPolicy::Blocked) => UNKNOWN | BLOCKED,
            (Some(_), _) => UNKNOWN,
        };
        TrackerState {
            inner: Arc::new(StateInner {
                flags: AtomicU8::new(flags),
                version: AtomicU64::new(0),
                changed: Signal::new(),
                data: Mutex::new(StateData {
                    local_busy: false,
                    local_data: LockData::default(),
                    local_epoch: 0,
                    remote: Vec::new(),
                    applied: 0,
                    remote_now: StoreTime::UNIX_EPOCH,
                    #[cfg(feature = "std")]
                    clock_base: None,
                    connected: true,
                    driven: link.is_none(),
                    ended: false,
                    pending: VecDeque::new(),
                    dispatching: false,
                    has_handlers: false,
                    slot: PublishSlot::default(),
                }),
                handlers: Mutex::new(Handlers::default()),
                handler_panics: AtomicU64::new(0),
                waiting: AtomicUsize::new(0),
                policy,
                link,
            }),
        }
    }

    /// Whether the key is blocked now: this instance or another is busy (with the
    /// [`UnknownPolicy`] applied while the status is [`Status::Unknown`]). One atomic load.
    ///
    /// # Examples
    ///
    /// ```
    /// let state = reactive_lock::TrackerState::new();
    /// state.set_blocked(None);
    /// assert!(state.is_blocked());
    /// ```
    pub fn is_blocked(&self) -> bool {
        self.inner.flags.load(Ordering::Acquire) & BLOCKED != 0
    }

    /// The three-state status. `Unknown` while the backend is unreachable, unless this
    /// instance is busy itself (then `Blocked`: that much is certain).
    ///
    /// # Examples
    ///
    /// ```
    /// use reactive_lock::{Status, TrackerState};
    /// assert_eq!(TrackerState::new().status(), Status::Unblocked);
    /// ```
    pub fn status(&self) -> Status {
        let flags = self.inner.flags.load(Ordering::Acquire);
        if flags & UNKNOWN != 0 {
            Status::Unknown
        } else if flags & BLOCKED != 0 {
            Status::Blocked
        } else {
            Status::Unblocked
        }
    }

    /// Waits until the key is unblocked. Returns `false` at once if it is not blocked, else
    /// waits — woken by the change, never by polling — and returns `true`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future only unregisters the waiter.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures_lite::future::block_on(async {
    /// let state = reactive_lock::TrackerState::new();
    /// assert!(!state.wait_if_blocked().await);
    /// # });
    /// ```
    pub async fn wait_if_blocked(&self) -> bool {
        if !self.is_blocked() {
            return false;
        }
        let _waiting = Waiting::enter(self);
        loop {
            // Register first, then re-check: a change between the check and the await
            // notifies this listener, so no wake-up is lost.
            let listener = self.listen_changed();
            if !self.is_blocked() {
                return true;
            }
            listener.await;
            if !self.is_blocked() {
                return true;
            }
        }
    }

    /// Like [`wait_if_blocked`](Self::wait_if_blocked), but first reads the key through to
    /// the store (one snapshot round trip), so a change that has not reached this instance's
    /// subscription yet is seen. On a standalone state it is `wait_if_blocked`.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`](crate::Error::Backend) when the store cannot be read; nothing
    /// was waited for then. [`Error::NoDriver`](crate::Error::NoDriver) when the key is
    /// blocked and the registry's driver is not running (its
    /// [`Driver`](crate::Driver) was never spawned — given a second to start — or has
    /// ended), so that nothing would ever tell this wait that the key unblocked.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping it abandons the read and the wait, and changes nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// use reactive_lock::{LocalBackend, ReactiveLock, TrackerConfig};
    ///
    /// # futures_lite::future::block_on(async {
    /// let lock = ReactiveLock::builder()
    ///     .tracker("payments", TrackerConfig::new())
    ///     .build(LocalBackend::new())
    ///     .await?;
    /// assert!(!lock.state("payments")?.wait_if_blocked_consistent().await?);
    /// # lock.shutdown().await;
    /// # Ok::<(), reactive_lock::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn wait_if_blocked_consistent(&self) -> crate::Result<bool> {
        self.refresh().await?;
        #[cfg(feature = "std")]
        if let Some(link) = &self.inner.link {
            self.driver_for_wait().await?;
            return self.wait_while_driven(link).await;
        }
        Ok(self.wait_if_blocked().await)
    }

    /// [`wait_if_blocked`](Self::wait_if_blocked) for a registry's state, ending with
    /// [`Error::NoDriver`](crate::Error::NoDriver) should the driver end meanwhile (nothing
    /// would tell the wait that the key unblocked).
    #[cfg(feature = "std")]
    async fn wait_while_driven(&self, link: &Link) -> crate::Result<bool> {
        if !self.is_blocked() {
            return Ok(false);
        }
        loop {
            let listener = self.listen_changed();
            if !self.is_blocked() {
                return Ok(true);
            }
            if self.inner.flags.load(Ordering::Acquire) & ENDED != 0 {
                return Err(crate::Error::NoDriver {
                    key: String::from(&*link.key),
                });
            }
            listener.await;
        }
    }

    /// Whether this state, if it must wait, has a driver to wake it: a registry's driver
    /// that is running, or, handed to the caller's executor and not polled yet, starts
    /// within [`DRIVER_START_GRACE`].
    #[cfg(feature = "std")]
    async fn driver_for_wait(&self) -> crate::Result<()> {
        let Some(link) = &self.inner.link else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        loop {
            let listener = self.listen_changed();
            {
                let d = self.inner.data.lock();
                if d.driven || !self.is_blocked() {
                    return Ok(());
                }
                if d.ended || started.elapsed() >= DRIVER_START_GRACE {
                    return Err(crate::Error::NoDriver {
                        key: String::from(&*link.key),
                    });
                }
            }
            let until = started + DRIVER_START_GRACE;
            futures_lite::future::or(listener, async {
                async_io::Timer::at(until).await;
            })
            .await;
        }
    }

    /// Reads the key through to the store now (one snapshot round trip) and applies it,
    /// without waiting. Does nothing on a standalone state.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`](crate::Error::Backend) when the store cannot be read.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping it abandons the read and changes nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// use reactive_lock::{LocalBackend, ReactiveLock, TrackerConfig};
    ///
    /// # futures_lite::future::block_on(async {
    /// let lock = ReactiveLock::builder()
    ///     .tracker("payments", TrackerConfig::new())
    ///     .build(LocalBackend::new())
    ///     .await?;
    /// let state = lock.state("payments")?;
    /// state.refresh().await?;
    /// assert!(!state.is_blocked());
    /// # lock.shutdown().await;
    /// # Ok::<(), reactive_lock::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn refresh(&self) -> crate::Result<()> {
        if let Some(link) = &self.inner.link {
            let issued = self.inner.data.lock().applied;
            let snapshot = link
                .backend
                .snapshot_dyn(&link.key)
                .await
                .map_err(|source| crate::Error::Backend {
                    key: String::from(&*link.key),
                    source,
                })?;
            self.apply_read(&snapshot, issued);
            // The read may carry entries with an earlier expiry than the driver's timer; with
            // no busy entry there is nothing to expire and no thread to wake.
            #[cfg(feature = "std")]
            if snapshot.next_expiry().is_some() {
                link.bell.ring(link.index);
            }
        }
        Ok(())
    }

    /// Marks this state's local entry busy with `lock_data`. Returns whether the local
    /// entry changed from idle to busy (re-blocking only replaces the data).
    ///
    /// On a registry's state this changes only this process's view; use a
    /// [`TrackerController`](crate::TrackerController) to tell other instances.
    ///
    /// # Examples
    ///
    /// ```
    /// let state = reactive_lock::TrackerState::new();
    /// assert!(state.set_blocked(Some("x")));
    /// assert!(!state.set_blocked(Some("y"))); // already blocked; data replaced
    /// assert_eq!(state.lock_data().as_deref(), Some("y"));
    /// ```
    pub fn set_blocked(&self, lock_data: Option<&str>) -> bool {
        self.update(|d| {
            let changed = !d.local_busy;
            d.local_busy = true;
            d.local_data.set(lock_data.filter(|data| !data.is_empty()));
            changed
        })
    }

    /// Marks this state's local entry idle. Returns whether it was busy.
    ///
    /// # Examples
    ///
    /// ```
    /// let state = reactive_lock::TrackerState::new();
    /// assert!(!state.set_unblocked());
    /// state.set_blocked(None);
    /// assert!(state.set_unblocked());
    /// ```
    pub fn set_unblocked(&self) -> bool {
        self.update(|d| {
            let changed = d.local_busy;
            d.local_busy = false;
            d.local_data.set(None);
            changed
        })
    }

    /// The lock data of every busy, unexpired instance (this one first), joined with
    /// [`LOCK_DATA_SEPARATOR`]; `None` if there is none. Instances busy without data add
    /// nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// let state = reactive_lock::TrackerState::new();
    /// assert_eq!(state.lock_data(), None);
    /// state.set_blocked(Some("batch-7"));
    /// assert_eq!(state.lock_data().as_deref(), Some("batch-7"));
    /// ```
    pub fn lock_data(&self) -> Option<String> {
        let entries = self.lock_data_entries();
        if entries.is_empty() {
            None
        } else {
            Some(entries.join(LOCK_DATA_SEPARATOR))
        }
    }

    /// The lock data of every busy, unexpired instance, this one first, each split on
    /// [`LOCK_DATA_SEPARATOR`] as .NET's `GetLockDataEntriesIfBlockedAsync` splits the
    /// joined data: an instance (a .NET one, or [`set_blocked`](Self::set_blocked)) whose
    /// data holds the separator contributes one entry per part. Empty parts are left out,
    /// as empty lock data reads as none.
    ///
    /// # Examples
    ///
    /// ```
    /// let state = reactive_lock::TrackerState::new();
    /// state.set_blocked(Some("a"));
    /// assert_eq!(state.lock_data_entries(), vec!["a".to_string()]);
    /// state.set_blocked(Some("data1#REACTIVELOCK#data2#REACTIVELOCK#data3"));
    /// assert_eq!(state.lock_data_entries(), ["data1", "data2", "data3"]);
    /// ```
    pub fn lock_data_entries(&self) -> Vec<String> {
        let d = self.inner.data.lock();
        let local = d.local_data.get().filter(|_| d.local_busy);
        let remote = d
            .remote
            .iter()
            .map(|held| &held.entry)
            .filter(|e| e.is_busy_at(d.remote_now))
            .filter_map(|e| e.lock_data.as_deref());
        split_lock_data(local.into_iter().chain(remote))
    }

    /// Runs `handler` each time the key turns blocked: after the change, once per change,
    /// in change order. A handler may call back into the state.
    ///
    /// Where it runs:
    /// * for a change this instance made (a controller's transition, [`set_blocked`]), on
    ///   the thread that made it — unless handlers of an earlier change are still running
    ///   on another thread, which then runs this one too, after them, to keep the order;
    /// * for a change made elsewhere (another instance's status, an expiry, the backend
    ///   lost or back, a read-through), on the registry's handler thread
    ///   (`reactive-lock-handlers-<instance>`), never on the driver or on a backend's I/O
    ///   executor: a slow handler delays later handlers, not the propagation of statuses.
    ///
    /// Keep handlers short all the same: the change's caller (an `increment`, a guard's
    /// drop) waits for its own handlers. A handler that panics is caught, logged with the
    /// key (`tracing`, error level) and counted ([`handler_panics`](Self::handler_panics),
    /// [`Metrics::handler_panics`](crate::Metrics)); the change stands, the caller's call
    /// completes and later handlers still run. Without the `std` feature a panic propagates
    /// to the thread that made the change.
    ///
    /// [`set_blocked`]: Self::set_blocked
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    ///
    /// let state = reactive_lock::TrackerState::new();
    /// let hits = Arc::new(AtomicUsize::new(0));
    /// let h = hits.clone();
    /// state.on_blocked(move || { h.fetch_add(1, Ordering::SeqCst); });
    /// state.set_blocked(None);
    /// state.set_blocked(Some("again")); // no change of the aggregate: no call
    /// assert_eq!(hits.load(Ordering::SeqCst), 1);
    /// ```
    pub fn on_blocked(&self, handler: impl Fn() + Send + Sync + 'static) {
        self.inner
            .handlers
            .lock()
            .on_blocked
            .push(Arc::new(handler));
        self.inner.data.lock().has_handlers = true;
    }

    /// Runs `handler` each time the key turns unblocked; see [`on_blocked`](Self::on_blocked).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    ///
    /// let state = reactive_lock::TrackerState::new();
    /// let fired = Arc::new(AtomicBool::new(false));
    /// let f = fired.clone();
    /// state.on_unblocked(move || f.store(true, Ordering::SeqCst));
    /// state.set_blocked(None);
    /// state.set_unblocked();
    /// assert!(fired.load(Ordering::SeqCst));
    /// ```
    pub fn on_unblocked(&self, handler: impl Fn() + Send + Sync + 'static) {
        self.inner
            .handlers
            .lock()
            .on_unblocked
            .push(Arc::new(handler));
        self.inner.data.lock().has_handlers = true;
    }

    /// A stream of status changes (watch semantics): yields the newest [`Status`] after each
    /// change; changes faster than the consumer coalesce into the newest. For async handlers.
    ///
    /// On a registry's state the stream ends (`None`) once the registry's driver has ended
    /// — after [`shutdown`](crate::ReactiveLock::shutdown), when the registry is dropped,
    /// or when the driver's task is dropped — after yielding [`Status::Unknown`] if that is
    /// news. A standalone state's stream never ends.
    ///
    /// # Examples
    ///
    /// ```
    /// use futures_lite::StreamExt;
    /// use reactive_lock::{Status, TrackerState};
    ///
    /// # futures_lite::future::block_on(async {
    /// let state = TrackerState::new();
    /// let mut changes = state.changes();
    /// state.set_blocked(None);
    /// assert_eq!(changes.next().await, Some(Status::Blocked));
    /// # });
    /// ```
    pub fn changes(&self) -> StatusChanges {
        StatusChanges {
            state: self.clone(),
            seen: self.inner.version.load(Ordering::Acquire),
            last: None,
            listener: None,
        }
    }

    // ---- crate-internal: fed by controllers and the driver --------------------------------

    /// Applies a controller transition with its epoch; transitions older than the last
    /// applied one (they raced and lost) are dropped.
    pub(crate) fn apply_local_transition(&self, epoch: u32, busy: bool, data: Option<&str>) {
        self.apply_local_transition_then(epoch, busy, data, |_| ());
    }

    /// Like [`apply_local_transition`](Self::apply_local_transition), running `then` on the
    /// publish slot in the same critical section (before waiters are woken).
    pub(crate) fn apply_local_transition_then<R>(
        &self,
        epoch: u32,
        busy: bool,
        data: Option<&str>,
        then: impl FnOnce(&mut PublishSlot) -> R,
    ) -> R {
        self.update(|d| {
            if epoch_is_newer(epoch, d.local_epoch) {
                d.local_epoch = epoch;
                d.local_busy = busy;
                let data = data.filter(|data| busy && !data.is_empty());
                d.local_data.set(data);
            }
            then(&mut d.slot)
        })
    }

    /// This key's metrics, for a registry's state.
    #[cfg(feature = "metrics")]
    pub(crate) fn instruments(&self) -> Option<&Arc<crate::instruments::KeyInstruments>> {
        self.inner.link.as_ref().map(|link| &link.instruments)
    }

    /// The publish slot, locked (the state's lock).
    pub(crate) fn slot(&self) -> SlotGuard<'_> {
        SlotGuard(self.inner.data.lock())
    }

    /// Replaces the remote entries with a snapshot the subscription delivered (a newer
    /// per-instance `seq` already held wins over an older one in the snapshot) and marks the
    /// backend reachable: the subscription is delivering again.
    ///
    /// Busy, unexpired entries missing from the snapshot are kept — from any snapshot, not
    /// only the recovery's re-read: the store may have restarted empty or lost the key, and
    /// every read until the busy instance re-publishes (a re-read, a read-through, a full
    /// notification another instance's write caused) lacks its entry. An entry known valid
    /// until T stays valid until T unless its owner says otherwise; else a waiter would be
    /// released by the store's amnesia, not by an idle instance.
    pub(crate) fn apply_snapshot(&self, snapshot: &Snapshot) {
        self.apply_snapshot_with(snapshot, None);
    }

    /// Applies a read-through ([`refresh`](Self::refresh)) issued when the state had applied
    /// `issued` entries. The read raced the subscription: an entry applied since it was
    /// issued is kept unless the read holds a strictly newer sequence of it (the read may
    /// have been served before that change was written), and the read's clock is not taken
    /// over a newer one. A read-through is not a subscription: it leaves Unknown as it is.
    fn apply_read(&self, snapshot: &Snapshot, issued: u64) {
        self.apply_snapshot_with(snapshot, Some(issued));
    }

    fn apply_snapshot_with(&self, snapshot: &Snapshot, issued: Option<u64>) {
        let own = self.inner.link.as_ref().map(|l| &*l.own_instance);
        self.update_remote(Cause::Read, |d| {
            // Entries applied after the read was issued (only for a read-through).
            let raced = |held: &Held| issued.is_some_and(|issued| held.applied > issued);
            let applied = d.applied + 1;
            let mut remote = Vec::with_capacity(snapshot.entries.len());
            for entry in &snapshot.entries {
                if Some(entry.instance.as_str()) == own {
                    continue;
                }
                let held = d.remote.iter().find(|h| h.entry.instance == entry.instance);
                match held {
                    Some(held) if entry.seq != 0 && held.entry.seq > entry.seq => {
                        remote.push(held.clone())
                    }
                    Some(held)
                        if raced(held) && !(entry.seq != 0 && entry.seq > held.entry.seq) =>
                    {
                        remote.push(held.clone())
                    }
                    _ => remote.push(Held::new(entry, applied)),
                }
            }
            for held in &d.remote {
                let missing = !snapshot
                    .entries
                    .iter()
                    .any(|e| e.instance == held.entry.instance);
                if missing && (raced(held) || held.entry.is_busy_at(snapshot.store_now)) {
                    remote.push(held.clone());
                }
            }
            let newer_clock_applied = issued.is_some_and(|issued| d.applied > issued);
            #[cfg(feature = "metrics")]
            if let Some(link) = &self.inner.link {
                let now = if newer_clock_applied {
                    d.remote_now
                } else {
                    snapshot.store_now
                };
                link.instruments
                    .expiries
                    .increment(d.expired_by_snapshot(&remote, now));
            }
            d.remote = remote;
            if !newer_clock_applied {
                d.set_clock(snapshot.store_now);
            }
            if issued.is_none() {
                d.applied = applied;
                d.connected = true;
            }
            false
        });
    }

    /// Applies one instance's changed entry, unless it is older than the one held. The
    /// update's clock is taken as the store's clock now, also when it is behind the estimate:
    /// a store clock that stepped back stamps new entries on the new clock, and judging them
    /// against the old one would expire live entries.
    pub(crate) fn apply_update(&self, entry: &Entry, store_now: StoreTime) {
        let own = self.inner.link.as_ref().map(|l| &*l.own_instance);
        if Some(entry.instance.as_str()) == own {
            return;
        }
        // From the store's write to here, on this process's clock: skew between the two
        // clocks adds to it, and a reading the skew makes negative is left out.
        #[cfg(feature = "metrics")]
        if let Some(link) = &self.inner.link {
            let now = StoreTime::now_system().as_unix_nanos();
            if let Some(nanos) = now.checked_sub(store_now.as_unix_nanos()) {
                link.instruments
                    .propagation_seconds
                    .record(core::time::Duration::from_nanos(nanos).as_secs_f64());
            }
        }
        self.update_remote(Cause::Instance(&entry.instance), |d| {
            d.applied += 1;
            let applied = d.applied;
            match d
                .remote
                .iter_mut()
                .find(|h| h.entry.instance == entry.instance)
            {
                Some(held) if entry.seq != 0 && held.entry.seq >= entry.seq => {}
                Some(held) => *held = Held::new(entry, applied),
                None => d.remote.push(Held::new(entry, applied)),
            }
            #[cfg(feature = "metrics")]
            if let Some(link) = &self.inner.link {
                link.instruments
                    .expiries
                    .increment(d.expiring_at(store_now, Some(&entry.instance)));
            }
            d.set_clock(store_now);
            false
        });
    }

    /// Marks the backend reachable or not (Unknown status and policy while not).
    pub(crate) fn set_connected(&self, connected: bool) {
        self.update_remote(Cause::Connection, |d| {
            d.connected = connected;
            false
        });
    }

    /// Marks whether a driver is applying the subscription to this state (Unknown while
    /// not).
    pub(crate) fn set_driven(&self, driven: bool) {
        self.update_remote(Cause::Driver, |d| {
            d.driven = driven && !d.ended;
            false
        });
    }

    /// The registry's driver has ended: Unknown from now on, and [`changes`](Self::changes)
    /// streams end.
    pub(crate) fn end(&self) {
        self.update_remote(Cause::Driver, |d| {
            d.driven = false;
            d.ended = true;
            false
        });
    }

    /// Advances the store clock estimate to `now` on the local monotonic clock and
    /// re-evaluates expiry; returns the instant of the next expiry, if any.
    #[cfg(feature = "std")]
    pub(crate) fn advance_clock(&self, now: std::time::Instant) -> Option<std::time::Instant> {
        let mut next = None;
        self.update_remote(Cause::Expiry, |d| {
            if let Some(base) = d.clock_base {
                let store_now = d
                    .remote_now
                    .saturating_add(now.saturating_duration_since(base));
                #[cfg(feature = "metrics")]
                if let Some(link) = &self.inner.link {
                    link.instruments
                        .expiries
                        .increment(d.expiring_at(store_now, None));
                }
                d.remote_now = store_now;
                d.clock_base = Some(now);
            }
            next = d.next_expiry_instant();
            false
        });
        next
    }

    /// A counted listener of `changed`, registered under the state's lock (see
    /// [`Signal::has_listeners_locked`]); re-check the condition before awaiting it.
    fn listen_changed(&self) -> SignalListener<'_> {
        let _data = self.inner.data.lock();
        self.inner.changed.listen()
    }

    /// Like [`listen_changed`](Self::listen_changed), uncounted by
    /// [`Signal::unregister`].
    fn register_changed(&self) -> EventListener {
        let _data = self.inner.data.lock();
        self.inner.changed.register()
    }

    /// Runs `change` (one this instance made) under the lock, re-evaluates the flags, wakes
    /// waiters and runs the handlers for any change on this thread. Returns what `change`
    /// returned.
    fn update<R>(&self, change: impl FnOnce(&mut StateData) -> R) -> R {
        self.update_with(Cause::Own, change)
    }

    /// Like [`update`](Self::update), for a change this instance did not make (applied by
    /// the driver): a registry's handlers for it run on its handler thread, never on the
    /// driver's.
    fn update_remote<R>(&self, cause: Cause<'_>, change: impl FnOnce(&mut StateData) -> R) -> R {
        self.update_with(cause, change)
    }

    // Inline: each caller passes its own closure, which then needs no environment built on
    // the stack for a call, on the transition path above all.
    #[inline]
    fn update_with<R>(&self, cause: Cause<'_>, change: impl FnOnce(&mut StateData) -> R) -> R {
        let inner = &*self.inner;
        let remote = !matches!(cause, Cause::Own);
        let (result, notify, queued, status_changed) = {
            let mut d = inner.data.lock();
            let result = change(&mut d);
            #[cfg(feature = "metrics")]
            if let Some(link) = &inner.link {
                let busy = d
                    .remote
                    .iter()
                    .filter(|held| held.entry.is_busy_at(d.remote_now))
                    .count()
                    + usize::from(d.local_busy);
                link.instruments.busy_instances.set(busy as f64);
            }
            let old = inner.flags.load(Ordering::Relaxed);
            let new = d.evaluate(inner.policy, old);
            let mut queued = false;
            if new != old {
                if (new ^ old) & BLOCKED != 0 && d.has_handlers {
                    d.pending.push_back(new & BLOCKED != 0);
                    queued = true;
                }
                // Plain release stores (both are only written under `data`'s lock): waiters
                // acquire them through the `Signal`'s read-modify-write or its list lock.
                inner.flags.store(new, Ordering::Release);
                let version = inner.version.load(Ordering::Relaxed);
                inner
                    .version
                    .store(version.wrapping_add(1), Ordering::Release);
            }
            // Listeners register under this lock (`listen_changed`): a plain load here
            // orders against them, no fence on the transition path.
            (
                result,
                new != old && inner.changed.has_listeners_locked(),
                queued,
                (new ^ old) & (BLOCKED | UNKNOWN) != 0,
            )
        };
        if notify {
            inner.changed.notify_all_unchecked();
        }
        if status_changed {
            #[cfg(feature = "metrics")]
            if let Some(link) = &inner.link {
                let flags = inner.flags.load(Ordering::Relaxed);
                link.instruments.blocked.set(f64::from(flags & BLOCKED));
                link.instruments
                    .unknown
                    .set(f64::from((flags & UNKNOWN) >> 1));
            }
            if tracing::enabled!(tracing::Level::DEBUG) {
                self.log_status_change(cause);
            }
        }
        if queued {
            #[cfg(feature = "std")]
            if remote && let Some(link) = &inner.link {
                let state = self.clone();
                link.handlers
                    .run(alloc::boxed::Box::new(move || state.dispatch_handlers()));
                return result;
            }
            #[cfg(not(feature = "std"))]
            let _ = remote;
            self.dispatch_handlers();
        }
        result
    }

    /// The debug event on every change of a key's status: out of line, as it is off by
    /// default and the transition path is short.
    #[cold]
    #[inline(never)]
    fn log_status_change(&self, cause: Cause<'_>) {
        let key = self.inner.link.as_ref().map_or("", |link| &*link.key);
        tracing::debug!(key, status = ?self.status(), %cause, "reactive-lock: key status changed");
    }

    /// Drains the handler queue unless another thread is already draining it. Handlers run
    /// outside every lock, so they may call back into this state. The `dispatching` flag
    /// lives under the same lock as the queue: a dispatcher gives it up only when it finds
    /// the queue empty, so an item pushed by a thread that saw the flag held is never left
    /// behind.
    fn dispatch_handlers(&self) {
        let inner = &*self.inner;
        {
            let mut d = inner.data.lock();
            if d.dispatching || d.pending.is_empty() {
                return;
            }
            d.dispatching = true;
        }
        let mut release = ReleaseOnUnwind(Some(self));
        loop {
            let blocked = {
                let mut d = inner.data.lock();
                match d.pending.pop_front() {
                    Some(blocked) => blocked,
                    None => {
                        d.dispatching = false;
                        release.0 = None;
                        return;
                    }
                }
            };
            let handlers: Vec<Handler> = {
                let h = inner.handlers.lock();
                if blocked {
                    h.on_blocked.clone()
                } else {
                    h.on_unblocked.clone()
                }
            };
            for handler in handlers {
                self.run_handler(&*handler);
            }
        }
    }

    /// Runs one handler. A panic is caught, logged with the key and counted
    /// ([`handler_panics`](Self::handler_panics)): the change that ran it is already
    /// applied, the caller's guard or count change completes, later handlers still run, and
    /// a driver that applied a remote change keeps going.
    #[cfg(feature = "std")]
    fn run_handler(&self, handler: &(dyn Fn() + Send + Sync)) {
        if let Err(panic) = std::panic::catch_unwind(core::panic::AssertUnwindSafe(handler)) {
            self.inner.handler_panics.fetch_add(1, Ordering::Relaxed);
            #[cfg(feature = "metrics")]
            if let Some(link) = &self.inner.link {
                link.instruments.handler_panics.increment(1);
            }
            let message = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(not a string)");
            let key = self.inner.link.as_ref().map_or("", |link| &*link.key);
            tracing::error!(
                key,
                panic = message,
                "reactive-lock: an on_blocked/on_unblocked handler panicked; the change stands and later handlers still run"
            );
        }
    }

    /// Without `std` a panic cannot be caught: it propagates to the thread that made the
    /// change, and the dispatching role is given up on the way (see [`ReleaseOnUnwind`]).
    #[cfg(not(feature = "std"))]
    fn run_handler(&self, handler: &(dyn Fn() + Send + Sync)) {
        handler();
    }

    /// How many handler calls of this state panicked (each was caught and logged; see
    /// [`on_blocked`](Self::on_blocked)). Always 0 without the `std` feature, where a
    /// handler's panic propagates instead.
    ///
    /// # Examples
    ///
    /// ```
    /// let state = reactive_lock::TrackerState::new();
    /// state.on_blocked(|| panic!("a handler bug"));
    /// # std::panic::set_hook(Box::new(|_| {}));
    /// state.set_blocked(None); // the panic is caught: the state is blocked all the same
    /// assert!(state.is_blocked());
    /// assert_eq!(state.handler_panics(), 1);
    /// ```
    pub fn handler_panics(&self) -> u64 {
        self.inner.handler_panics.load(Ordering::Relaxed)
    }

    /// How many tasks and threads are waiting for this key to unblock right now (inside a
    /// `wait_if_blocked*` call that found it blocked). A reading for monitoring: it may be
    /// stale by the time it is returned. With the `metrics` feature the same count is the
    /// `reactive_lock_waiting` gauge.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let state = reactive_lock::TrackerState::new();
    /// state.set_blocked(None);
    /// let waiter = {
    ///     let state = state.clone();
    ///     std::thread::spawn(move || state.wait_if_blocked_blocking())
    /// };
    /// while state.waiting() == 0 {
    ///     std::thread::yield_now();
    /// }
    /// state.set_unblocked();
    /// assert!(waiter.join().unwrap(), "it waited");
    /// assert_eq!(state.waiting(), 0);
    /// ```
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::Relaxed)
    }
}

/// Counts one waiter of a state for as long as it waits ([`TrackerState::waiting`]); off
/// the transition path, which never reads it.
struct Waiting<'a>(&'a TrackerState);

impl<'a> Waiting<'a> {
    fn enter(state: &'a TrackerState) -> Self {
        state.inner.waiting.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(link) = &state.inner.link {
            link.instruments.waiting.increment(1.0);
        }
        Waiting(state)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.inner.waiting.fetch_sub(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(link) = &self.0.inner.link {
            link.instruments.waiting.decrement(1.0);
        }
    }
}

/// Gives the dispatching role up when a handler panics, so later changes still run their
/// handlers (the panic propagates to the thread that made the change).
struct ReleaseOnUnwind<'a>(Option<&'a TrackerState>);

impl Drop for ReleaseOnUnwind<'_> {
    fn drop(&mut self) {
        if let Some(state) = self.0 {
            state.inner.data.lock().dispatching = false;
        }
    }
}

impl StateData {
    fn evaluate(&self, policy: UnknownPolicy, _old: u8) -> u8 {
        let ended = if self.ended { ENDED } else { 0 };
        if self.local_busy {
            return BLOCKED | ended;
        }
        let remote_busy = self
            .remote
            .iter()
            .any(|held| held.entry.is_busy_at(self.remote_now));
        // Without a subscription, or without a driver applying it, other instances'
        // changes go unheard: the status is Unknown, whatever the last entries say.
        if self.connected && self.driven {
            return ended | if remote_busy { BLOCKED } else { 0 };
        }
        let blocked = match policy {
            UnknownPolicy::KeepLast => remote_busy,
            UnknownPolicy::Blocked => true,
            UnknownPolicy::Unblocked => false,
        };
        ended | UNKNOWN | if blocked { BLOCKED } else { 0 }
    }

    /// Held entries, other than `except`'s (being replaced by its owner), that are busy on
    /// the store clock now and expired at `now`: each is counted once, when the clock
    /// passes its `valid_until`, not on every later evaluation.
    #[cfg(feature = "metrics")]
    fn expiring_at(&self, now: StoreTime, except: Option<&str>) -> u64 {
        self.remote
            .iter()
            .filter(|held| Some(held.entry.instance.as_str()) != except)
            .filter(|held| held.entry.is_busy_at(self.remote_now) && !held.entry.is_busy_at(now))
            .count() as u64
    }

    /// Held entries busy on the store clock now that a snapshot ends by expiry rather than
    /// by a newer status: the snapshot holds the same status of the instance, expired at
    /// `now`, or leaves it out (a busy entry it lacks is kept unless it expired).
    #[cfg(feature = "metrics")]
    fn expired_by_snapshot(&self, replacement: &[Held], now: StoreTime) -> u64 {
        self.remote
            .iter()
            .filter(|held| held.entry.is_busy_at(self.remote_now))
            .filter(|held| {
                match replacement
                    .iter()
                    .find(|new| new.entry.instance == held.entry.instance)
                {
                    None => true,
                    Some(new) => {
                        new.entry.busy
                            && new.entry.seq == held.entry.seq
                            && new.entry.valid_until == held.entry.valid_until
                            && !new.entry.is_busy_at(now)
                    }
                }
            })
            .count() as u64
    }

    fn set_clock(&mut self, store_now: StoreTime) {
        self.remote_now = store_now;
        #[cfg(feature = "std")]
        {
            self.clock_base = Some(std::time::Instant::now());
        }
    }

    #[cfg(feature = "std")]
    fn next_expiry_instant(&self) -> Option<std::time::Instant> {
        let base = self.clock_base?;
        // An entry valid for centuries (anyone can write the store) must not overflow the
        // instant: it simply never comes due.
        crate::backend::next_expiry(self.remote.iter().map(|held| &held.entry), self.remote_now)
            .and_then(|d| base.checked_add(d))
    }
}

/// Another instance's entry as this state holds it.
#[derive(Clone)]
struct Held {
    entry: Entry,
    /// `StateData::applied` when it was applied.
    applied: u64,
}

impl Held {
    /// Empty lock data is no lock data, as the .NET ReactiveLock reads it (`IsNullOrEmpty`),
    /// whichever backend or writer it came from.
    fn new(entry: &Entry, applied: u64) -> Self {
        let mut entry = entry.clone();
        if entry.lock_data.as_deref() == Some("") {
            entry.lock_data = None;
        }
        Held { entry, applied }
    }
}

/// Stream of [`Status`] changes returned by [`TrackerState::changes`].
///
/// # Examples
///
/// ```
/// use futures_lite::StreamExt;
/// use reactive_lock::{Status, TrackerState};
///
/// # futures_lite::future::block_on(async {
/// let state = TrackerState::new();
/// let mut changes = state.changes();
/// state.set_blocked(None);
/// state.set_unblocked();
/// // Two changes before the consumer looked: it sees the newest.
/// assert_eq!(changes.next().await, Some(Status::Unblocked));
/// # });
/// ```
pub struct StatusChanges {
    state: TrackerState,
    seen: u64,
    /// The status yielded last, so the end of a registry's driver adds no repeat of it.
    last: Option<Status>,
    listener: Option<EventListener>,
}

impl fmt::Debug for StatusChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusChanges")
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl StatusChanges {
    /// Drops the listener, if any, and uncounts it.
    fn drop_listener(&mut self) {
        if self.listener.take().is_some() {
            self.state.inner.changed.unregister();
        }
    }
}

impl Drop for StatusChanges {
    fn drop(&mut self) {
        self.drop_listener();
    }
}

impl Stream for StatusChanges {
    type Item = Status;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Status>> {
        let this = &mut *self;
        loop {
            let version = this.state.inner.version.load(Ordering::Acquire);
            let ended = this.state.inner.flags.load(Ordering::Acquire) & ENDED != 0;
            if version != this.seen {
                this.seen = version;
                this.drop_listener();
                let status = this.state.status();
                if !(ended && this.last == Some(status)) {
                    this.last = Some(status);
                    return Poll::Ready(Some(status));
                }
            }
            if ended {
                this.drop_listener();
                return Poll::Ready(None);
            }
            match &mut this.listener {
                None => this.listener = Some(this.state.register_changed()),
                Some(listener) => {
                    core::task::ready!(Pin::new(listener).poll(cx));
                    this.drop_listener();
                }
            }
        }
    }
}

/// How long [`TrackerState::wait_if_blocked_consistent`] gives a registry's driver that was
/// handed to the caller's executor to start before it reports [`Error::NoDriver`]: spawning
/// a task and its first poll are not one step.
///
/// [`Error::NoDriver`]: crate::Error::NoDriver
#[cfg(feature = "std")]
const DRIVER_START_GRACE: core::time::Duration = core::time::Duration::from_secs(1);

#[cfg(feature = "std")]
impl TrackerState {
    /// Refuses (panics) to park a thread that runs the backend's I/O: it would deadlock
    /// the wait, or stall it until a timeout, and all other I/O meanwhile.
    fn refuse_blocking_on_io_thread(&self) {
        if let Some(link) = &self.inner.link
            && link.backend.runs_io_on_this_thread_dyn()
        {
            panic!(
                "reactive-lock: a blocking wait on key `{}` on a thread that runs the backend's I/O \
                 (for Redis: smol's executor) would stall the I/O it waits for; await \
                 wait_if_blocked() there, or block on a thread of your own",
                link.key
            );
        }
    }

    /// Blocking twin of [`wait_if_blocked`](Self::wait_if_blocked), for sync code: parks the
    /// thread until the key is unblocked. Returns whether it waited.
    ///
    /// # Panics
    ///
    /// On a thread that runs the backend's I/O — for the Redis backend, a thread of smol's
    /// global executor (a `smol::spawn` task): parking it would stall the I/O that is to
    /// end the wait, and every other key's with it. Await
    /// [`wait_if_blocked`](Self::wait_if_blocked) there instead, or block on a thread of
    /// your own (`smol::unblock`, `spawn_blocking`).
    ///
    /// # Examples
    ///
    /// ```
    /// let state = reactive_lock::TrackerState::new();
    /// assert!(!state.wait_if_blocked_blocking());
    /// ```
    pub fn wait_if_blocked_blocking(&self) -> bool {
        self.refuse_blocking_on_io_thread();
        if !self.is_blocked() {
            return false;
        }
        let _waiting = Waiting::enter(self);
        loop {
            let listener = self.listen_changed();
            if !self.is_blocked() {
                return true;
            }
            listener.wait();
            if !self.is_blocked() {
                return true;
            }
        }
    }

    /// Blocking wait with a time limit. A `timeout` too long to be a deadline (such as
    /// `Duration::MAX`) waits without one.
    ///
    /// # Errors
    ///
    /// [`Timeout`](crate::Timeout) if the key is still blocked after `timeout`.
    ///
    /// # Panics
    ///
    /// As for [`wait_if_blocked_blocking`](Self::wait_if_blocked_blocking), on a thread that
    /// runs the backend's I/O.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let state = reactive_lock::TrackerState::new();
    /// state.set_blocked(None);
    /// assert!(state.wait_if_blocked_blocking_timeout(Duration::from_millis(5)).is_err());
    /// ```
    pub fn wait_if_blocked_blocking_timeout(
        &self,
        timeout: core::time::Duration,
    ) -> Result<bool, crate::Timeout> {
        self.refuse_blocking_on_io_thread();
        if !self.is_blocked() {
            return Ok(false);
        }
        // A deadline past what an `Instant` can hold is no deadline.
        let deadline = std::time::Instant::now().checked_add(timeout);
        let _waiting = Waiting::enter(self);
        loop {
            let listener = self.listen_changed();
            if !self.is_blocked() {
                return Ok(true);
            }
            let in_time = match deadline {
                Some(deadline) => listener.wait_deadline(deadline),
                None => {
                    listener.wait();
                    true
                }
            };
            if !in_time && self.is_blocked() {
                return Err(crate::Timeout { waited: timeout });
            }
            if !self.is_blocked() {
                return Ok(true);
            }
        }
    }

    /// [`wait_if_blocked`](Self::wait_if_blocked) with a time limit. Works on any executor
    /// (the timer is async-io's).
    ///
    /// # Errors
    ///
    /// [`Timeout`](crate::Timeout) if the key is still blocked after `timeout`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping it only unregisters the waiter and the timer.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # futures_lite::future::block_on(async {
    /// let state = reactive_lock::TrackerState::new();
    /// assert_eq!(state.wait_if_blocked_timeout(Duration::from_secs(1)).await, Ok(false));
    /// # });
    /// ```
    pub async fn wait_if_blocked_timeout(
        &self,
        timeout: core::time::Duration,
    ) -> Result<bool, crate::Timeout> {
        if !self.is_blocked() {
            return Ok(false);
        }
        futures_lite::future::or(async { Ok(self.wait_if_blocked().await) }, async {
            async_io::Timer::after(timeout).await;
            if self.is_blocked() {
                Err(crate::Timeout { waited: timeout })
            } else {
                Ok(true)
            }
        })
        .await
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use core::sync::atomic::AtomicUsize;
    use core::time::Duration;
    use std::sync::Mutex as StdMutex;

    fn entry(name: &str, busy: bool, data: Option<&str>, until: u64, seq: u64) -> Entry {
        Entry::new(
            name,
            busy,
            data.map(String::from),
            StoreTime::from_unix_nanos(until),
        )
        .with_seq(seq)
    }

    #[test]
    fn remote_busy_blocks_until_expiry_on_store_clock() {
        let state = TrackerState::new();
        let snap = Snapshot::new(
            "k",
            alloc::vec![entry("b", true, Some("x"), 2_000, 1)],
            StoreTime::from_unix_nanos(1_000),
        );
        state.apply_snapshot(&snap);
        assert!(state.is_blocked());
        assert_eq!(state.lock_data().as_deref(), Some("x"));
        // Same snapshot with the store clock at valid_until: expired (`>` not `>=`).
        let snap = Snapshot::new("k", snap.entries.clone(), StoreTime::from_unix_nanos(2_000));
        state.apply_snapshot(&snap);
        assert!(!state.is_blocked());
        assert_eq!(state.lock_data(), None);
    }

    #[test]
    fn snapshots_keep_busy_entries_the_store_forgot() {
        let state = TrackerState::new();
        let now = StoreTime::from_unix_nanos(1_000);
        state.apply_update(&entry("b", true, Some("x"), 5_000, 1), now);
        state.apply_update(&entry("c", true, None, 1_500, 1), now);
        let empty = Snapshot::new("k", alloc::vec![], StoreTime::from_unix_nanos(2_000));
        state.apply_snapshot(&empty);
        assert_eq!(
            state.lock_data().as_deref(),
            Some("x"),
            "b kept until its valid_until; c expired"
        );
        let later = Snapshot::new("k", alloc::vec![], StoreTime::from_unix_nanos(5_001));
        state.apply_snapshot(&later);
        assert!(!state.is_blocked(), "b's own expiry ends it");
        state.apply_update(&entry("b", true, None, 9_000, 2), now);
        state.apply_update(&entry("b", false, None, 9_000, 3), now);
        assert!(
            !state.is_blocked(),
            "its owner's idle status ends it at once"
        );
    }

    #[test]
    fn older_update_never_overrides_newer() {
        let state = TrackerState::new();
        let now = StoreTime::from_unix_nanos(1);
        state.apply_update(&entry("b", true, Some("new"), u64::MAX, 5), now);
        state.apply_update(&entry("b", false, None, u64::MAX, 4), now);
        assert!(state.is_blocked());
        // An older full snapshot keeps the newer entry too.
        state.apply_snapshot(&Snapshot::new(
            "k",
            alloc::vec![entry("b", false, None, u64::MAX, 3)],
            now,
        ));
        assert!(state.is_blocked());
        state.apply_update(&entry("b", false, None, u64::MAX, 6), now);
        assert!(!state.is_blocked());
    }

    #[test]
    fn local_transitions_apply_in_epoch_order() {
        let state = TrackerState::new();
        state.apply_local_transition(2, false, None);
        state.apply_local_transition(1, true, Some("late"));
        assert!(
            !state.is_blocked(),
            "epoch 1 arrived after epoch 2 and must be dropped"
        );
        state.apply_local_transition(3, true, Some("d"));
        assert_eq!(state.lock_data().as_deref(), Some("d"));
        assert!(epoch_is_newer(0, u32::MAX), "wrap-around keeps order");
        assert!(!epoch_is_newer(u32::MAX, 0));
    }

    #[test]
    fn unknown_policies() {
        for (policy, blocked) in [
            (UnknownPolicy::KeepLast, true),
            (UnknownPolicy::Blocked, true),
            (UnknownPolicy::Unblocked, false),
        ] {
            let state = TrackerState::with_parts(policy, None);
            state.apply_update(
                &entry("b", true, None, u64::MAX, 1),
                StoreTime::from_unix_nanos(1),
            );
            state.set_connected(false);
            assert_eq!(state.status(), Status::Unknown);
            assert_eq!(state.is_blocked(), blocked, "{policy:?}");
        }
        let state = TrackerState::with_parts(UnknownPolicy::Blocked, None);
        state.set_connected(false);
        assert!(state.is_blocked());
        state.set_blocked(None);
        assert_eq!(
            state.status(),
            Status::Blocked,
            "own busy status is certain"
        );
        state.set_unblocked();
        state.set_connected(true);
        assert_eq!(state.status(), Status::Unblocked);
    }

    #[test]
    fn handlers_run_in_order_once_per_change_and_may_reenter() {
        let state = TrackerState::new();
        let log = Arc::new(StdMutex::new(Vec::new()));
        let (l1, l2) = (log.clone(), log.clone());
        let reenter = state.clone();
        let once = Arc::new(AtomicUsize::new(0));
        let once2 = once.clone();
        state.on_blocked(move || {
            l1.lock().unwrap().push("blocked");
            // Re-entrant call from a handler: must not deadlock, must be queued in order.
            if once2.fetch_add(1, Ordering::SeqCst) == 0 {
                reenter.set_unblocked();
            }
        });
        state.on_unblocked(move || l2.lock().unwrap().push("unblocked"));
        state.set_blocked(None);
        state.set_blocked(None);
        state.set_blocked(None);
        state.set_unblocked();
        assert_eq!(
            *log.lock().unwrap(),
            ["blocked", "unblocked", "blocked", "unblocked"]
        );
    }

    #[test]
    fn panicking_handler_does_not_stop_later_handlers() {
        let state = TrackerState::new();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        state.on_blocked(|| panic!("handler failure"));
        state.on_unblocked(move || {
            h.fetch_add(1, Ordering::SeqCst);
        });
        // Caught: the change stands and the caller's call returns normally.
        assert!(state.set_blocked(None));
        assert!(state.is_blocked());
        assert_eq!(state.handler_panics(), 1);
        state.set_unblocked();
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    /// Until some task or thread waits on `state` (bounded, so a waiter that never comes
    /// fails the test instead of hanging it).
    fn wait_for_a_waiter(state: &TrackerState) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while state.waiting() == 0 {
            assert!(std::time::Instant::now() < deadline, "no waiter registered");
            std::thread::yield_now();
        }
    }

    #[test]
    fn blocking_timeout_and_release() {
        let state = TrackerState::new();
        state.set_blocked(None);
        assert_eq!(
            state.wait_if_blocked_blocking_timeout(Duration::from_millis(20)),
            Err(crate::Timeout {
                waited: Duration::from_millis(20)
            })
        );
        let s = state.clone();
        let t =
            std::thread::spawn(move || s.wait_if_blocked_blocking_timeout(Duration::from_secs(30)));
        wait_for_a_waiter(&state);
        state.set_unblocked();
        assert_eq!(t.join().unwrap(), Ok(true));
    }

    #[test]
    fn async_timeout() {
        futures_lite::future::block_on(async {
            let state = TrackerState::new();
            state.set_blocked(None);
            let r = state
                .wait_if_blocked_timeout(Duration::from_millis(20))
                .await;
            assert!(r.is_err());
            let s = state.clone();
            let t = std::thread::spawn(move || {
                wait_for_a_waiter(&s);
                s.set_unblocked();
            });
            assert_eq!(
                state.wait_if_blocked_timeout(Duration::from_secs(30)).await,
                Ok(true)
            );
            t.join().unwrap();
        });
    }
}
