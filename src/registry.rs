//! `ReactiveLock`: the registry of trackers of one instance, its builder and config.

use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::time::Duration;
use std::format;

use crate::backend::{Backend, Driver, DynBackend};
use crate::config::{Resilience, TrackerConfig, validate};
use crate::controller::{TrackerController, TrackerShared};
use crate::driver::DriverShared;
use crate::error::{Error, Result};
use crate::handlers::HandlerThread;
use crate::publish::{Bell, RegistryPublisher};
use crate::state::{Link, TrackerState, UnknownPolicy};
use crate::sync::Ordering;

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
    /// must be shorter than [`expiration`](Self::expiration), and between [`MIN_DURATION`](crate::MIN_DURATION)
    /// and [`MAX_DURATION`](crate::MAX_DURATION), as every duration here).
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
    /// [`MIN_DURATION`](crate::MIN_DURATION)`..=`[`MAX_DURATION`](crate::MAX_DURATION),
    /// renewal not shorter than expiration. [`Error::Backend`] if the initial sync fails;
    /// [`Error::Spawn`] if the driver's thread cannot be started.
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
            .name(name.clone())
            .spawn(move || futures_lite::future::block_on(driver))
            .map_err(|e| Error::Spawn {
                thread: name,
                reason: e.to_string(),
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
                    #[cfg(feature = "metrics")]
                    instruments: Arc::new(crate::instruments::KeyInstruments::new(&key)),
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
                Some(publisher.clone()),
            ));
            trackers.push(shared);
        }

        let shared = Arc::new(DriverShared::new(
            backend,
            trackers,
            self.resilience,
            bell,
            publisher.clone(),
            handlers,
        ));
        // Initial sync: subscribe first, then read, so no change falls between the two.
        let events = shared.initial_sync().await?;
        let driver = crate::driver::driver(shared.clone(), events);
        let lock = ReactiveLock {
            inner: Arc::new(Handle { shared, publisher }),
        };
        Ok((lock, driver))
    }
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
}

impl Drop for Handle {
    fn drop(&mut self) {
        // No goodbye: like a crash to the others. Stop publishing and the driver (whose end
        // lets the handler thread go, once it has run what is queued).
        self.publisher.closed.store(true, Ordering::Release);
        self.shared.stop();
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
