//! `ReactiveLock`: the registry of trackers of one instance, its builder and config.

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use core::time::Duration;
use std::format;

use crate::backend::{Backend, BoundPublisher, BoxFuture, DynBackend, InstanceStatus, StoreTime};
use crate::controller::{Publisher, TrackerController, TrackerShared, validate_threshold};
use crate::driver::{Bell, Driver, DriverShared};
use crate::error::{Error, Result};
use crate::handlers::HandlerThread;
use crate::state::{Link, TrackerState, UnknownPolicy};

type Handler = Arc<dyn Fn() + Send + Sync + 'static>;

/// Settings of one tracker (one key): busy threshold, handlers, Unknown policy.
///
/// # Examples
///
/// ```
/// use reactive_lock::{TrackerConfig, UnknownPolicy};
///
/// let config = TrackerConfig::new()
///     .busy_threshold(3)
///     .on_blocked(|| println!("payments blocked"))
///     .on_unblocked(|| println!("payments unblocked"))
///     .unknown_policy(UnknownPolicy::Blocked);
/// # let _ = config;
/// ```
#[derive(Clone, Default)]
pub struct TrackerConfig {
    busy_threshold: Option<usize>,
    on_blocked: Vec<Handler>,
    on_unblocked: Vec<Handler>,
    unknown_policy: Option<UnknownPolicy>,
}

impl core::fmt::Debug for TrackerConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TrackerConfig")
            .field("busy_threshold", &self.busy_threshold.unwrap_or(1))
            .field("on_blocked", &self.on_blocked.len())
            .field("on_unblocked", &self.on_unblocked.len())
            .field("unknown_policy", &self.unknown_policy)
            .finish()
    }
}

impl TrackerConfig {
    /// Busy threshold 1, no handlers, the registry's Unknown policy.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = reactive_lock::TrackerConfig::new();
    /// # let _ = config;
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The in-flight count at which this instance turns busy for the key (≥ 1; default 1).
    ///
    /// # Examples
    ///
    /// ```
    /// let config = reactive_lock::TrackerConfig::new().busy_threshold(5);
    /// # let _ = config;
    /// ```
    pub fn busy_threshold(mut self, n: usize) -> Self {
        self.busy_threshold = Some(n);
        self
    }

    /// Adds a handler run each time the key's aggregate turns blocked (see
    /// [`TrackerState::on_blocked`]).
    ///
    /// # Examples
    ///
    /// ```
    /// let config = reactive_lock::TrackerConfig::new().on_blocked(|| eprintln!("blocked"));
    /// # let _ = config;
    /// ```
    pub fn on_blocked(mut self, handler: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_blocked.push(Arc::new(handler));
        self
    }

    /// Adds a handler run each time the key's aggregate turns unblocked.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = reactive_lock::TrackerConfig::new().on_unblocked(|| eprintln!("unblocked"));
    /// # let _ = config;
    /// ```
    pub fn on_unblocked(mut self, handler: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_unblocked.push(Arc::new(handler));
        self
    }

    /// What this key answers while the backend is unreachable (overrides the registry's
    /// [`ReactiveLockBuilder::unknown_policy`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use reactive_lock::{TrackerConfig, UnknownPolicy};
    /// let config = TrackerConfig::new().unknown_policy(UnknownPolicy::Unblocked);
    /// # let _ = config;
    /// ```
    pub fn unknown_policy(mut self, policy: UnknownPolicy) -> Self {
        self.unknown_policy = Some(policy);
        self
    }
}

/// The shortest renewal, expiration or recovery a registry accepts: shorter ones would
/// spin the driver (a renewal round per microsecond) for no gain, as no store answers
/// faster.
///
/// # Examples
///
/// ```
/// use reactive_lock::{Error, LocalBackend, ReactiveLock, TrackerConfig, MIN_DURATION};
/// use std::time::Duration;
///
/// # futures_lite::future::block_on(async {
/// let err = ReactiveLock::builder()
///     .renewal(MIN_DURATION / 2)
///     .tracker("payments", TrackerConfig::new())
///     .build(LocalBackend::new())
///     .await
///     .unwrap_err();
/// assert!(matches!(err, Error::InvalidConfig { ref field, .. } if field == "renewal"));
/// # });
/// ```
pub const MIN_DURATION: Duration = Duration::from_millis(1);

/// The longest renewal, expiration or recovery a registry accepts (one day): enough for any
/// lease a store should trust, and far from where instants, store clocks and wire
/// timestamps overflow, on every backend.
///
/// # Examples
///
/// ```
/// assert_eq!(reactive_lock::MAX_DURATION.as_secs(), 24 * 60 * 60);
/// ```
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Timing of renewal, expiry and recovery (the .NET ReactiveLock defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Resilience {
    pub(crate) renewal: Duration,
    pub(crate) expiration: Duration,
    pub(crate) recovery: Duration,
}

impl Default for Resilience {
    fn default() -> Self {
        Resilience {
            renewal: Duration::from_secs(5),
            expiration: Duration::from_secs(10),
            recovery: Duration::from_secs(15),
        }
    }
}

/// Builds a [`ReactiveLock`]; see [`ReactiveLock::builder`].
///
/// # Examples
///
/// ```
/// use reactive_lock::{LocalBackend, ReactiveLock, TrackerConfig};
/// use std::time::Duration;
///
/// # futures_lite::future::block_on(async {
/// let lock = ReactiveLock::builder()
///     .instance_name("api-1")
///     .renewal(Duration::from_secs(2))
///     .expiration(Duration::from_secs(6))
///     .tracker("payments", TrackerConfig::new())
///     .build(LocalBackend::new())
///     .await?;
/// # lock.shutdown().await;
/// # Ok::<(), reactive_lock::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Default)]
#[must_use = "a builder does nothing until build() is awaited"]
pub struct ReactiveLockBuilder {
    instance_name: Option<String>,
    trackers: Vec<(String, TrackerConfig)>,
    resilience: Resilience,
    unknown_policy: UnknownPolicy,
}

impl ReactiveLockBuilder {
    /// This instance's name in the store (unique among instances sharing keys). Default:
    /// `{host}-{pid}-{random}`.
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = reactive_lock::ReactiveLock::builder().instance_name("api-1");
    /// # let _ = builder;
    /// ```
    pub fn instance_name(mut self, name: impl Into<String>) -> Self {
        self.instance_name = Some(name.into());
        self
    }

    /// Registers a tracker for `key`.
    ///
    /// # Examples
    ///
    /// ```
    /// use reactive_lock::{ReactiveLock, TrackerConfig};
    /// let builder = ReactiveLock::builder().tracker("payments", TrackerConfig::new());
    /// # let _ = builder;
    /// ```
    pub fn tracker(mut self, key: impl Into<String>, config: TrackerConfig) -> Self {
        self.trackers.push((key.into(), config));
        self
    }

    /// How often own busy statuses are re-published before they expire (default 5 s;
    /// must be shorter than [`expiration`](Self::expiration), and between [`MIN_DURATION`]
    /// and [`MAX_DURATION`], as every duration here).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let builder = reactive_lock::ReactiveLock::builder().renewal(Duration::from_secs(1));
    /// # let _ = builder;
    /// ```
    pub fn renewal(mut self, every: Duration) -> Self {
        self.resilience.renewal = every;
        self
    }

    /// How long a published status stays valid without renewal (default 10 s): a crashed
    /// instance's busy status stops blocking this long after its last renewal.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let builder = reactive_lock::ReactiveLock::builder().expiration(Duration::from_secs(3));
    /// # let _ = builder;
    /// ```
    pub fn expiration(mut self, valid_for: Duration) -> Self {
        self.resilience.expiration = valid_for;
        self
    }

    /// Time allowed for recovery after a reconnect — re-reading every key and re-publishing
    /// own statuses (default 15 s). If recovery has not succeeded within it, the driver
    /// drops the subscription and starts over.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let builder = reactive_lock::ReactiveLock::builder().recovery(Duration::from_secs(30));
    /// # let _ = builder;
    /// ```
    pub fn recovery(mut self, window: Duration) -> Self {
        self.resilience.recovery = window;
        self
    }

    /// The default [`UnknownPolicy`] of every tracker (default `KeepLast`, as .NET).
    ///
    /// # Examples
    ///
    /// ```
    /// use reactive_lock::{ReactiveLock, UnknownPolicy};
    /// let builder = ReactiveLock::builder().unknown_policy(UnknownPolicy::Blocked);
    /// # let _ = builder;
    /// ```
    pub fn unknown_policy(mut self, policy: UnknownPolicy) -> Self {
        self.unknown_policy = policy;
        self
    }

    /// Validates the configuration, connects the trackers to `backend`, does the initial
    /// sync (subscribe, then read every key) and starts the driver: where the backend's own
    /// I/O runs if it offers that ([`Backend::spawn_driver`]: the Redis and gRPC backends
    /// do), else on a background thread (`reactive-lock-driver-<instance>`). No application
    /// runtime is needed either way.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the field for: an empty instance name, no trackers,
    /// an empty or duplicate tracker key, a busy threshold of 0 or above
    /// [`MAX_IN_FLIGHT`](crate::MAX_IN_FLIGHT), a duration outside
    /// [`MIN_DURATION`]`..=`[`MAX_DURATION`], renewal not shorter than expiration.
    /// [`Error::Backend`] if the initial sync fails.
    ///
    /// # Cancel safety
    ///
    /// Dropping it before it resolves leaves nothing running.
    ///
    /// # Examples
    ///
    /// ```
    /// use reactive_lock::{Error, LocalBackend, ReactiveLock, TrackerConfig};
    ///
    /// # futures_lite::future::block_on(async {
    /// let err = ReactiveLock::builder()
    ///     .tracker("payments", TrackerConfig::new().busy_threshold(0))
    ///     .build(LocalBackend::new())
    ///     .await
    ///     .unwrap_err();
    /// assert!(matches!(err, Error::InvalidConfig { ref field, .. }
    ///     if field == "tracker[payments].busy_threshold"));
    /// # });
    /// ```
    pub async fn build<B: Backend>(self, backend: B) -> Result<ReactiveLock> {
        let (lock, driver) = self.build_with_driver(backend).await?;
        // Spawned, it runs: the states are driven from here on, not from its first poll,
        // which would leave them Unknown for a moment after build returned.
        lock.inner.shared.set_driven(true);
        let Some(driver) = lock.inner.shared.backend().spawn_driver_dyn(driver) else {
            return Ok(lock);
        };
        let name = format!("reactive-lock-driver-{}", lock.instance_name());
        std::thread::Builder::new()
            .name(name)
            .spawn(move || futures_lite::future::block_on(driver))
            .map_err(|e| Error::InvalidConfig {
                field: "driver thread".into(),
                reason: format!("cannot spawn the driver thread: {e}"),
            })?;
        Ok(lock)
    }

    /// Like [`build`](Self::build), but returns the [`Driver`] instead of starting a thread:
    /// spawn it on your own executor (`tokio::spawn`, `smol::spawn`, ...). Until it runs,
    /// nothing renews, expires or retries, and no other instance's change is heard: every
    /// key's status is [`Status::Unknown`](crate::Status) until its first poll, and again
    /// once it ends or is dropped; a consistent wait that would have to wait meanwhile
    /// fails with [`Error::NoDriver`].
    ///
    /// # Errors
    ///
    /// As for [`build`](Self::build).
    ///
    /// # Cancel safety
    ///
    /// As for [`build`](Self::build).
    ///
    /// # Examples
    ///
    /// ```
    /// use reactive_lock::{LocalBackend, ReactiveLock, TrackerConfig};
    ///
    /// smol::block_on(async {
    ///     let (lock, driver) = ReactiveLock::builder()
    ///         .tracker("payments", TrackerConfig::new())
    ///         .build_with_driver(LocalBackend::new())
    ///         .await?;
    ///     let task = smol::spawn(driver);
    ///     lock.controller("payments")?.increment(None).await?;
    ///     lock.shutdown().await;
    ///     task.await;
    ///     Ok::<(), reactive_lock::Error>(())
    /// }).unwrap();
    /// ```
    pub async fn build_with_driver<B: Backend>(self, backend: B) -> Result<(ReactiveLock, Driver)> {
        let instance = match self.instance_name {
            Some(name) => name,
            None => default_instance_name(),
        };
        validate(&instance, &self.trackers, &self.resilience)?;
        let backend: Arc<dyn DynBackend> = Arc::new(backend);
        let bell = Arc::new(Bell::new(self.trackers.len()));
        let publisher = Arc::new(RegistryPublisher::new(
            instance.clone(),
            backend.clone(),
            self.trackers.iter().map(|(key, _)| key.as_str()),
            bell.clone(),
            self.resilience.expiration,
        ));

        let handlers = HandlerThread::new(format!("reactive-lock-handlers-{instance}"));
        let mut trackers = Vec::with_capacity(self.trackers.len());
        // One allocation of the instance name and of each key, shared by every holder.
        let own_instance: Arc<str> = Arc::from(instance.as_str());
        for (index, (key, config)) in self.trackers.into_iter().enumerate() {
            let key: Arc<str> = Arc::from(key);
            let state = TrackerState::with_parts(
                config.unknown_policy.unwrap_or(self.unknown_policy),
                Some(Link {
                    backend: backend.clone(),
                    key: key.clone(),
                    own_instance: own_instance.clone(),
                    bell: bell.clone(),
                    index,
                    handlers: handlers.clone(),
                }),
            );
            for h in config.on_blocked {
                state.on_blocked(move || h());
            }
            for h in config.on_unblocked {
                state.on_unblocked(move || h());
            }
            let shared = Arc::new(TrackerShared::new(
                key.clone(),
                index,
                config.busy_threshold.unwrap_or(1),
                state,
                Some(publisher.clone() as Arc<dyn Publisher>),
            ));
            trackers.push(shared);
        }

        let shared = Arc::new(DriverShared::new(
            backend,
            trackers,
            self.resilience,
            bell,
            publisher.clone(),
        ));
        // Initial sync: subscribe first, then read, so no change falls between the two.
        let events = shared.initial_sync().await?;
        let driver = Driver::new(shared.clone(), events);
        let lock = ReactiveLock {
            inner: Arc::new(Handle {
                shared,
                publisher,
                handlers,
            }),
        };
        Ok((lock, driver))
    }
}

fn validate(instance: &str, trackers: &[(String, TrackerConfig)], r: &Resilience) -> Result<()> {
    let invalid = |field: String, reason: String| Err(Error::InvalidConfig { field, reason });
    if instance.trim().is_empty() {
        return invalid("instance_name".into(), "must not be empty".into());
    }
    if trackers.is_empty() {
        return invalid("trackers".into(), "register at least one tracker".into());
    }
    let mut seen = std::collections::HashSet::with_capacity(trackers.len());
    for (i, (key, config)) in trackers.iter().enumerate() {
        if key.is_empty() {
            return invalid(format!("tracker[{i}]"), "the key must not be empty".into());
        }
        if !seen.insert(key.as_str()) {
            return invalid(format!("tracker[{key}]"), "duplicate key".into());
        }
        validate_threshold(
            &format!("tracker[{key}].busy_threshold"),
            config.busy_threshold.unwrap_or(1),
        )?;
    }
    for (field, d) in [
        ("renewal", r.renewal),
        ("expiration", r.expiration),
        ("recovery", r.recovery),
    ] {
        if !(MIN_DURATION..=MAX_DURATION).contains(&d) {
            return invalid(
                field.into(),
                format!("must be between {MIN_DURATION:?} and {MAX_DURATION:?}, got {d:?}"),
            );
        }
    }
    if r.renewal >= r.expiration {
        return invalid(
            "renewal".into(),
            format!(
                "must be shorter than expiration ({:?} >= {:?}), or statuses expire between renewals",
                r.renewal, r.expiration
            ),
        );
    }
    Ok(())
}

fn default_instance_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!("{host}-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

/// Publishes a registry's transitions: stamps the wire sequence and the validity.
pub(crate) struct RegistryPublisher {
    pub(crate) instance: String,
    pub(crate) backend: Arc<dyn DynBackend>,
    pub(crate) closed: AtomicBool,
    pub(crate) bell: Arc<Bell>,
    first_seq: u64,
    /// Cleared once the backend answers `publish_now` with `None`: it never publishes inline.
    inline: AtomicBool,
    /// Each tracker's bound publish ([`Backend::bind_publisher`]), by tracker index, when
    /// the backend offers one.
    bound: Vec<Option<Box<dyn BoundPublisher>>>,
    pub(crate) valid_for: Duration,
}

impl RegistryPublisher {
    /// A publisher for the trackers of `keys` (in tracker index order).
    pub(crate) fn new<'k>(
        instance: String,
        backend: Arc<dyn DynBackend>,
        keys: impl IntoIterator<Item = &'k str>,
        bell: Arc<Bell>,
        valid_for: Duration,
    ) -> Self {
        let bound = keys
            .into_iter()
            .map(|key| backend.bind_publisher_dyn(key, &instance))
            .collect();
        RegistryPublisher {
            instance,
            backend,
            closed: AtomicBool::new(false),
            bell,
            first_seq: StoreTime::now_system().as_unix_nanos(),
            inline: AtomicBool::new(true),
            bound,
            valid_for,
        }
    }

    pub(crate) fn status(&self, seq: u64, busy: bool, data: Option<&str>) -> InstanceStatus {
        if busy {
            InstanceStatus::busy(data.map(String::from), seq, self.valid_for)
        } else {
            InstanceStatus::idle(seq, self.valid_for)
        }
    }
}

fn with_key(key: &str, result: core::result::Result<(), crate::BackendError>) -> Result<()> {
    result.map_err(|source| Error::Backend {
        key: key.into(),
        source,
    })
}

impl Publisher for RegistryPublisher {
    fn publish<'a>(
        &'a self,
        key: &'a str,
        seq: u64,
        busy: bool,
        data: Option<&'a str>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if self.closed.load(Ordering::Acquire) {
                return Err(Error::Shutdown { key: key.into() });
            }
            let status = self.status(seq, busy, data);
            with_key(
                key,
                self.backend.publish_dyn(key, &self.instance, &status).await,
            )
        })
    }

    fn publish_now(
        &self,
        index: usize,
        key: &str,
        seq: u64,
        busy: bool,
        data: Option<&str>,
    ) -> Option<Result<()>> {
        // After shutdown the asynchronous path reports `Error::Shutdown`.
        if !self.publishes_inline() {
            return None;
        }
        let status = self.status(seq, busy, data);
        if let Some(Some(bound)) = self.bound.get(index) {
            return Some(with_key(key, bound.publish_now(&status)));
        }
        let Some(result) = self.backend.publish_now_dyn(key, &self.instance, &status) else {
            self.inline.store(false, Ordering::Relaxed);
            return None;
        };
        Some(with_key(key, result))
    }

    fn publishes_inline(&self) -> bool {
        self.inline.load(Ordering::Relaxed) && !self.closed.load(Ordering::Acquire)
    }

    /// Strictly increasing per key from here, starting from the wall clock in nanoseconds
    /// at build, so that an instance restarted under the same name still supersedes its old
    /// statuses: the old process's sequences grew by one per publish, and a publish takes
    /// far longer than a nanosecond, so they stay below the wall clock at which the new
    /// process starts.
    fn first_seq(&self) -> u64 {
        self.first_seq
    }

    fn wake_driver(&self, index: usize) {
        self.bell.ring(index);
    }

    fn lease(&self, index: usize, token: u64) {
        self.bell.lease(index, token);
    }
}

/// One instance's trackers for a set of keys, shared with other instances through a
/// [`Backend`].
///
/// Cheap to clone; `Send + Sync`. Dropping the last clone without
/// [`shutdown`](Self::shutdown) stops the background work without a goodbye: to the other
/// instances it looks like a crash, and this instance's busy entries expire.
///
/// # Examples
///
/// ```
/// use reactive_lock::{LocalBackend, ReactiveLock, TrackerConfig};
///
/// # futures_lite::future::block_on(async {
/// let backend = LocalBackend::new();
/// let lock = ReactiveLock::builder()
///     .instance_name("api-1")
///     .tracker("payments", TrackerConfig::new().busy_threshold(1))
///     .build(backend)
///     .await?;
///
/// let ctrl = lock.controller("payments")?;
/// let state = lock.state("payments")?;
/// {
///     let _guard = ctrl.enter(Some("batch-7"));
///     assert!(state.is_blocked());
///     assert_eq!(state.lock_data().as_deref(), Some("batch-7"));
/// }
/// assert!(!state.wait_if_blocked().await);
/// lock.shutdown().await;
/// # Ok::<(), reactive_lock::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct ReactiveLock {
    inner: Arc<Handle>,
}

struct Handle {
    shared: Arc<DriverShared>,
    publisher: Arc<RegistryPublisher>,
    handlers: Arc<HandlerThread>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // No goodbye: like a crash to the others. Stop publishing, the driver and the
        // handler thread (once it has run what is queued).
        self.publisher.closed.store(true, Ordering::Release);
        self.shared.stop();
        self.handlers.close();
    }
}

impl core::fmt::Debug for ReactiveLock {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReactiveLock")
            .field("instance_name", &self.instance_name())
            .field("keys", &self.inner.shared.keys())
            .finish_non_exhaustive()
    }
}

impl ReactiveLock {
    /// Starts configuring a registry.
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = reactive_lock::ReactiveLock::builder();
    /// # let _ = builder;
    /// ```
    pub fn builder() -> ReactiveLockBuilder {
        ReactiveLockBuilder::default()
    }

    /// The controller of `key`.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownTracker`] naming `key` if it was not registered.
    ///
    /// # Examples
    ///
    /// ```
    /// # use reactive_lock::{LocalBackend, ReactiveLock, TrackerConfig};
    /// # futures_lite::future::block_on(async {
    /// # let lock = ReactiveLock::builder().tracker("payments", TrackerConfig::new())
    /// #     .build(LocalBackend::new()).await?;
    /// let ctrl = lock.controller("payments")?;
    /// assert_eq!(ctrl.key(), "payments");
    /// # lock.shutdown().await;
    /// # Ok::<(), reactive_lock::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn controller(&self, key: &str) -> Result<TrackerController> {
        Ok(TrackerController::from_shared(self.tracker(key)?.clone()))
    }

    /// The aggregate state of `key`.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownTracker`] naming `key` if it was not registered.
    ///
    /// # Examples
    ///
    /// ```
    /// # use reactive_lock::{LocalBackend, ReactiveLock, TrackerConfig};
    /// # futures_lite::future::block_on(async {
    /// # let lock = ReactiveLock::builder().tracker("payments", TrackerConfig::new())
    /// #     .build(LocalBackend::new()).await?;
    /// assert!(!lock.state("payments")?.is_blocked());
    /// # lock.shutdown().await;
    /// # Ok::<(), reactive_lock::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn state(&self, key: &str) -> Result<TrackerState> {
        Ok(self.tracker(key)?.state().clone())
    }

    /// This instance's name in the store.
    ///
    /// # Examples
    ///
    /// ```
    /// # use reactive_lock::{LocalBackend, ReactiveLock, TrackerConfig};
    /// # futures_lite::future::block_on(async {
    /// let lock = ReactiveLock::builder().instance_name("api-1")
    ///     .tracker("payments", TrackerConfig::new()).build(LocalBackend::new()).await?;
    /// assert_eq!(lock.instance_name(), "api-1");
    /// # lock.shutdown().await;
    /// # Ok::<(), reactive_lock::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn instance_name(&self) -> &str {
        &self.inner.publisher.instance
    }

    /// Counters of the background work, for metrics export.
    ///
    /// # Examples
    ///
    /// ```
    /// # use reactive_lock::{LocalBackend, ReactiveLock, TrackerConfig};
    /// # futures_lite::future::block_on(async {
    /// # let lock = ReactiveLock::builder().tracker("payments", TrackerConfig::new())
    /// #     .build(LocalBackend::new()).await?;
    /// lock.controller("payments")?.increment(None).await?;
    /// assert!(lock.metrics().snapshots_applied >= 1); // the initial sync
    /// # lock.shutdown().await;
    /// # Ok::<(), reactive_lock::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn metrics(&self) -> crate::Metrics {
        self.inner.shared.metrics()
    }

    /// Clean exit: stops the driver (no more renewals), then publishes idle for every
    /// tracker of this instance, so the others unblock at once instead of waiting for
    /// expiry. Controllers keep counting locally afterwards, but publish nothing
    /// (their transitions fail with [`Error::Shutdown`]). Idempotent.
    ///
    /// # Cancel safety
    ///
    /// If dropped midway, publishing stops where it was; the others then see the remaining
    /// busy entries expire, as after a crash.
    ///
    /// # Examples
    ///
    /// ```
    /// # use reactive_lock::{LocalBackend, ReactiveLock, TrackerConfig};
    /// # futures_lite::future::block_on(async {
    /// let lock = ReactiveLock::builder().tracker("payments", TrackerConfig::new())
    ///     .build(LocalBackend::new()).await?;
    /// lock.controller("payments")?.increment(None).await?;
    /// lock.shutdown().await;
    /// # Ok::<(), reactive_lock::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn shutdown(&self) {
        let publisher = &self.inner.publisher;
        if publisher.closed.swap(true, Ordering::AcqRel) {
            self.inner.shared.stop();
            self.inner.shared.stopped().await;
            return;
        }
        self.inner.shared.stop();
        self.inner.shared.stopped().await;
        for tracker in self.inner.shared.trackers() {
            let status = publisher.status(tracker.next_seq(), false, None);
            if let Err(error) = publisher
                .backend
                .publish_dyn(tracker.key(), &publisher.instance, &status)
                .await
            {
                tracing::warn!(key = tracker.key(), %error, "reactive-lock: goodbye publish failed; the entry will expire");
            }
        }
    }

    fn tracker(&self, key: &str) -> Result<&Arc<TrackerShared>> {
        self.inner
            .shared
            .tracker(key)
            .ok_or_else(|| Error::UnknownTracker(key.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalBackend;
    use futures_lite::future::block_on;

    fn field_of(r: Result<ReactiveLock>) -> String {
        match r {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn invalid_config_names_the_field() {
        block_on(async {
            let b = || ReactiveLock::builder().tracker("k", TrackerConfig::new());
            let local = LocalBackend::new;
            assert_eq!(
                field_of(b().instance_name("").build(local()).await),
                "instance_name"
            );
            assert_eq!(
                field_of(ReactiveLock::builder().build(local()).await),
                "trackers"
            );
            assert_eq!(
                field_of(
                    ReactiveLock::builder()
                        .tracker("", TrackerConfig::new())
                        .build(local())
                        .await
                ),
                "tracker[0]"
            );
            assert_eq!(
                field_of(b().tracker("k", TrackerConfig::new()).build(local()).await),
                "tracker[k]"
            );
            assert_eq!(
                field_of(
                    ReactiveLock::builder()
                        .tracker("k", TrackerConfig::new().busy_threshold(0))
                        .build(local())
                        .await
                ),
                "tracker[k].busy_threshold"
            );
            assert_eq!(
                field_of(b().renewal(Duration::ZERO).build(local()).await),
                "renewal"
            );
            assert_eq!(
                field_of(b().recovery(Duration::ZERO).build(local()).await),
                "recovery"
            );
            assert_eq!(
                field_of(b().renewal(Duration::from_secs(10)).build(local()).await),
                "renewal",
                "renewal == expiration"
            );
            assert_eq!(
                field_of(
                    b().renewal(Duration::from_secs(1))
                        .expiration(Duration::ZERO)
                        .build(local())
                        .await
                ),
                "expiration"
            );
        });
    }

    #[test]
    fn unknown_tracker_is_named() {
        block_on(async {
            let lock = ReactiveLock::builder()
                .tracker("k", TrackerConfig::new())
                .build(LocalBackend::new())
                .await
                .unwrap();
            assert!(matches!(lock.state("nope"), Err(Error::UnknownTracker(n)) if n == "nope"));
            assert!(
                matches!(lock.controller("nope"), Err(Error::UnknownTracker(n)) if n == "nope")
            );
            lock.shutdown().await;
        });
    }

    #[test]
    fn default_instance_name_is_unique_enough() {
        let a = default_instance_name();
        let b = default_instance_name();
        assert_ne!(a, b);
        assert!(a.contains(&std::process::id().to_string()));
    }

    #[test]
    fn seq_is_strictly_increasing_per_key_and_wall_clock_based() {
        block_on(async {
            let backend = LocalBackend::new();
            let lock = ReactiveLock::builder()
                .instance_name("i")
                .tracker("k", TrackerConfig::new())
                .tracker("other", TrackerConfig::new())
                .build(backend.clone())
                .await
                .unwrap();
            let seq = |key: &str| -> u64 {
                let snapshot = block_on(backend.snapshot(key)).unwrap();
                snapshot
                    .entries
                    .iter()
                    .find(|e| e.instance == "i")
                    .unwrap()
                    .seq
            };
            let ctrl = lock.controller("k").unwrap();
            ctrl.increment(None).await.unwrap();
            let a = seq("k");
            ctrl.decrement(1).await.unwrap();
            let b = seq("k");
            assert!(b > a, "{b} > {a}");
            assert!(a >= 1_600_000_000_000_000_000, "starts from the wall clock");
            lock.controller("other")
                .unwrap()
                .increment(None)
                .await
                .unwrap();
            lock.shutdown().await;
            assert!(seq("k") > b, "the goodbye supersedes every earlier status");
        });
    }

    #[test]
    fn publishes_after_shutdown_fail_with_shutdown() {
        block_on(async {
            let lock = ReactiveLock::builder()
                .tracker("k", TrackerConfig::new())
                .build(LocalBackend::new())
                .await
                .unwrap();
            let ctrl = lock.controller("k").unwrap();
            lock.shutdown().await;
            lock.shutdown().await; // idempotent
            assert!(
                matches!(ctrl.increment(None).await, Err(Error::Shutdown { key }) if key == "k")
            );
            assert!(ctrl.state().is_blocked(), "still applied locally");
        });
    }
}
