//! The `Backend` trait ("pluggable sync") and the types that cross it.
//!
//! A backend is transport + store for instance statuses per key. It stays small: publish
//! one instance's status, read a key's snapshot, subscribe to keys. Everything that is the
//! same for every backend — expiry judgement, renewal, recovery, retry, ordering of local
//! transitions — lives in the core, once.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::future::Future;
use core::pin::Pin;
use core::time::Duration;

use futures_core::Stream;

use crate::error::BackendError;

/// A point in time on the **store's** clock, in nanoseconds since the Unix epoch.
///
/// Expiry is always judged by comparing an entry's `valid_until` with the `store_now` that
/// came in the same [`Snapshot`], so instances with skewed clocks agree on what is expired.
///
/// # Examples
///
/// ```
/// use reactive_lock::StoreTime;
/// use std::time::Duration;
///
/// let t = StoreTime::from_unix_nanos(1_700_000_000_000_000_000);
/// // .NET ticks: 100 ns units since 0001-01-01, as the .NET ReactiveLock writes them.
/// assert_eq!(StoreTime::from_dotnet_ticks(t.to_dotnet_ticks()), Some(t));
/// assert_eq!((t + Duration::from_secs(1)).duration_since(t), Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StoreTime(u64);

/// .NET ticks at the Unix epoch (1970-01-01T00:00:00Z).
const DOTNET_TICKS_AT_UNIX_EPOCH: u64 = 621_355_968_000_000_000;

impl StoreTime {
    /// The Unix epoch.
    pub const UNIX_EPOCH: StoreTime = StoreTime(0);

    /// From nanoseconds since the Unix epoch.
    pub const fn from_unix_nanos(nanos: u64) -> Self {
        StoreTime(nanos)
    }

    /// Nanoseconds since the Unix epoch.
    pub const fn as_unix_nanos(self) -> u64 {
        self.0
    }

    /// From .NET `DateTime.UtcNow.Ticks` (100 ns units since 0001-01-01). `None` for ticks
    /// before the Unix epoch or too large to represent.
    pub fn from_dotnet_ticks(ticks: u64) -> Option<Self> {
        let since_epoch = ticks.checked_sub(DOTNET_TICKS_AT_UNIX_EPOCH)?;
        since_epoch.checked_mul(100).map(StoreTime)
    }

    /// As .NET ticks (100 ns units since 0001-01-01), the format of the Redis wire value.
    pub const fn to_dotnet_ticks(self) -> u64 {
        self.0 / 100 + DOTNET_TICKS_AT_UNIX_EPOCH
    }

    /// The time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub const fn duration_since(self, earlier: StoreTime) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// `self + d`, saturating at the far future.
    pub fn saturating_add(self, d: Duration) -> Self {
        StoreTime(
            self.0
                .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        )
    }

    /// The current time of this process's system clock (for stores whose clock is the
    /// local clock, such as [`LocalBackend`](crate::LocalBackend)).
    #[cfg(feature = "std")]
    pub fn now_system() -> Self {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        StoreTime(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }
}

impl core::ops::Add<Duration> for StoreTime {
    type Output = StoreTime;
    fn add(self, rhs: Duration) -> StoreTime {
        self.saturating_add(rhs)
    }
}

/// The status one instance publishes for one key.
///
/// # Examples
///
/// ```
/// use reactive_lock::InstanceStatus;
/// use std::time::Duration;
///
/// let status = InstanceStatus::busy(Some("batch-7".into()), 1, Duration::from_secs(10));
/// assert!(status.busy);
/// assert_eq!(InstanceStatus::idle(2, Duration::from_secs(10)).lock_data, None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InstanceStatus {
    /// Whether the instance is busy for the key.
    pub busy: bool,
    /// The instance's lock data while busy.
    pub lock_data: Option<String>,
    /// Strictly increasing per (instance, key), also across restarts of an instance with the
    /// same name (it starts from the wall clock in nanoseconds, and continues above what the
    /// store holds when that is higher). A backend that stores statuses must never replace a
    /// status with one of a lower `seq`, and must report such a publish as
    /// [`BackendErrorKind::Superseded`](crate::BackendErrorKind::Superseded) with the held
    /// sequence ([`BackendError::superseded`](crate::BackendError::superseded)), never as
    /// success: the registry then continues above it.
    pub seq: u64,
    /// How long the status stays valid without renewal; the store sets
    /// `valid_until = store_now + valid_for` on its own clock (for a busy status: an idle
    /// one never expires into anything, so a backend may stamp it on another clock).
    pub valid_for: Duration,
}

impl InstanceStatus {
    /// A busy status.
    pub fn busy(lock_data: Option<String>, seq: u64, valid_for: Duration) -> Self {
        Self {
            busy: true,
            lock_data,
            seq,
            valid_for,
        }
    }

    /// An idle status.
    pub fn idle(seq: u64, valid_for: Duration) -> Self {
        Self {
            busy: false,
            lock_data: None,
            seq,
            valid_for,
        }
    }
}

/// One instance's entry for a key, as stored by the backend.
///
/// # Examples
///
/// ```
/// use reactive_lock::{Entry, StoreTime};
/// use std::time::Duration;
///
/// let now = StoreTime::from_unix_nanos(1_000_000_000);
/// let entry = Entry::new("api-1", true, Some("x".into()), now + Duration::from_secs(10));
/// assert!(entry.is_busy_at(now));
/// assert!(!entry.is_busy_at(now + Duration::from_secs(10)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Entry {
    /// The instance's name.
    pub instance: String,
    /// Whether the instance said it is busy.
    pub busy: bool,
    /// Its lock data.
    pub lock_data: Option<String>,
    /// When the entry stops counting, on the store's clock.
    pub valid_until: StoreTime,
    /// The status sequence, when the backend knows it (0 = unknown, e.g. a .NET writer).
    pub seq: u64,
}

impl Entry {
    /// A new entry with unknown sequence.
    pub fn new(
        instance: impl Into<String>,
        busy: bool,
        lock_data: Option<String>,
        valid_until: StoreTime,
    ) -> Self {
        Self {
            instance: instance.into(),
            busy,
            lock_data,
            valid_until,
            seq: 0,
        }
    }

    /// Sets the status sequence this entry was written with.
    pub fn with_seq(mut self, seq: u64) -> Self {
        self.seq = seq;
        self
    }

    /// Busy and not expired at `now` (the store's clock). An entry whose `valid_until` equals
    /// `now` is expired, as in .NET (`validUntil > now`).
    pub fn is_busy_at(&self, now: StoreTime) -> bool {
        self.busy && self.valid_until > now
    }
}

/// Every instance's entry for one key, and the store's clock when it was read.
///
/// # Examples
///
/// ```
/// use reactive_lock::{Entry, Snapshot, StoreTime};
/// use std::time::Duration;
///
/// let now = StoreTime::from_unix_nanos(5_000_000_000);
/// let snapshot = Snapshot::new(
///     "payments",
///     vec![
///         Entry::new("a", true, Some("x".into()), now + Duration::from_secs(3)),
///         Entry::new("b", true, None, StoreTime::from_unix_nanos(4_000_000_000)), // expired
///         Entry::new("c", false, None, now + Duration::from_secs(9)),
///     ],
///     now,
/// );
/// assert!(snapshot.is_blocked());
/// assert_eq!(snapshot.next_expiry(), Some(Duration::from_secs(3)));
/// assert_eq!(snapshot.lock_data_entries(), vec!["x".to_string()]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The key.
    pub key: String,
    /// Every instance's entry (busy or not, expired or not).
    pub entries: Vec<Entry>,
    /// The store's clock when the entries were read; expiry is judged against it.
    pub store_now: StoreTime,
}

impl Snapshot {
    /// A new snapshot.
    pub fn new(key: impl Into<String>, entries: Vec<Entry>, store_now: StoreTime) -> Self {
        Self {
            key: key.into(),
            entries,
            store_now,
        }
    }

    /// Whether any entry is busy and unexpired at `store_now`.
    pub fn is_blocked(&self) -> bool {
        self.entries.iter().any(|e| e.is_busy_at(self.store_now))
    }

    /// Time from `store_now` until the earliest busy entry expires, `None` if no entry is
    /// busy and unexpired. The driver re-arms this on the local monotonic clock when the
    /// snapshot arrives, so a crashed instance's key unblocks on time with no new message.
    pub fn next_expiry(&self) -> Option<Duration> {
        next_expiry(&self.entries, self.store_now)
    }

    /// The lock data of busy, unexpired entries, in entry order, each split on
    /// [`LOCK_DATA_SEPARATOR`](crate::LOCK_DATA_SEPARATOR) as
    /// [`TrackerState::lock_data_entries`](crate::TrackerState::lock_data_entries) splits it.
    pub fn lock_data_entries(&self) -> Vec<String> {
        split_lock_data(
            self.entries
                .iter()
                .filter(|e| e.is_busy_at(self.store_now))
                .filter_map(|e| e.lock_data.as_deref()),
        )
    }
}

/// The separator the .NET ReactiveLock uses to join the lock data of all busy instances
/// (`LOCK_DATA_SEPARATOR`); [`TrackerState::lock_data`](crate::TrackerState::lock_data) joins with it too.
pub const LOCK_DATA_SEPARATOR: &str = "#REACTIVELOCK#";

/// Every non-empty part of `data` split on [`LOCK_DATA_SEPARATOR`], in order.
pub(crate) fn split_lock_data<'a>(data: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    data.into_iter()
        .flat_map(|data| data.split(LOCK_DATA_SEPARATOR))
        .filter(|part| !part.is_empty())
        .map(String::from)
        .collect()
}

pub(crate) fn next_expiry<'a>(
    entries: impl IntoIterator<Item = &'a Entry>,
    now: StoreTime,
) -> Option<Duration> {
    entries
        .into_iter()
        .filter(|e| e.is_busy_at(now))
        .map(|e| e.valid_until.duration_since(now))
        .min()
}

/// What a backend subscription yields.
///
/// # Examples
///
/// ```
/// use reactive_lock::{BackendEvent, Snapshot, StoreTime};
///
/// let event = BackendEvent::Snapshot(Snapshot::new("payments", vec![], StoreTime::UNIX_EPOCH));
/// assert!(matches!(event, BackendEvent::Snapshot(s) if !s.is_blocked()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendEvent {
    /// The full state of a key: replaces what the subscriber knew of it.
    Snapshot(Snapshot),
    /// One instance's entry changed (a self-describing notification applied without a
    /// re-read). Older sequences than what the subscriber holds are ignored.
    Update {
        /// The key.
        key: String,
        /// The instance's new entry.
        entry: Entry,
        /// The store's clock when the entry was written.
        store_now: StoreTime,
    },
    /// The connection to the store is lost; states turn [`Status::Unknown`](crate::Status).
    Disconnected,
    /// The connection is back; the driver re-reads every key and re-publishes own statuses,
    /// since the store may have restarted empty.
    Reconnected,
    /// The subscription to this one key is lost while others still work (a backend with a
    /// stream per key); the key's status turns [`Status::Unknown`](crate::Status) until its
    /// next [`Snapshot`](BackendEvent::Snapshot).
    KeyDisconnected(String),
}

/// Transport + store for instance statuses per key: the pluggable part of reactive-lock.
///
/// Implement three methods; the core does the rest (ordering, expiry, renewal, recovery,
/// retries) the same way for every backend. Run the conformance suite in
/// `reactive-lock-backends` (feature `test-util`) against a new implementation.
///
/// # The contract: three required methods
///
/// * [`publish`](Backend::publish) stores `status` as `instance`'s entry for `key`, with
///   `valid_until = store clock + status.valid_for` (only a busy entry's is ever judged: an
///   idle one's may come from another clock), unless the stored entry has a higher
///   `seq` (latest wins: answer [`Superseded`](crate::BackendErrorKind::Superseded) then),
///   and notifies subscribers. It resolves once the store acknowledged.
/// * [`snapshot`](Backend::snapshot) reads every entry of `key` plus the store's clock, in
///   one atomic read.
/// * [`subscribe`](Backend::subscribe) yields [`BackendEvent`]s for all `keys` on one
///   stream (one connection for all keys where the transport allows). Changes of the
///   subscribing instance's own entry may be left out: the core never reads its own status
///   back from the store (it is authoritative locally), so skipping these echoes saves the
///   subscriber a wake-up per own transition.
///
/// # Cancel safety
///
/// The core drops `publish` and `snapshot` futures before they resolve (a caller's `Ack`
/// dropped, a timeout, a shutdown) and publishes the newest status again later. A dropped
/// `publish` may or may not have reached the store, but must leave nothing half-written
/// (the store keeps whichever status has the higher `seq`), and a dropped `subscribe` must
/// leave no subscription behind.
///
/// # Optional speed hooks
///
/// The defaults are correct; these only save hand-offs or lookups where a backend can:
/// [`publish_now`](Backend::publish_now) (publish without waiting, for stores that need no
/// I/O), [`bind_publisher`](Backend::bind_publisher) (resolve that once per key and
/// instance), [`spawn_driver`](Backend::spawn_driver) (run the registry's driver beside the
/// backend's own I/O) and [`runs_io_on_this_thread`](Backend::runs_io_on_this_thread) (let
/// blocking waits refuse a thread that runs the backend's I/O).
///
/// # Examples
///
/// ```
/// use reactive_lock::{Backend, InstanceStatus, LocalBackend};
/// use std::time::Duration;
///
/// # futures_lite::future::block_on(async {
/// let backend = LocalBackend::new();
/// backend
///     .publish("payments", "api-1", &InstanceStatus::busy(None, 1, Duration::from_secs(10)))
///     .await?;
/// assert!(backend.snapshot("payments").await?.is_blocked());
/// # Ok::<(), reactive_lock::BackendError>(())
/// # }).unwrap();
/// ```
pub trait Backend: Send + Sync + 'static {
    /// The stream [`subscribe`](Backend::subscribe) returns.
    type Events: Stream<Item = BackendEvent> + Send + Unpin + 'static;

    /// Stores and announces `instance`'s status for `key` (latest `seq` wins: a status
    /// older than the one held is not stored and is answered with
    /// [`BackendErrorKind::Superseded`](crate::BackendErrorKind::Superseded)).
    fn publish(
        &self,
        key: &str,
        instance: &str,
        status: &InstanceStatus,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Reads every instance's entry for `key` and the store's clock.
    fn snapshot(&self, key: &str) -> impl Future<Output = Result<Snapshot, BackendError>> + Send;

    /// Subscribes `instance` to changes of all `keys`. Events that only echo `instance`'s
    /// own publishes may be left out.
    fn subscribe(
        &self,
        instance: &str,
        keys: &[String],
    ) -> impl Future<Output = Result<Self::Events, BackendError>> + Send;

    /// Publishes without waiting when the backend can (an in-process store, which needs no
    /// I/O): `Some(outcome)` means the publish is done, exactly as [`publish`](Backend::publish)
    /// would have done it; `None` (the default) means "call `publish`". The core tries it
    /// first on every transition, so an in-process store completes a transition inside
    /// `increment` or a guard's drop, with no future, no allocation and no thread hand-off.
    /// It runs while the key's state is locked (one critical section per transition): it
    /// must not wait, and must not call back into the registry.
    ///
    /// # Examples
    ///
    /// ```
    /// use reactive_lock::{Backend, InstanceStatus, LocalBackend};
    /// use std::time::Duration;
    ///
    /// let backend = LocalBackend::new();
    /// let status = InstanceStatus::busy(None, 1, Duration::from_secs(10));
    /// assert!(matches!(backend.publish_now("payments", "api-1", &status), Some(Ok(()))));
    /// ```
    fn publish_now(
        &self,
        key: &str,
        instance: &str,
        status: &InstanceStatus,
    ) -> Option<Result<(), BackendError>> {
        let _ = (key, instance, status);
        None
    }

    /// Runs a registry's background [`Driver`](Driver) where this backend's own I/O
    /// runs, if it has such a place (the executor its connections live on): deliveries then
    /// reach the driver as a task switch, not a hand-off to another thread (which costs a
    /// cross-CPU wake-up when the threads run on different CPUs). Returns the driver when it
    /// has none (the default); [`build`](crate::ReactiveLockBuilder::build) then runs it on a
    /// thread of its own.
    /// [`build_with_driver`](crate::ReactiveLockBuilder::build_with_driver) never calls it.
    ///
    /// The driver runs no user code: handlers of the changes it applies run on the
    /// registry's handler thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use reactive_lock::{Backend, LocalBackend};
    ///
    /// # futures_lite::future::block_on(async {
    /// let (_lock, driver) = reactive_lock::ReactiveLock::builder()
    ///     .tracker("payments", reactive_lock::TrackerConfig::new())
    ///     .build_with_driver(LocalBackend::new())
    ///     .await?;
    /// // LocalBackend has no I/O of its own: it hands the driver back.
    /// assert!(LocalBackend::new().spawn_driver(driver).is_some());
    /// # Ok::<(), reactive_lock::Error>(())
    /// # }).unwrap();
    /// ```
    #[cfg(feature = "std")]
    fn spawn_driver(&self, driver: Driver) -> Option<Driver> {
        Some(driver)
    }

    /// [`publish_now`](Backend::publish_now) bound to one `key` and `instance`, resolved once:
    /// a registry asks for one per tracker when it is built and publishes that key's
    /// transitions through it. A store that finds the key's entries and subscribers by name
    /// on every publish does that lookup here instead, once (for the in-process store the
    /// lookup was a fifth of a local transition). `None` (the default): the core calls
    /// `publish_now`. A backend that returns one must publish inline through it for as long
    /// as the backend lives, under the same rules as `publish_now`.
    ///
    /// # Examples
    ///
    /// ```
    /// use reactive_lock::{Backend, InstanceStatus, LocalBackend};
    /// use std::time::Duration;
    ///
    /// # futures_lite::future::block_on(async {
    /// let backend = LocalBackend::new();
    /// let bound = backend.bind_publisher("payments", "api-1").expect("the store binds");
    /// bound.publish_now(&InstanceStatus::busy(None, 1, Duration::from_secs(10)))?;
    /// assert!(backend.snapshot("payments").await?.is_blocked());
    /// # Ok::<(), reactive_lock::BackendError>(())
    /// # }).unwrap();
    /// ```
    fn bind_publisher(&self, key: &str, instance: &str) -> Option<Box<dyn BoundPublisher>> {
        let _ = (key, instance);
        None
    }

    /// Whether the calling thread runs this backend's I/O (its connections' tasks), where a
    /// thread parked by a blocking wait would stall the I/O that is to end the wait. The
    /// blocking waits ([`TrackerState::wait_if_blocked_blocking`]) refuse to park such a
    /// thread, with a panic that says so, rather than deadlock. The default: no thread does.
    ///
    /// [`TrackerState::wait_if_blocked_blocking`]: crate::TrackerState::wait_if_blocked_blocking
    ///
    /// # Examples
    ///
    /// ```
    /// use reactive_lock::{Backend, LocalBackend};
    /// assert!(!LocalBackend::new().runs_io_on_this_thread());
    /// ```
    #[cfg(feature = "std")]
    fn runs_io_on_this_thread(&self) -> bool {
        false
    }
}

/// A backend's inline publish for one key and one instance (see
/// [`Backend::bind_publisher`]).
///
/// # Examples
///
/// ```
/// use reactive_lock::{Backend, BoundPublisher, InstanceStatus, LocalBackend};
/// use std::time::Duration;
///
/// let backend = LocalBackend::new();
/// let bound: Box<dyn BoundPublisher> = backend.bind_publisher("k", "a").unwrap();
/// // Latest wins, as through `publish`: the older idle status is refused as superseded.
/// bound.publish_now(&InstanceStatus::busy(None, 2, Duration::from_secs(10))).unwrap();
/// let older = bound.publish_now(&InstanceStatus::idle(1, Duration::from_secs(10)));
/// assert_eq!(older.unwrap_err().held_seq(), Some(2));
/// # futures_lite::future::block_on(async {
/// assert!(backend.snapshot("k").await?.is_blocked()); // the busy status stands
/// # Ok::<(), reactive_lock::BackendError>(())
/// # }).unwrap();
/// ```
pub trait BoundPublisher: Send + Sync + 'static {
    /// Publishes `status` as the bound instance's status for the bound key, without waiting:
    /// exactly what [`Backend::publish_now`] does when it answers `Some`.
    fn publish_now(&self, status: &InstanceStatus) -> Result<(), BackendError>;
}

/// The registry's background work as a future. Returned by
/// [`ReactiveLockBuilder::build_with_driver`](crate::ReactiveLockBuilder::build_with_driver)
/// to run on the caller's executor; it completes after
/// [`ReactiveLock::shutdown`](crate::ReactiveLock::shutdown) or when the registry is
/// dropped. It needs no particular runtime (timers are async-io's).
///
/// # Examples
///
/// ```
/// use reactive_lock::{LocalBackend, ReactiveLock, TrackerConfig};
///
/// # fn main() -> Result<(), reactive_lock::Error> {
/// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
/// rt.block_on(async {
///     let (lock, driver) = ReactiveLock::builder()
///         .tracker("payments", TrackerConfig::new())
///         .build_with_driver(LocalBackend::new())
///         .await?;
///     let task = tokio::spawn(driver);
///     lock.shutdown().await;
///     task.await.unwrap();
///     Ok(())
/// })
/// # }
/// ```
#[must_use = "the driver does nothing unless polled: spawn it"]
#[cfg(feature = "std")]
pub struct Driver {
    future: BoxFuture<'static, ()>,
}

#[cfg(feature = "std")]
impl Driver {
    pub(crate) fn from_future(future: BoxFuture<'static, ()>) -> Self {
        Driver { future }
    }
}

#[cfg(feature = "std")]
impl core::fmt::Debug for Driver {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Driver").finish_non_exhaustive()
    }
}

#[cfg(feature = "std")]
impl Future for Driver {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut core::task::Context<'_>) -> core::task::Poll<()> {
        self.future.as_mut().poll(cx)
    }
}

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub(crate) type EventStream = Pin<Box<dyn Stream<Item = BackendEvent> + Send + 'static>>;

/// Object-safe mirror of [`Backend`], so that the registry, controllers and states are not
/// generic over the backend type (users name `ReactiveLock`, not `ReactiveLock<B>`). The
/// boxing costs one allocation per backend call that has to wait (never on the hot path;
/// a backend with [`Backend::publish_now`] needs none per transition). Every call the core
/// makes to a backend passes here, so each waiting call runs in a `debug` span
/// (`reactive_lock.publish`, `.snapshot`, `.subscribe`) naming the key, the instance and the
/// backend type.
pub(crate) trait DynBackend: Send + Sync + 'static {
    fn publish_dyn<'a>(
        &'a self,
        key: &'a str,
        instance: &'a str,
        status: &'a InstanceStatus,
    ) -> BoxFuture<'a, Result<(), BackendError>>;
    fn publish_now_dyn(
        &self,
        key: &str,
        instance: &str,
        status: &InstanceStatus,
    ) -> Option<Result<(), BackendError>>;
    fn snapshot_dyn<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Snapshot, BackendError>>;
    #[cfg(feature = "std")]
    fn spawn_driver_dyn(&self, driver: Driver) -> Option<Driver>;
    #[cfg(feature = "std")]
    fn runs_io_on_this_thread_dyn(&self) -> bool;
    fn bind_publisher_dyn(&self, key: &str, instance: &str) -> Option<Box<dyn BoundPublisher>>;
    fn subscribe_dyn<'a>(
        &'a self,
        instance: &'a str,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<EventStream, BackendError>>;
}

impl<B: Backend> DynBackend for B {
    fn publish_dyn<'a>(
        &'a self,
        key: &'a str,
        instance: &'a str,
        status: &'a InstanceStatus,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        let span = tracing::debug_span!(
            "reactive_lock.publish",
            key,
            instance,
            backend = core::any::type_name::<B>(),
            seq = status.seq,
            busy = status.busy
        );
        Box::pin(tracing::Instrument::instrument(
            self.publish(key, instance, status),
            span,
        ))
    }

    fn publish_now_dyn(
        &self,
        key: &str,
        instance: &str,
        status: &InstanceStatus,
    ) -> Option<Result<(), BackendError>> {
        self.publish_now(key, instance, status)
    }

    fn snapshot_dyn<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Snapshot, BackendError>> {
        let span = tracing::debug_span!(
            "reactive_lock.snapshot",
            key,
            backend = core::any::type_name::<B>()
        );
        Box::pin(tracing::Instrument::instrument(self.snapshot(key), span))
    }

    #[cfg(feature = "std")]
    fn spawn_driver_dyn(&self, driver: Driver) -> Option<Driver> {
        self.spawn_driver(driver)
    }

    #[cfg(feature = "std")]
    fn runs_io_on_this_thread_dyn(&self) -> bool {
        self.runs_io_on_this_thread()
    }

    fn bind_publisher_dyn(&self, key: &str, instance: &str) -> Option<Box<dyn BoundPublisher>> {
        self.bind_publisher(key, instance)
    }

    fn subscribe_dyn<'a>(
        &'a self,
        instance: &'a str,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<EventStream, BackendError>> {
        let span = tracing::debug_span!(
            "reactive_lock.subscribe",
            instance,
            keys = keys.len(),
            backend = core::any::type_name::<B>()
        );
        Box::pin(tracing::Instrument::instrument(
            async move {
                let events = self.subscribe(instance, keys).await?;
                Ok(Box::pin(events) as EventStream)
            },
            span,
        ))
    }
}
