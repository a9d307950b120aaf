//! `TrackerController`: this instance's in-flight count for one key.
//!
//! The hot path — an increment or decrement that does not cross the threshold — is one
//! atomic read-modify-write on a packed state word. Only transitions (idle → busy at the
//! threshold, busy → idle at zero) take the slow path: apply locally, record the newest
//! status (latest wins), publish it and resolve once the backend acknowledged.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};

use crossbeam_utils::CachePadded;

use crate::backend::BoxFuture;
use crate::error::{Error, Result};
use crate::publish::{Claim, KeyPublisher, PublishMode, PublishPoint};
use crate::state::TrackerState;
use crate::sync::{AtomicU64, Ordering};

// Layout of the state word (`TrackerShared::word`, 64 bits):
//
//   63                              32 31                            1     0
//  +----------------------------------+-------------------------------+-------+
//  |        COUNT (in-flight work)    |  IDLES (idle transitions)     | LATCH |
//  +----------------------------------+-------------------------------+-------+
//
// Busy iff COUNT >= threshold or LATCH is set. LATCH is the hysteresis: a decrement that
// takes a busy tracker below the threshold (but not to zero) sets it, so the tracker stays
// busy until zero. An increment never needs more than its `fetch_add`: the one that takes an
// idle tracker (LATCH clear, COUNT = threshold - 1) to the threshold *is* the busy
// transition, decided by that single read-modify-write. The idle transition (a decrement
// to zero of a busy tracker) is a CAS that clears LATCH and bumps IDLES.
//
// Transitions alternate, so their epochs follow from IDLES: the busy transition after the
// i-th idle one has epoch 2i + 1, the idle one 2i + 2 (odd = busy). Two racing transitions
// get distinct, ordered epochs from the order of their read-modify-writes on this one word,
// and the slow path drops whichever arrives late. IDLES wraps at 2^31, the epochs at 2^32
// (compared with wrapping arithmetic). COUNT holds up to u32::MAX; an increment is refused
// from MAX_IN_FLIGHT on (undone, see `add_one`), which leaves 2^31 increments of headroom
// for racing ones to land and be undone without the field ever wrapping.
const LATCH: u64 = 1;
const IDLES_SHIFT: u32 = 1;
const IDLES_MASK: u64 = 0xFFFF_FFFE;
const COUNT_SHIFT: u32 = 32;
const COUNT_ONE: u64 = 1 << COUNT_SHIFT;

/// The most operations a controller counts in flight at once; an increment beyond it is
/// refused ([`Error::CountOverflow`] from [`TrackerController::increment`], a panic from
/// [`TrackerController::enter`]) and leaves the count as it was. Also the largest busy
/// threshold.
///
/// # Examples
///
/// ```
/// assert_eq!(reactive_lock::MAX_IN_FLIGHT, (1 << 31) - 1);
/// ```
pub const MAX_IN_FLIGHT: usize = (1 << 31) - 1;

const fn count_of(word: u64) -> u64 {
    word >> COUNT_SHIFT
}

const fn idles_of(word: u64) -> u32 {
    ((word & IDLES_MASK) >> IDLES_SHIFT) as u32
}

/// The epoch of the busy transition that follows `word`'s idle transitions.
const fn busy_epoch(word: u64) -> u32 {
    idles_of(word).wrapping_mul(2).wrapping_add(1)
}

pub(crate) struct TrackerShared {
    /// The packed state word; cache-padded so neighbouring trackers don't false-share.
    word: CachePadded<AtomicU64>,
    threshold: u64,
    /// Holds the latest-wins publish slot too, under its lock.
    state: TrackerState,
    /// Where transitions are published, and the protocol's steps.
    point: PublishPoint,
}

/// Outcome of a count change.
enum Change {
    None,
    Transition {
        epoch: u32,
        busy: bool,
    },
    /// The increment went past [`MAX_IN_FLIGHT`] and must be undone.
    Overflow,
}

/// An increment refused at [`MAX_IN_FLIGHT`] (the count is back where it was).
pub(crate) struct Overflow;

impl TrackerShared {
    pub(crate) fn new(
        key: Arc<str>,
        index: usize,
        threshold: usize,
        state: TrackerState,
        publisher: Option<Arc<KeyPublisher>>,
    ) -> Self {
        let point = PublishPoint::new(key, index, publisher);
        #[cfg(feature = "metrics")]
        let point = point.with_instruments(state.instruments().cloned());
        state.slot().start_at(point.first_seq());
        TrackerShared {
            word: CachePadded::new(AtomicU64::new(0)),
            threshold: threshold as u64,
            state,
            point,
        }
    }

    pub(crate) fn key(&self) -> &str {
        &self.point.key
    }

    pub(crate) fn key_arc(&self) -> Arc<str> {
        self.point.key.clone()
    }

    pub(crate) fn state(&self) -> &TrackerState {
        &self.state
    }

    /// Whether `word` is busy under this tracker's threshold.
    fn busy_in(&self, word: u64) -> bool {
        word & LATCH != 0 || count_of(word) >= self.threshold
    }

    /// count += 1; the busy transition if this reaches the threshold of an idle tracker.
    #[inline]
    fn add_one(&self) -> Change {
        // One RMW, transition or not: the increment that takes an idle tracker to the
        // threshold is the busy transition (see the layout above).
        let prev = self.word.fetch_add(COUNT_ONE, Ordering::AcqRel);
        if count_of(prev) >= MAX_IN_FLIGHT as u64 {
            return Change::Overflow;
        }
        if prev & LATCH != 0 || count_of(prev) + 1 != self.threshold {
            return Change::None;
        }
        Change::Transition {
            epoch: busy_epoch(prev),
            busy: true,
        }
    }

    /// count = max(0, count - n); the idle transition if a busy tracker reaches zero.
    #[inline]
    fn sub(&self, n: usize) -> Change {
        if n == 0 {
            return Change::None;
        }
        let n = n as u64;
        let mut current = self.word.load(Ordering::Acquire);
        loop {
            let count = count_of(current);
            if count == 0 {
                // Never busy at zero: the decrement that reached zero made it idle.
                return Change::None;
            }
            let busy = self.busy_in(current);
            let remaining = count.saturating_sub(n);
            let idles = current & IDLES_MASK;
            let (next, change) = if busy && remaining == 0 {
                let next_idles = (idles + (1 << IDLES_SHIFT)) & IDLES_MASK;
                (
                    next_idles,
                    Change::Transition {
                        epoch: busy_epoch(current).wrapping_add(1),
                        busy: false,
                    },
                )
            } else {
                // Hysteresis: a busy tracker below the threshold stays busy (LATCH) until
                // zero; an idle one keeps LATCH clear.
                let latch = if busy && remaining < self.threshold {
                    LATCH
                } else {
                    current & LATCH
                };
                ((remaining << COUNT_SHIFT) | idles | latch, Change::None)
            };
            match self.word.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return change,
                Err(actual) => current = actual,
            }
        }
    }

    /// Slow path shared by every transition: apply locally at once, record as newest and —
    /// when the backend publishes inline and no one else is publishing this key — publish it
    /// right here. Returns the epoch still to be acknowledged, if any (then an `Ack` future
    /// or the driver takes over).
    fn transition(&self, epoch: u32, busy: bool, data: Option<&str>) -> Option<u32> {
        // Empty lock data is no lock data (as .NET reads it): the same on every path.
        let data = if busy {
            data.filter(|data| !data.is_empty())
        } else {
            None
        };
        if !self.point.publishes() {
            self.state.apply_local_transition(epoch, busy, data);
            return None;
        }
        self.transition_published(epoch, busy, data)
    }

    /// A registry controller's transition (see [`transition`](Self::transition)). Out of
    /// line, with the state's update inlined into it: a standalone controller's transition
    /// does not pay for this path's stack frame.
    #[inline(never)]
    fn transition_published(&self, epoch: u32, busy: bool, data: Option<&str>) -> Option<u32> {
        #[cfg(feature = "metrics")]
        if let Some(instruments) = self.state.instruments() {
            let direction = if busy {
                &instruments.busy_transitions
            } else {
                &instruments.idle_transitions
            };
            direction.increment(1);
            instruments.in_flight.set(self.count() as f64);
        }
        // Applying, claiming the key, publishing inline and recording the outcome are one
        // critical section under the state's lock.
        let failed = self
            .state
            .apply_local_transition_then(epoch, busy, data, |slot| {
                self.point
                    .publish_transition_inline(slot, epoch, busy, data)
            });
        self.point.transition_outcome(failed, epoch)
    }

    pub(crate) fn count(&self) -> usize {
        count_of(self.word.load(Ordering::Acquire)) as usize
    }

    /// Wakes the tasks waiting for another publisher's outcome (the registry was closed).
    pub(crate) fn notify_closed(&self) {
        self.point.notify_closed();
    }

    pub(crate) fn is_busy(&self) -> bool {
        self.busy_in(self.word.load(Ordering::Acquire))
    }

    /// Publishes the newest status as `mode` asks (see [`PublishPoint::publish_newest`]).
    pub(crate) async fn publish_newest(&self, mode: PublishMode, claim: Claim) -> Result<bool> {
        self.point.publish_newest(&self.state, mode, claim).await
    }

    /// The token of the publish holding the role, if any (for the driver's lease).
    pub(crate) fn role_token(&self) -> Option<u64> {
        self.point.role_token(&self.state)
    }

    /// A wire sequence above every one this key published (for the goodbye).
    pub(crate) fn next_seq(&self) -> u64 {
        self.point.next_seq(&self.state)
    }

    /// Acknowledged and failed publishes of this key so far.
    pub(crate) fn publish_counts(&self) -> (u64, u64) {
        self.point.publish_counts(&self.state)
    }

    /// Whether the newest status still waits for an acknowledgement.
    pub(crate) fn has_pending(&self) -> bool {
        self.point.has_pending(&self.state)
    }

    /// Whether the newest status is busy (renewal re-publishes it).
    pub(crate) fn newest_is_busy(&self) -> bool {
        self.point.newest_is_busy(&self.state)
    }

    /// count += 1, and the transition it made, done as far as possible without waiting;
    /// returns the epoch still to be acknowledged.
    #[inline]
    fn increment_sync(&self, data: Option<&str>) -> core::result::Result<Option<u32>, Overflow> {
        match self.add_one() {
            Change::None => Ok(None),
            Change::Transition { epoch, busy } => Ok(self.transition(epoch, busy, data)),
            Change::Overflow => {
                self.undo_overflow();
                Err(Overflow)
            }
        }
    }

    /// Takes back an increment refused at [`MAX_IN_FLIGHT`]. It made no transition (the
    /// count was at or above the threshold), but decrements racing with it may have taken
    /// the count down since: undone as a decrement, it keeps the hysteresis and publishes
    /// the idle transition should it be the one to reach zero.
    #[cold]
    fn undo_overflow(&self) {
        let pending = self.decrement_sync(1);
        self.publish_detached(pending);
    }

    /// count -= n (saturating), likewise.
    #[inline]
    fn decrement_sync(&self, n: usize) -> Option<u32> {
        match self.sub(n) {
            Change::None | Change::Overflow => None,
            Change::Transition { epoch, busy } => self.transition(epoch, busy, None),
        }
    }

    /// A guard's increment: what is left to publish goes to the driver.
    #[inline]
    fn enter_sync(&self, data: Option<&str>) {
        if has_separator(data) {
            separator_panic(self.key());
        }
        match self.increment_sync(data) {
            Ok(pending) => self.publish_detached(pending),
            Err(Overflow) => overflow_panic(self.key()),
        }
    }

    /// A transition made where no one can await it (a guard): what is left to publish goes
    /// to the driver.
    #[inline]
    fn publish_detached(&self, pending: Option<u32>) {
        if pending.is_some() {
            self.wake_driver();
        }
    }

    fn wake_driver(&self) {
        self.point.wake_driver();
    }
}

/// This instance's in-flight work counter for one key.
///
/// `increment` at the [busy threshold](Self::busy_threshold) makes the instance busy for
/// the key (with the increment's lock data); `decrement` back to zero makes it idle.
/// Between 1 and the threshold it stays as it was (hysteresis). A registry's controller
/// publishes transitions to the backend; a [standalone](Self::new) one only drives its own
/// [`TrackerState`]. Cheap to clone (clones share the counter); `Send + Sync`.
///
/// # Examples
///
/// ```
/// use reactive_lock::{LocalBackend, ReactiveLock, TrackerConfig};
///
/// # futures_lite::future::block_on(async {
/// let lock = ReactiveLock::builder()
///     .instance_name("api-1")
///     .tracker("payments", TrackerConfig::new().busy_threshold(2))
///     .build(LocalBackend::new())
///     .await?;
/// let ctrl = lock.controller("payments")?;
/// ctrl.increment(Some("batch-7")).await?;
/// assert!(!lock.state("payments")?.is_blocked()); // 1 < threshold 2
/// ctrl.increment(Some("batch-8")).await?;
/// assert!(lock.state("payments")?.is_blocked());
/// ctrl.decrement(2).await?;
/// assert!(!lock.state("payments")?.is_blocked());
/// # lock.shutdown().await;
/// # Ok::<(), reactive_lock::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct TrackerController {
    shared: Arc<TrackerShared>,
}

impl fmt::Debug for TrackerController {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackerController")
            .field("key", &self.shared.key())
            .field("count", &self.count())
            .field("busy_threshold", &self.busy_threshold())
            .finish_non_exhaustive()
    }
}

impl TrackerController {
    /// A standalone controller with its own [`TrackerState`] and no backend: transitions
    /// apply locally and acknowledge at once.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if `busy_threshold` is 0 or above [`MAX_IN_FLIGHT`].
    ///
    /// # Examples
    ///
    /// ```
    /// # futures_lite::future::block_on(async {
    /// let ctrl = reactive_lock::TrackerController::new(1)?;
    /// ctrl.increment(None).await?;
    /// assert!(ctrl.state().is_blocked());
    /// # Ok::<(), reactive_lock::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn new(busy_threshold: usize) -> Result<Self> {
        Self::with_state(TrackerState::new(), busy_threshold)
    }

    /// A standalone controller driving an existing standalone `state`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if `busy_threshold` is 0 or above [`MAX_IN_FLIGHT`].
    ///
    /// # Examples
    ///
    /// ```
    /// use reactive_lock::{TrackerController, TrackerState};
    /// let state = TrackerState::new();
    /// let ctrl = TrackerController::with_state(state.clone(), 1)?;
    /// let guard = ctrl.enter(None);
    /// assert!(state.is_blocked());
    /// drop(guard);
    /// assert!(!state.is_blocked());
    /// # Ok::<(), reactive_lock::Error>(())
    /// ```
    pub fn with_state(state: TrackerState, busy_threshold: usize) -> Result<Self> {
        validate_threshold("busy_threshold", busy_threshold)?;
        Ok(Self::from_shared(Arc::new(TrackerShared::new(
            Arc::from(""),
            0,
            busy_threshold,
            state,
            None,
        ))))
    }

    pub(crate) fn from_shared(shared: Arc<TrackerShared>) -> Self {
        TrackerController { shared }
    }

    /// Adds one unit of in-flight work. If it makes the count reach the threshold, this
    /// instance turns busy with `lock_data`: that is applied locally at once and published;
    /// the returned [`Ack`] then resolves when the backend acknowledged it (or a newer
    /// status). Otherwise the count changes with one atomic operation and the `Ack` is
    /// ready at once (`lock_data` is then not used).
    ///
    /// The count changes when `increment` is called, not when the `Ack` is awaited.
    ///
    /// # Errors
    ///
    /// The `Ack` fails with [`Error::Backend`] if publishing the transition failed (the
    /// count stays; the driver keeps retrying in the background) or [`Error::Shutdown`]
    /// after the registry was shut down; with [`Error::CountOverflow`] if
    /// [`MAX_IN_FLIGHT`] operations are in flight already (the count is left as it was);
    /// with [`Error::InvalidLockData`] if `lock_data` contains
    /// [`LOCK_DATA_SEPARATOR`](crate::LOCK_DATA_SEPARATOR), ends in `#REACTIVELOCK` or
    /// starts with `REACTIVELOCK#` (joined to another instance's data, either would read
    /// back as different entries; the count is left as it was).
    ///
    /// # Cancel safety
    ///
    /// Dropping the `Ack` never undoes the count or the local state; the driver publishes
    /// the transition in the background instead.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures_lite::future::block_on(async {
    /// use reactive_lock::Error;
    ///
    /// let ctrl = reactive_lock::TrackerController::new(1)?;
    /// let refused = ctrl.increment(Some("a#REACTIVELOCK#b")).await;
    /// assert!(matches!(refused, Err(Error::InvalidLockData { .. })));
    /// assert_eq!(ctrl.count(), 0);
    /// ctrl.increment(Some("batch-7")).await?;
    /// assert_eq!(ctrl.state().lock_data().as_deref(), Some("batch-7"));
    /// # Ok::<(), reactive_lock::Error>(())
    /// # }).unwrap();
    /// ```
    #[inline]
    pub fn increment(&self, lock_data: Option<&str>) -> Ack {
        if has_separator(lock_data) {
            return Ack::refused(Error::InvalidLockData {
                key: String::from(self.shared.key()),
            });
        }
        match self.shared.increment_sync(lock_data) {
            Ok(epoch) => Ack::for_epoch(&self.shared, epoch),
            Err(Overflow) => Ack::overflow(&self.shared),
        }
    }

    /// Removes `n` units of in-flight work, saturating at zero (`decrement(0)` does
    /// nothing). If a busy instance reaches zero, it turns idle: applied locally at once
    /// and published, with the [`Ack`] resolving on acknowledgement as for
    /// [`increment`](Self::increment).
    ///
    /// # Errors
    ///
    /// As for [`increment`](Self::increment).
    ///
    /// # Cancel safety
    ///
    /// As for [`increment`](Self::increment): the count changes when called.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures_lite::future::block_on(async {
    /// let ctrl = reactive_lock::TrackerController::new(1)?;
    /// ctrl.increment(None).await?;
    /// ctrl.decrement(5).await?; // saturates at zero
    /// assert_eq!(ctrl.count(), 0);
    /// assert!(!ctrl.state().is_blocked());
    /// # Ok::<(), reactive_lock::Error>(())
    /// # }).unwrap();
    /// ```
    #[inline]
    pub fn decrement(&self, n: usize) -> Ack {
        Ack::for_epoch(&self.shared, self.shared.decrement_sync(n))
    }

    /// Increments synchronously and returns a guard whose drop decrements by one — also
    /// on panic/unwind and when the future holding it is cancelled. Transitions made here
    /// or in the drop are applied locally at once and published inline when the backend
    /// needs no I/O (an in-process store), else by the background driver (a guard cannot
    /// await).
    ///
    /// # Panics
    ///
    /// If [`MAX_IN_FLIGHT`] operations are in flight already, or if `lock_data` contains
    /// [`LOCK_DATA_SEPARATOR`](crate::LOCK_DATA_SEPARATOR) (a guard cannot carry an
    /// error); the count is left as it was. [`increment`](Self::increment) reports them as
    /// [`Error::CountOverflow`] and [`Error::InvalidLockData`] instead.
    ///
    /// # Examples
    ///
    /// ```
    /// let ctrl = reactive_lock::TrackerController::new(1)?;
    /// {
    ///     let _guard = ctrl.enter(Some("batch-7"));
    ///     assert!(ctrl.state().is_blocked());
    /// }
    /// assert!(!ctrl.state().is_blocked());
    /// # Ok::<(), reactive_lock::Error>(())
    /// ```
    #[inline]
    pub fn enter(&self, lock_data: Option<&str>) -> TrackerGuard<'_> {
        self.shared.enter_sync(lock_data);
        TrackerGuard {
            shared: &self.shared,
        }
    }

    /// Like [`enter`](Self::enter), but the guard owns a handle to the controller, so it is
    /// `'static` and can move into spawned tasks (one more atomic operation per enter/drop).
    ///
    /// # Panics
    ///
    /// As [`enter`](Self::enter): at [`MAX_IN_FLIGHT`], and for lock data containing
    /// [`LOCK_DATA_SEPARATOR`](crate::LOCK_DATA_SEPARATOR).
    ///
    /// # Examples
    ///
    /// ```
    /// let ctrl = reactive_lock::TrackerController::new(1)?;
    /// let guard = ctrl.enter_owned(None);
    /// std::thread::spawn(move || drop(guard)).join().unwrap();
    /// assert_eq!(ctrl.count(), 0);
    /// # Ok::<(), reactive_lock::Error>(())
    /// ```
    pub fn enter_owned(&self, lock_data: Option<&str>) -> OwnedTrackerGuard {
        self.shared.enter_sync(lock_data);
        OwnedTrackerGuard {
            shared: self.shared.clone(),
        }
    }

    /// The current in-flight count.
    ///
    /// # Examples
    ///
    /// ```
    /// let ctrl = reactive_lock::TrackerController::new(3)?;
    /// let _g = ctrl.enter(None);
    /// assert_eq!(ctrl.count(), 1);
    /// # Ok::<(), reactive_lock::Error>(())
    /// ```
    pub fn count(&self) -> usize {
        self.shared.count()
    }

    /// The count at which this instance turns busy.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(reactive_lock::TrackerController::new(3)?.busy_threshold(), 3);
    /// # Ok::<(), reactive_lock::Error>(())
    /// ```
    pub fn busy_threshold(&self) -> usize {
        self.shared.threshold as usize
    }

    /// Whether this instance is busy for the key (its own status, not the aggregate).
    ///
    /// # Examples
    ///
    /// ```
    /// let ctrl = reactive_lock::TrackerController::new(1)?;
    /// let _g = ctrl.enter(None);
    /// assert!(ctrl.is_busy());
    /// # Ok::<(), reactive_lock::Error>(())
    /// ```
    pub fn is_busy(&self) -> bool {
        self.shared.is_busy()
    }

    /// The key's aggregate state (shared with [`ReactiveLock::state`](crate::ReactiveLock::state)).
    ///
    /// # Examples
    ///
    /// ```
    /// let ctrl = reactive_lock::TrackerController::new(1)?;
    /// assert!(!ctrl.state().is_blocked());
    /// # Ok::<(), reactive_lock::Error>(())
    /// ```
    pub fn state(&self) -> &TrackerState {
        &self.shared.state
    }

    /// The key this controller counts for (empty for a standalone controller).
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(reactive_lock::TrackerController::new(1)?.key(), "");
    /// # Ok::<(), reactive_lock::Error>(())
    /// ```
    pub fn key(&self) -> &str {
        self.shared.key()
    }
}

/// Whether `data` could make the joined lock data of all instances split differently from
/// how it was joined, here and in .NET: it holds the separator `#REACTIVELOCK#`, or ends in
/// `#REACTIVELOCK` or starts with `REACTIVELOCK#`, either of which completes a separator
/// with the one that joins it to a neighbour (the separator's only border is `#`, so these
/// are the only ways an occurrence can straddle a join).
#[inline]
fn has_separator(data: Option<&str>) -> bool {
    let separator = crate::state::LOCK_DATA_SEPARATOR;
    data.is_some_and(|data| {
        data.contains(separator)
            || data.ends_with(&separator[..separator.len() - 1])
            || data.starts_with(&separator[1..])
    })
}

#[cold]
#[inline(never)]
fn separator_panic(key: &str) -> ! {
    panic!(
        "reactive-lock: key `{key}`: lock data must not contain the separator `#REACTIVELOCK#`, end in `#REACTIVELOCK` or start with `REACTIVELOCK#`; the count is unchanged (increment reports it as Error::InvalidLockData)"
    )
}

#[cold]
#[inline(never)]
#[track_caller]
fn overflow_panic(key: &str) -> ! {
    panic!(
        "reactive-lock: key `{key}`: a guard would take the in-flight count past MAX_IN_FLIGHT ({MAX_IN_FLIGHT}); the count is unchanged"
    )
}

pub(crate) fn validate_threshold(field: &str, threshold: usize) -> Result<()> {
    if threshold == 0 || threshold > MAX_IN_FLIGHT {
        return Err(Error::InvalidConfig {
            field: field.into(),
            reason: alloc::format!("must be between 1 and {MAX_IN_FLIGHT}, got {threshold}"),
        });
    }
    Ok(())
}

/// Resolves when a transition was acknowledged by the backend; ready at once for a
/// non-transition change. Returned by [`TrackerController::increment`] and
/// [`TrackerController::decrement`]. `'static` and `Send`, so it can be spawned.
///
/// # Cancel safety
///
/// Dropping it never undoes the count change, which happened when it was created; an
/// unpublished transition is then published by the driver in the background. Kept without
/// being polled (a `select!` that took another branch and awaits it later), it holds the
/// key's publishing role for at most 200 ms: then the driver publishes the newest status
/// itself, renewals continue, and a later transition does not wait for it. Awaited late, it
/// resolves with the outcome of its status or of a newer one. Once the registry is shut down
/// or dropped, an `Ack` that would wait for another publisher resolves instead, as no driver
/// is left to take that publisher's role over: with [`Error::Shutdown`], or with the
/// [`Closed`](crate::BackendErrorKind::Closed) failure a newer status met at shutdown.
///
/// # Examples
///
/// ```
/// # futures_lite::future::block_on(async {
/// let ctrl = reactive_lock::TrackerController::new(2)?;
/// let ack = ctrl.increment(None); // the count is already 1
/// assert_eq!(ctrl.count(), 1);
/// ack.await?;
/// # Ok::<(), reactive_lock::Error>(())
/// # }).unwrap();
/// ```
#[must_use = "the count already changed; await the Ack to know the backend has the transition"]
pub struct Ack {
    /// `None` when there is nothing to wait for. The only field, with no drop of its own:
    /// every `increment` and `decrement` builds, polls and drops an `Ack`, most of them
    /// empty, and an empty one is a null pointer to write and test. The hand-off to the
    /// driver on drop lives in the pending future ([`Outstanding`]).
    pending: Option<BoxFuture<'static, Result<()>>>,
}

/// Held by a pending [`Ack`]'s future while the acknowledgement is outstanding: dropped
/// armed (the `Ack` dropped before it resolved, polled or not), it hands the publish to the
/// driver.
struct Outstanding {
    tracker: Arc<TrackerShared>,
    armed: bool,
}

impl Outstanding {
    /// The acknowledgement arrived: nothing to hand over.
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        if self.armed && self.tracker.has_pending() {
            self.tracker.wake_driver();
        }
    }
}

impl fmt::Debug for Ack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ack")
            .field("pending", &self.pending.is_some())
            .finish()
    }
}

impl Ack {
    // Inline (also across crates): a call that made no transition, or one acknowledged
    // inline, builds, polls and drops an empty `Ack` with no call left in the caller.
    #[inline]
    fn for_epoch(shared: &Arc<TrackerShared>, epoch: Option<u32>) -> Ack {
        match epoch {
            None => Ack { pending: None },
            Some(epoch) => Ack::awaiting(shared, epoch),
        }
    }

    /// An increment refused at [`MAX_IN_FLIGHT`].
    #[cold]
    fn overflow(shared: &TrackerShared) -> Ack {
        Ack::refused(Error::CountOverflow {
            key: String::from(shared.key()),
        })
    }

    /// An `Ack` for an operation refused before it changed anything.
    #[cold]
    fn refused(error: Error) -> Ack {
        Ack {
            pending: Some(Box::pin(async move { Err(error) })),
        }
    }

    fn awaiting(shared: &Arc<TrackerShared>, epoch: u32) -> Ack {
        // Made outside the future, so that it is dropped (armed) with the future even when
        // the `Ack` is dropped before its first poll.
        let mut outstanding = Outstanding {
            tracker: shared.clone(),
            armed: true,
        };
        Ack {
            pending: Some(Box::pin(async move {
                let tracker = &outstanding.tracker;
                let result = tracker.point.acknowledged(&tracker.state, epoch).await;
                outstanding.disarm();
                result
            })),
        }
    }

    /// Whether there is nothing left to wait for: a non-transition change, any change of a
    /// standalone controller (no backend), or a transition the backend acknowledged inline
    /// (an in-process store, see [`Backend::publish_now`](crate::Backend::publish_now)).
    ///
    /// # Examples
    ///
    /// ```
    /// let ctrl = reactive_lock::TrackerController::new(2)?;
    /// assert!(ctrl.increment(None).is_immediate());
    /// # Ok::<(), reactive_lock::Error>(())
    /// ```
    pub fn is_immediate(&self) -> bool {
        self.pending.is_none()
    }
}

impl Future for Ack {
    type Output = Result<()>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        match &mut self.pending {
            None => Poll::Ready(Ok(())),
            Some(fut) => {
                let out = core::task::ready!(fut.as_mut().poll(cx));
                self.pending = None;
                Poll::Ready(out)
            }
        }
    }
}

/// Decrements its controller by one when dropped. Returned by [`TrackerController::enter`].
///
/// # Examples
///
/// ```
/// let ctrl = reactive_lock::TrackerController::new(1)?;
/// let guard = ctrl.enter(None);
/// assert_eq!(ctrl.count(), 1);
/// drop(guard);
/// assert_eq!(ctrl.count(), 0);
/// # Ok::<(), reactive_lock::Error>(())
/// ```
#[must_use = "dropping the guard at once decrements again"]
pub struct TrackerGuard<'a> {
    shared: &'a TrackerShared,
}

impl fmt::Debug for TrackerGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackerGuard")
            .field("key", &self.shared.key())
            .finish()
    }
}

impl Drop for TrackerGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.shared.publish_detached(self.shared.decrement_sync(1));
    }
}

/// A `'static` guard that decrements its controller by one when dropped. Returned by
/// [`TrackerController::enter_owned`].
///
/// # Examples
///
/// ```
/// let ctrl = reactive_lock::TrackerController::new(1)?;
/// let guard = ctrl.enter_owned(None);
/// drop(guard);
/// assert!(!ctrl.is_busy());
/// # Ok::<(), reactive_lock::Error>(())
/// ```
#[must_use = "dropping the guard at once decrements again"]
pub struct OwnedTrackerGuard {
    shared: Arc<TrackerShared>,
}

impl fmt::Debug for OwnedTrackerGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedTrackerGuard")
            .field("key", &self.shared.key())
            .finish()
    }
}

impl Drop for OwnedTrackerGuard {
    fn drop(&mut self) {
        self.shared.publish_detached(self.shared.decrement_sync(1));
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use futures_lite::future::block_on;

    /// A busy standalone controller whose count jumps to `count` (as ~2^31 increments
    /// would take it, one at a time).
    fn busy_at(count: u64) -> TrackerController {
        let ctrl = TrackerController::new(1).unwrap();
        block_on(ctrl.increment(Some("d"))).unwrap();
        ctrl.shared
            .word
            .fetch_add((count - 1) << COUNT_SHIFT, Ordering::AcqRel);
        assert_eq!(ctrl.count() as u64, count);
        ctrl
    }

    #[test]
    fn an_increment_past_the_limit_is_refused_and_changes_nothing() {
        let ctrl = busy_at(MAX_IN_FLIGHT as u64 - 1);
        block_on(async {
            ctrl.increment(None).await.unwrap();
            assert_eq!(ctrl.count(), MAX_IN_FLIGHT);
            assert!(matches!(
                ctrl.increment(None).await,
                Err(Error::CountOverflow { .. })
            ));
            assert_eq!(
                ctrl.count(),
                MAX_IN_FLIGHT,
                "the refused increment left no trace"
            );
            let entered = std::panic::catch_unwind(core::panic::AssertUnwindSafe(|| {
                core::mem::forget(ctrl.enter(None));
            }));
            assert!(
                entered.is_err(),
                "a guard cannot carry the error: it panics"
            );
            assert_eq!(ctrl.count(), MAX_IN_FLIGHT);
            assert!(ctrl.state().is_blocked());
            ctrl.decrement(usize::MAX).await.unwrap();
            assert_eq!(ctrl.count(), 0);
            assert!(!ctrl.state().is_blocked(), "back to idle: the key is free");
        });
    }

    #[test]
    fn a_refused_increment_racing_decrements_to_zero_still_ends_idle() {
        // The undo is a decrement: if others took the count down meanwhile, the one that
        // reaches zero publishes idle, whichever it is.
        let ctrl = busy_at(MAX_IN_FLIGHT as u64);
        block_on(async {
            assert!(ctrl.increment(None).await.is_err());
            ctrl.decrement(MAX_IN_FLIGHT - 1).await.unwrap();
            assert!(ctrl.state().is_blocked(), "one left in flight");
            ctrl.decrement(1).await.unwrap();
            assert!(!ctrl.state().is_blocked());
        });
    }

    #[test]
    fn busy_threshold_is_bounded_by_the_count_limit() {
        assert!(TrackerController::new(MAX_IN_FLIGHT).is_ok());
        assert!(matches!(
            TrackerController::new(MAX_IN_FLIGHT + 1),
            Err(Error::InvalidConfig { .. })
        ));
    }

    #[test]
    fn threshold_and_hysteresis() {
        let ctrl = TrackerController::new(3).unwrap();
        block_on(async {
            ctrl.increment(None).await.unwrap();
            ctrl.increment(None).await.unwrap();
            assert!(!ctrl.is_busy() && !ctrl.state().is_blocked(), "2 < 3");
            ctrl.increment(Some("d")).await.unwrap();
            assert!(ctrl.is_busy(), "3 crosses the threshold");
            assert!(ctrl.state().is_blocked());
            assert_eq!(ctrl.state().lock_data().as_deref(), Some("d"));
            ctrl.decrement(1).await.unwrap();
            assert!(ctrl.is_busy(), "2 after busy: still busy (hysteresis)");
            ctrl.increment(None).await.unwrap();
            ctrl.decrement(2).await.unwrap();
            assert!(ctrl.is_busy(), "1: still busy");
            ctrl.decrement(1).await.unwrap();
            assert!(!ctrl.is_busy() && !ctrl.state().is_blocked(), "0: idle");
        });
    }

    #[test]
    fn decrement_saturates_and_zero_is_noop() {
        let ctrl = TrackerController::new(1).unwrap();
        block_on(async {
            assert!(ctrl.decrement(0).is_immediate());
            ctrl.decrement(10).await.unwrap();
            assert_eq!(ctrl.count(), 0);
            ctrl.increment(None).await.unwrap();
            ctrl.decrement(0).await.unwrap();
            assert_eq!(ctrl.count(), 1);
            assert!(ctrl.is_busy());
            ctrl.decrement(usize::MAX).await.unwrap();
            assert_eq!(ctrl.count(), 0);
            assert!(!ctrl.is_busy());
        });
    }

    #[test]
    fn invalid_threshold_is_rejected() {
        match TrackerController::new(0) {
            Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "busy_threshold"),
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn guard_decrements_on_panic() {
        let ctrl = TrackerController::new(1).unwrap();
        let c = ctrl.clone();
        let r = std::panic::catch_unwind(core::panic::AssertUnwindSafe(move || {
            let _g = c.enter(None);
            panic!("work failed");
        }));
        assert!(r.is_err());
        assert_eq!(ctrl.count(), 0);
        assert!(!ctrl.state().is_blocked());
    }

    #[test]
    fn guard_decrements_on_cancel() {
        let ctrl = TrackerController::new(1).unwrap();
        let c = ctrl.clone();
        let fut = async move {
            let _g = c.enter(None);
            futures_lite::future::pending::<()>().await;
        };
        let mut fut = Box::pin(fut);
        assert!(
            futures_lite::future::block_on(futures_lite::future::poll_once(&mut fut)).is_none()
        );
        assert!(ctrl.is_busy());
        drop(fut);
        assert!(!ctrl.is_busy());
    }

    #[test]
    fn threaded_stress_8x100k() {
        let ctrl = TrackerController::new(1).unwrap();
        let threads: alloc::vec::Vec<_> = (0..8)
            .map(|_| {
                let ctrl = ctrl.clone();
                std::thread::spawn(move || {
                    for _ in 0..100_000 {
                        drop(ctrl.enter(None));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(ctrl.count(), 0);
        assert!(!ctrl.is_busy());
        assert!(
            !ctrl.state().is_blocked(),
            "local state must follow the last transition"
        );
    }

    /// Refused exactly when joining the data to another instance's could read back as other
    /// entries: every accepted pair over an alphabet of separator pieces splits back to
    /// itself, and every refused piece would not.
    #[test]
    fn lock_data_that_could_straddle_a_join_is_refused() {
        for refused in [
            "a#REACTIVELOCK#b",
            "r#REACTIVELOCK",
            "REACTIVELOCK#w",
            "#REACTIVELOCK",
        ] {
            assert!(has_separator(Some(refused)), "{refused}");
        }
        let pieces = [
            "#",
            "REACTIVELOCK",
            "#REACTIVELOC",
            "EACTIVELOCK#",
            "x",
            ";",
            "é",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut word = || {
                (0..rng.usize(1..5))
                    .map(|_| pieces[rng.usize(..pieces.len())])
                    .collect::<String>()
            };
            let (a, b) = (word(), word());
            if has_separator(Some(&a)) || has_separator(Some(&b)) {
                continue;
            }
            accepted += 1;
            let joined = [a.as_str(), b.as_str()].join(crate::state::LOCK_DATA_SEPARATOR);
            assert_eq!(
                crate::backend::split_lock_data([joined.as_str()]),
                [a.clone(), b.clone()],
                "{a:?} + {b:?}"
            );
        }
        assert!(accepted > 1_000, "the alphabet exercises accepted data");
    }
}
