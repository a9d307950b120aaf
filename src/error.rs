//! Errors of the whole crate: one `#[non_exhaustive]` enum, each variant with its context.

use alloc::boxed::Box;
use alloc::string::String;
use core::fmt;
use core::time::Duration;

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// Everything that can go wrong in reactive-lock.
///
/// # Examples
///
/// ```
/// use reactive_lock::{Error, LocalBackend, ReactiveLock, TrackerConfig};
///
/// # futures_lite::future::block_on(async {
/// let lock = ReactiveLock::builder()
///     .tracker("payments", TrackerConfig::new())
///     .build(LocalBackend::new())
///     .await?;
/// match lock.controller("orders") {
///     Err(Error::UnknownTracker(name)) => assert_eq!(name, "orders"),
///     other => panic!("expected UnknownTracker, got {other:?}"),
/// }
/// # lock.shutdown().await;
/// # Ok::<(), Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tracker name that was never registered with the builder.
    #[error("unknown tracker `{0}`: register it with ReactiveLockBuilder::tracker before build")]
    UnknownTracker(String),

    /// The builder was given a configuration that cannot work; `field` names the setting.
    #[error("invalid configuration `{field}`: {reason}")]
    InvalidConfig {
        /// The offending setting, e.g. `instance_name` or `tracker[payments].busy_threshold`.
        field: String,
        /// Why it was rejected.
        reason: String,
    },

    /// The backend failed an operation for a key.
    #[error("backend failed for key `{key}`: {source}")]
    Backend {
        /// The tracker key the operation was for.
        key: String,
        /// What the backend reported.
        #[source]
        source: BackendError,
    },

    /// The registry was shut down (or dropped); the tracker no longer publishes.
    #[error("reactive lock is shut down; key `{key}` no longer publishes")]
    Shutdown {
        /// The tracker key the operation was for.
        key: String,
    },

    /// A thread the library needs could not be started (the operating system refused it:
    /// a thread limit, memory).
    #[error("cannot start the thread `{thread}`: {reason}")]
    Spawn {
        /// The thread's name, e.g. `reactive-lock-driver-api-1`.
        thread: String,
        /// What the operating system said.
        reason: String,
    },

    /// A wait needed the registry's background [`Driver`](crate::Driver), and it is not
    /// running: the `Driver` from
    /// [`build_with_driver`](crate::ReactiveLockBuilder::build_with_driver) was never
    /// spawned (or dropped), or its task ended. Without it no other instance's change
    /// reaches this one, so the wait could never end.
    #[error(
        "key `{key}` is blocked and the registry's driver is not running (spawn the Driver \
         that build_with_driver returned, or use build), so no change would end the wait"
    )]
    NoDriver {
        /// The tracker key the wait was for.
        key: String,
    },

    /// An increment would take the in-flight count past
    /// [`MAX_IN_FLIGHT`](crate::MAX_IN_FLIGHT); the count was left as it was.
    #[error("key `{key}`: an increment beyond MAX_IN_FLIGHT operations in flight was refused")]
    CountOverflow {
        /// The tracker key the increment was for.
        key: String,
    },

    /// Lock data contained [`LOCK_DATA_SEPARATOR`](crate::LOCK_DATA_SEPARATOR), which
    /// joins the entries of all instances, or ended in `#REACTIVELOCK` or started with
    /// `REACTIVELOCK#`, which complete a separator once joined: readers (this crate and
    /// .NET alike) would split it into other entries. The increment was refused and the
    /// count left as it was.
    #[error(
        "key `{key}`: lock data must not contain the separator `#REACTIVELOCK#`, end in \
         `#REACTIVELOCK` or start with `REACTIVELOCK#` (the separator joins the entries of \
         all instances, and readers split on it)"
    )]
    InvalidLockData {
        /// The tracker key the increment was for.
        key: String,
    },
}

/// A wait gave up because its time limit passed while the key was still blocked.
///
/// # Examples
///
/// ```
/// use reactive_lock::{Timeout, TrackerState};
/// use std::time::Duration;
///
/// # futures_lite::future::block_on(async {
/// let state = TrackerState::new();
/// state.set_blocked(None);
/// let err: Timeout = state
///     .wait_if_blocked_timeout(Duration::from_millis(10))
///     .await
///     .unwrap_err();
/// assert_eq!(err.waited(), Duration::from_millis(10));
/// # });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("still blocked after waiting {waited:?}")]
pub struct Timeout {
    pub(crate) waited: Duration,
}

impl Timeout {
    /// How long the wait lasted before giving up.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

/// What kind of failure a [`BackendError`] is, so callers can decide whether to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendErrorKind {
    /// The store cannot be reached right now (connection refused, lost, timed out).
    /// The driver retries these with backoff.
    Unavailable,
    /// The store refused the request (authentication, a limit, a malformed request).
    Rejected,
    /// The backend was closed on purpose.
    Closed,
    /// The store holds a newer status of this instance for the key (a higher sequence: a
    /// previous run of an instance with the same name whose clock was ahead, or a second
    /// live instance using the same name), so this status was not written.
    /// [`BackendError::held_seq`] says which sequence the store holds; a registry continues
    /// above it and publishes again, so this reaches callers only when that keeps failing.
    Superseded,
    /// Anything else.
    Other,
}

/// An error reported by a [`Backend`](crate::Backend) implementation.
///
/// # Examples
///
/// ```
/// use reactive_lock::{BackendError, BackendErrorKind};
///
/// let err = BackendError::new(BackendErrorKind::Unavailable, "connection refused by 127.0.0.1:6379");
/// assert_eq!(err.kind(), BackendErrorKind::Unavailable);
/// assert!(err.to_string().contains("127.0.0.1:6379"));
/// ```
pub struct BackendError {
    // One pointer: a publish's `Result<(), BackendError>` then travels up the inline
    // publish path in a register instead of being copied through each frame's stack.
    inner: Box<BackendErrorInner>,
}

struct BackendErrorInner {
    kind: BackendErrorKind,
    message: String,
    held_seq: Option<u64>,
    source: Option<Box<dyn core::error::Error + Send + Sync + 'static>>,
}

impl BackendError {
    /// A new error of `kind` with a message that says what failed and where.
    pub fn new(kind: BackendErrorKind, message: impl Into<String>) -> Self {
        Self {
            inner: Box::new(BackendErrorInner {
                kind,
                message: message.into(),
                held_seq: None,
                source: None,
            }),
        }
    }

    /// A [`BackendErrorKind::Superseded`] error: the store holds sequence `held` of this
    /// instance for the key, at least the one published, and kept it.
    ///
    /// # Examples
    ///
    /// ```
    /// use reactive_lock::{BackendError, BackendErrorKind};
    ///
    /// let err = BackendError::superseded(42, "key `payments`: the store holds sequence 42");
    /// assert_eq!(err.kind(), BackendErrorKind::Superseded);
    /// assert_eq!(err.held_seq(), Some(42));
    /// ```
    pub fn superseded(held: u64, message: impl Into<String>) -> Self {
        let mut error = Self::new(BackendErrorKind::Superseded, message);
        error.inner.held_seq = Some(held);
        error
    }

    /// For a [`BackendErrorKind::Superseded`] error, the sequence the store holds.
    pub fn held_seq(&self) -> Option<u64> {
        self.inner.held_seq
    }

    /// Attaches the underlying error (kept for [`core::error::Error::source`]).
    pub fn with_source(mut self, source: impl core::error::Error + Send + Sync + 'static) -> Self {
        self.inner.source = Some(Box::new(source));
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> BackendErrorKind {
        self.inner.kind
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.inner.message
    }
}

impl fmt::Debug for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendError")
            .field("kind", &self.inner.kind)
            .field("message", &self.inner.message)
            .field("source", &self.inner.source)
            .finish()
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.inner.kind, self.inner.message)
    }
}

impl core::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn core::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A publish's outcome fits in registers, so the inline publish path (store, bound
    /// publisher, registry publisher, slot) returns it without copying it through the stack.
    #[test]
    fn a_publish_outcome_is_one_pointer() {
        use core::mem::size_of;
        assert_eq!(size_of::<Result<(), BackendError>>(), size_of::<usize>());
        assert!(size_of::<Option<Result<(), BackendError>>>() <= 2 * size_of::<usize>());
    }
}
