//! Configuration and its validation: a tracker's settings ([`TrackerConfig`]), the
//! registry's timing ([`Resilience`]: renewal, expiration, recovery) and the bounds every
//! setting is checked against when a registry is built.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::time::Duration;

use crate::controller::validate_threshold;
use crate::error::{Error, Result};
use crate::state::UnknownPolicy;

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
    pub(crate) busy_threshold: Option<usize>,
    pub(crate) on_blocked: Vec<Handler>,
    pub(crate) on_unblocked: Vec<Handler>,
    pub(crate) unknown_policy: Option<UnknownPolicy>,
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
    /// [`TrackerState::on_blocked`](crate::TrackerState::on_blocked)).
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
    /// [`ReactiveLockBuilder::unknown_policy`](crate::ReactiveLockBuilder::unknown_policy)).
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

pub(crate) fn validate(
    instance: &str,
    trackers: &[(String, TrackerConfig)],
    r: &Resilience,
) -> Result<()> {
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
