//! The publish protocol: how a key's newest status reaches the store.
//!
//! Latest wins: each key has one [`PublishSlot`] (under its state's lock) holding the newest
//! status and what the backend acknowledged. One publisher at a time holds the key's
//! publishing role (a caller's `Ack`, or the driver); a holder publishing an older status is
//! superseded by one with a newer status, and the driver takes over a role held past its
//! lease ([`Bell`]). A transition publishes inline, inside the state's critical section,
//! when the backend needs no I/O. [`PublishPoint`] runs the steps — claim, publish, settle,
//! acknowledge — for a controller; the registry's [`RegistryPublisher`] turns a status into
//! a backend call.
//!
//! This module sits below the state and the controller: the state keeps a slot without
//! knowing its rules, and reaches the slot to this module through [`SlotLock`].

use alloc::string::String;
use alloc::sync::Arc;
use core::time::Duration;

use crate::backend::{BoxFuture, InstanceStatus};
use crate::error::{BackendError, BackendErrorKind, Error, Result};
use crate::sync::Signal;

/// Sets `field` to `data` in place: the text goes into the allocation `field` holds, or else
/// into `spare`'s, and an allocation `field` gives up is kept in `spare`. A key flapping
/// between busy with lock data and idle then allocates nothing, and no whole `Option<String>`
/// moves through the stack into the field (a copy the CPU may stall on, reading back as one
/// wide load what was just written as narrower stores).
#[inline(always)]
pub(crate) fn set_lock_data(field: &mut Option<String>, spare: &mut String, data: Option<&str>) {
    match (field.as_mut(), data) {
        (Some(held), Some(data)) => {
            held.clear();
            held.push_str(data);
        }
        (None, Some(data)) => {
            let mut text = core::mem::take(spare);
            text.clear();
            text.push_str(data);
            *field = Some(text);
        }
        (Some(_), None) => {
            if let Some(text) = field.take()
                && text.capacity() <= SPARE_CAPACITY
            {
                *spare = text;
            }
        }
        (None, None) => {}
    }
}

/// The largest allocation [`set_lock_data`] and [`LockData`] keep while the lock data is
/// absent: one unusually long lock data is not held for the key's life.
const SPARE_CAPACITY: usize = 1024;

/// Lock data as a key's state and publish slot hold it: the text keeps its allocation while
/// absent (idle, or busy without data), so that a key flapping between busy with lock data
/// and idle copies the text without allocating. One `String` and a flag: a tracker's memory
/// grows by a flag, not by a spare `String` beside an `Option<String>`.
#[derive(Default)]
pub(crate) struct LockData {
    text: String,
    present: bool,
}

impl LockData {
    /// Sets the lock data (`None`: absent).
    #[inline(always)]
    pub(crate) fn set(&mut self, data: Option<&str>) {
        match data {
            Some(data) => {
                self.text.clear();
                self.text.push_str(data);
                self.present = true;
            }
            None => {
                self.present = false;
                if self.text.capacity() > SPARE_CAPACITY {
                    self.text = String::new();
                }
            }
        }
    }

    /// The lock data, if present.
    #[inline]
    pub(crate) fn get(&self) -> Option<&str> {
        self.present.then_some(self.text.as_str())
    }
}

/// Drops `value` out of line: for values the common path never has, whose drop glue would
/// otherwise be called on that path too.
#[cold]
#[inline(never)]
fn drop_cold<T>(value: T) {
    drop(value);
}

/// Serial-number comparison of 32-bit epochs (RFC 1982 style), so wrapping after 2^32
/// transitions keeps the order right.
pub(crate) fn epoch_is_newer(candidate: u32, current: u32) -> bool {
    (candidate.wrapping_sub(current) as i32) > 0
}

/// Where a key's [`PublishSlot`] lives, locked on access (the key's state, whose lock it
/// shares so that a transition applies itself locally and publishes in one critical section).
pub(crate) trait SlotLock {
    fn slot(&self) -> impl core::ops::DerefMut<Target = PublishSlot> + '_;
}

/// Where a registry's controller sends its transitions (implemented by the registry;
/// absent for standalone controllers, whose transitions are local only).
pub(crate) trait Publisher: Send + Sync + 'static {
    /// Publishes `busy`/`data` as this instance's status for `key`, under the wire
    /// sequence `seq` (strictly increasing per key).
    fn publish<'a>(
        &'a self,
        key: &'a str,
        seq: u64,
        busy: bool,
        data: Option<&'a str>,
    ) -> BoxFuture<'a, Result<()>>;
    /// Publishes `status` without waiting if the backend can ([`Backend::publish_now`]) and
    /// the registry is not shut down; `None` means "use [`publish`](Self::publish)". `index`
    /// is the tracker's (it finds the key's bound publish, [`Backend::bind_publisher`]).
    ///
    /// [`Backend::publish_now`]: crate::Backend::publish_now
    /// [`Backend::bind_publisher`]: crate::Backend::bind_publisher
    fn publish_now(
        &self,
        index: usize,
        key: &str,
        status: &InstanceStatus,
    ) -> Option<core::result::Result<(), BackendError>>;
    /// How long a published status stays valid without renewal.
    fn valid_for(&self) -> Duration;
    /// Whether [`publish_now`](Self::publish_now) may publish (a hint that saves a backend
    /// that never publishes inline a lock round per publish).
    fn publishes_inline(&self) -> bool;
    /// Whether the registry was shut down or dropped: no driver takes the publishing role
    /// over any more.
    fn is_closed(&self) -> bool;
    /// The sequence every key starts from: the wall clock at build, so that an instance
    /// restarted under the same name supersedes its old statuses.
    fn first_seq(&self) -> u64;
    /// Asks the background driver to publish what is pending for tracker `index` (sync
    /// transitions, cancelled or failed publishes).
    fn wake_driver(&self, index: usize);
    /// Asks the driver to look at tracker `index` after a lease: if its newest status is
    /// still not acknowledged then (the `Ack` that was to publish it was never polled, or
    /// polled once and kept), the driver publishes it, taking the role over from its holder.
    /// `token` names a role holder to take over (0: whoever holds it then).
    fn lease(&self, index: usize, token: u64);
}

/// Which statuses a publish sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PublishMode {
    /// The newest status, if the backend has not acknowledged it.
    Pending,
    /// Also an acknowledged busy status (renewal: it must not expire while busy).
    Renew,
    /// The newest status whatever it is (recovery: the store may have lost or restored an
    /// old one — an idle status included, which a restore from a snapshot may bring back
    /// as busy).
    Recover,
}

/// How often a publish is tried again at once, with a sequence above the one the store
/// holds, when the store reports this instance's status superseded
/// ([`BackendErrorKind::Superseded`]). More means a second live instance shares the name.
const SUPERSEDED_RETRIES: usize = 2;

/// The sequence a store says it holds, when it refused a publish as superseded.
fn superseded(result: &Result<()>) -> Option<u64> {
    match result {
        Err(Error::Backend { source, .. }) => superseded_by(source),
        _ => None,
    }
}

/// [`superseded`] for a backend's own error (the inline path's).
fn superseded_by(error: &BackendError) -> Option<u64> {
    if error.kind() == BackendErrorKind::Superseded {
        error.held_seq()
    } else {
        None
    }
}

/// The newest status to publish and what the backend has acknowledged (latest wins: only
/// the newest status is ever sent; an older one still in flight is superseded).
#[derive(Default)]
pub(crate) struct PublishSlot {
    newest_epoch: u32,
    newest_busy: bool,
    newest_data: LockData,
    /// Newest epoch the backend acknowledged.
    acked_epoch: u32,
    /// Newest epoch whose publish failed, and how.
    failed: Option<(u32, BackendErrorKind, String)>,
    /// The publishing role: the token of the publish in flight (0: none). One publisher at
    /// a time per key, so publishes reach the backend in order. A holder may be superseded
    /// (a newer status to publish, or the driver after a lease): its late outcome is still
    /// recorded, and the store orders statuses by sequence.
    role: u64,
    /// The epoch the role holder publishes.
    role_epoch: u32,
    /// Tokens handed out.
    tokens: u64,
    /// The last wire sequence handed out for this key. Per key, under this lock that every
    /// publish takes anyway: no shared counter for all keys to contend on.
    seq: u64,
    /// Acknowledged and failed publishes (for `Metrics`), likewise without a shared atomic.
    publishes: u64,
    publish_failures: u64,
    /// The status an inline publish hands the backend.
    outgoing: Outgoing,
}

/// The status an inline publish hands the backend, kept in the slot from one publish to the
/// next so that its lock data reuses one allocation: a busy transition with lock data
/// allocates no new `String` to publish it.
struct Outgoing {
    status: InstanceStatus,
    /// The allocation `status.lock_data` gave up ([`set_lock_data`]).
    spare: String,
}

impl Default for Outgoing {
    fn default() -> Self {
        Outgoing {
            status: InstanceStatus::idle(0, Duration::ZERO),
            spare: String::new(),
        }
    }
}

impl PublishSlot {
    /// Sets the sequence the key's statuses continue from.
    pub(crate) fn start_at(&mut self, seq: u64) {
        self.seq = seq;
    }

    /// Whether the newest status is to be published now: no one else is publishing it, and
    /// it is not acknowledged yet (or, with `force`, it is busy: renewal and recovery
    /// re-publish it).
    fn needs_publish(&self, mode: PublishMode) -> bool {
        self.role == 0 && self.wanted(mode)
    }

    /// Whether `mode` has anything to send, ignoring the role.
    fn wanted(&self, mode: PublishMode) -> bool {
        match mode {
            PublishMode::Pending => self.pending(),
            PublishMode::Renew => self.pending() || self.newest_busy,
            PublishMode::Recover => true,
        }
    }

    /// Takes the role; returns its token.
    fn take_role(&mut self) -> u64 {
        self.tokens += 1;
        self.role = self.tokens;
        self.role_epoch = self.newest_epoch;
        self.role
    }

    /// Gives the role back, if `token` still holds it.
    fn give_back(&mut self, token: u64) {
        if self.role == token {
            self.role = 0;
        }
    }

    /// After a store said it holds sequence `held`, continues above it.
    fn raise_seq(&mut self, held: u64) {
        self.seq = self.seq.max(held);
    }

    /// Whether the newest status still waits for an acknowledgement.
    fn pending(&self) -> bool {
        epoch_is_newer(self.newest_epoch, self.acked_epoch)
    }

    fn next_seq(&mut self) -> u64 {
        // Saturating: a store may hold any sequence (someone else wrote it), and an
        // instance raised to the top keeps writing at it (equal sequences replace).
        self.seq = self.seq.saturating_add(1);
        self.seq
    }

    /// Publishes the newest status without waiting, under the state's lock (the caller holds
    /// it), when the backend can: `None` when it cannot. A status the store reports
    /// superseded goes again above the sequence the store holds. The outcome is recorded.
    #[inline]
    fn publish_inline(
        &mut self,
        publisher: &KeyPublisher,
        index: usize,
        key: &str,
    ) -> Option<core::result::Result<(), BackendError>> {
        let epoch = self.newest_epoch;
        let Outgoing { status, spare } = &mut self.outgoing;
        status.busy = self.newest_busy;
        status.valid_for = publisher.valid_for();
        set_lock_data(&mut status.lock_data, spare, self.newest_data.get());
        let mut result;
        let mut tries = 0;
        loop {
            // `publish_now` itself says whether it can publish inline; the sequence is taken
            // only when it did.
            let seq = self.seq.saturating_add(1);
            self.outgoing.status.seq = seq;
            result = publisher.publish_now(index, key, &self.outgoing.status)?;
            self.seq = seq;
            match result.as_ref().err().and_then(superseded_by) {
                Some(held) if tries < SUPERSEDED_RETRIES => {
                    self.raise_seq(held);
                    tries += 1;
                }
                _ => break,
            }
        }
        match &result {
            Ok(()) => self.record_acknowledged(epoch),
            Err(source) => self.record_failed(epoch, source.kind(), source.message().into()),
        }
        Some(result)
    }

    /// Records the outcome of publishing `epoch` for every waiter.
    fn record_outcome(&mut self, epoch: u32, result: &Result<()>) {
        match result {
            Ok(()) => self.record_acknowledged(epoch),
            Err(Error::Backend { source, .. }) => {
                self.record_failed(epoch, source.kind(), String::from(source.message()));
            }
            Err(Error::Shutdown { .. }) => {
                self.keep_failure(epoch, BackendErrorKind::Closed, "shut down".into());
            }
            Err(other) => {
                self.keep_failure(epoch, BackendErrorKind::Other, alloc::format!("{other}"));
            }
        }
    }

    #[inline]
    fn record_acknowledged(&mut self, epoch: u32) {
        if epoch_is_newer(epoch, self.acked_epoch) || epoch == self.acked_epoch {
            self.acked_epoch = epoch;
        }
        // A newer status's failure stands: its waiters must see it (rather than take the
        // role and publish it themselves, unleased), and the driver retries it. Tested for
        // presence first: the usual acknowledgement, with no failure recorded, writes nothing.
        if self.failed.is_some() && !self.failed_after(epoch) {
            self.failed = None;
        }
        self.publishes += 1;
    }

    fn record_failed(&mut self, epoch: u32, kind: BackendErrorKind, message: String) {
        self.keep_failure(epoch, kind, message);
        self.publish_failures += 1;
    }

    /// Records that publishing `epoch` failed, unless a newer status's failure is recorded:
    /// that one stands, as for an acknowledgement (see `record_acknowledged`), so an older
    /// publish failing late cannot hide it from its waiters.
    fn keep_failure(&mut self, epoch: u32, kind: BackendErrorKind, message: String) {
        if !self.failed_after(epoch) {
            self.failed = Some((epoch, kind, message));
        }
    }

    /// Whether the recorded failure is of a status newer than `epoch`.
    fn failed_after(&self, epoch: u32) -> bool {
        self.failed
            .as_ref()
            .is_some_and(|(failed, ..)| epoch_is_newer(*failed, epoch))
    }
}

/// A key's publishing half: where its statuses go and who waits for their outcome. The
/// steps of the protocol take the key's [`SlotLock`].
pub(crate) struct PublishPoint {
    /// Shared with the state's link: one allocation per key.
    pub(crate) key: Arc<str>,
    /// The tracker's position in the registry (what it rings the driver with).
    pub(crate) index: usize,
    /// Notified whenever a publish finishes (acked or failed) or is abandoned.
    published: Signal,
    publisher: Option<Arc<KeyPublisher>>,
    /// The key's metrics (a registry's key).
    #[cfg(feature = "metrics")]
    instruments: Option<Arc<crate::instruments::KeyInstruments>>,
}

impl PublishPoint {
    pub(crate) fn new(key: Arc<str>, index: usize, publisher: Option<Arc<KeyPublisher>>) -> Self {
        PublishPoint {
            key,
            index,
            published: Signal::new(),
            publisher,
            #[cfg(feature = "metrics")]
            instruments: None,
        }
    }

    /// Records this key's publishes in `instruments`.
    #[cfg(feature = "metrics")]
    pub(crate) fn with_instruments(
        mut self,
        instruments: Option<Arc<crate::instruments::KeyInstruments>>,
    ) -> Self {
        self.instruments = instruments;
        self
    }

    /// Counts a publish's outcome in the key's metrics.
    #[inline]
    fn count_outcome<E>(&self, result: &core::result::Result<(), E>) {
        #[cfg(feature = "metrics")]
        if let Some(instruments) = &self.instruments {
            instruments.publish_outcome(result);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = result;
    }

    /// The sequence the key's statuses start from.
    pub(crate) fn first_seq(&self) -> u64 {
        self.publisher.as_ref().map_or(0, |p| p.first_seq())
    }

    /// Whether transitions are published (a registry's controller) or only applied locally
    /// (a standalone one).
    #[inline]
    pub(crate) fn publishes(&self) -> bool {
        self.publisher.is_some()
    }

    /// The publishing part of a transition, run on the slot inside the state's critical
    /// section that applies it locally: records it as newest and — when the backend
    /// publishes inline and no one else is publishing this key — publishes it right there.
    /// An inline publish never waits; no waiter can be listening for its outcome (they
    /// listen only while the role is held, which this never takes), so nobody needs waking.
    /// Returns whether an inline publish failed (`Some(false)` also when a newer status is
    /// already acknowledged; `None`: none was made).
    #[inline]
    pub(crate) fn publish_transition_inline(
        &self,
        slot: &mut PublishSlot,
        epoch: u32,
        busy: bool,
        newest: Option<&str>,
    ) -> Option<bool> {
        let publisher = self.publisher.as_deref()?;
        if epoch_is_newer(epoch, slot.newest_epoch) {
            slot.newest_epoch = epoch;
            slot.newest_busy = busy;
            slot.newest_data.set(newest);
        }
        if slot.newest_epoch != epoch || slot.role != 0 {
            // A newer status already acknowledged covers this one (two transitions raced
            // and this one came second): nothing is left to wait for.
            return (!epoch_is_newer(epoch, slot.acked_epoch)).then_some(false);
        }
        let result = slot.publish_inline(publisher, self.index, &self.key)?;
        self.count_outcome(&result);
        // Only a failure has an error to drop, and that out of line.
        Some(match result {
            Ok(()) => false,
            Err(error) => {
                drop_cold(error);
                true
            }
        })
    }

    /// What is left of a transition after [`publish_transition_inline`]: the epoch still to
    /// be acknowledged, if any (then an `Ack` or the driver takes over); a failed inline
    /// publish goes to the driver.
    ///
    /// [`publish_transition_inline`]: Self::publish_transition_inline
    #[inline]
    pub(crate) fn transition_outcome(&self, failed: Option<bool>, epoch: u32) -> Option<u32> {
        match failed {
            // Published and acknowledged inline.
            Some(false) => None,
            Some(true) => {
                self.wake_driver();
                Some(epoch)
            }
            // Someone else is publishing, or the backend cannot publish inline: an `Ack`
            // or the driver takes over. The driver looks again after a lease, so that an
            // `Ack` never polled, or polled once and kept (a `select!` that took another
            // branch), cannot keep the status from the store: it then publishes the status
            // itself, taking the role over from whoever still holds it.
            None => {
                if let Some(publisher) = &self.publisher {
                    publisher.lease(self.index, 0);
                }
                Some(epoch)
            }
        }
    }

    /// Waits until the backend acknowledged `epoch` or a newer status, publishing itself
    /// when no one else is (so the common case has no hand-off to another thread).
    pub(crate) async fn acknowledged(&self, slots: &impl SlotLock, epoch: u32) -> Result<()> {
        loop {
            let listener = {
                let slot = slots.slot();
                if !epoch_is_newer(epoch, slot.acked_epoch) {
                    return Ok(());
                }
                if let Some((failed, kind, message)) = &slot.failed
                    && !epoch_is_newer(epoch, *failed)
                {
                    return Err(Error::Backend {
                        key: String::from(&*self.key),
                        source: BackendError::new(*kind, message.clone()),
                    });
                }
                // A holder publishing an older status than this one is superseded: this
                // publishes the newer one rather than wait for a holder that may never be
                // polled again.
                if slot.role != 0 && !epoch_is_newer(epoch, slot.role_epoch) {
                    Some(self.published.listen())
                } else {
                    None
                }
            };
            match listener {
                Some(listener) => {
                    // Once the registry is closed no driver takes the role over from a
                    // holder that is never polled again (a kept `Ack`), so this would wait
                    // forever. The check follows the listener's registration, and closing
                    // notifies after setting the flag (`notify_closed`): no wake-up is lost.
                    if self.publisher.as_ref().is_some_and(|p| p.is_closed()) {
                        return Err(Error::Shutdown {
                            key: String::from(&*self.key),
                        });
                    }
                    listener.await;
                }
                None => {
                    if let Err(Error::Shutdown { key }) = self
                        .publish_newest(slots, PublishMode::Pending, Claim::Caller)
                        .await
                    {
                        return Err(Error::Shutdown { key });
                    }
                }
            }
        }
    }

    /// Publishes the newest status as `mode` asks. Returns `Ok(false)` when another
    /// publisher holds the key (and `claim` may not take it over) or there is nothing to do.
    /// The outcome is recorded for every waiter.
    pub(crate) async fn publish_newest(
        &self,
        slots: &impl SlotLock,
        mode: PublishMode,
        claim: Claim,
    ) -> Result<bool> {
        let Some(publisher) = &self.publisher else {
            return Ok(false);
        };
        if let Some(done) = self.publish_newest_now(slots, publisher, mode) {
            return done;
        }
        let Some((token, mut epoch, mut seq, mut busy, mut data)) = self.claim(slots, mode, claim)
        else {
            return Ok(false);
        };
        // If this future is dropped mid-publish, the guard gives the key back and wakes
        // the driver, which publishes the newest status in the background.
        let mut guard = PublishingGuard {
            point: self,
            slots,
            publisher,
            token,
            done: false,
        };
        let mut tries = 0;
        #[cfg(feature = "metrics")]
        let started = std::time::Instant::now();
        let result = loop {
            let result = {
                // Should this future stop being polled, the driver takes over after the
                // lease the transition started (see `transition_outcome`).
                publisher
                    .publish(&self.key, seq, busy, data.as_deref())
                    .await
            };
            match superseded(&result) {
                Some(held) => {
                    let mut slot = slots.slot();
                    if slot.role != token {
                        // A newer publish of this instance holds the role now (a newer
                        // status, or the driver after the lease) and wrote above this one:
                        // the outcome is its to record, and waiters wait for it.
                        drop(slot);
                        guard.done = true;
                        self.published.notify_all();
                        return Ok(false);
                    }
                    if tries == SUPERSEDED_RETRIES {
                        break result;
                    }
                    tries += 1;
                    slot.raise_seq(held);
                    (epoch, seq, busy, data) = (
                        slot.newest_epoch,
                        slot.next_seq(),
                        slot.newest_busy,
                        slot.newest_data.get().map(String::from),
                    );
                    slot.role_epoch = epoch;
                }
                None => break result,
            }
        };
        guard.done = true;
        #[cfg(feature = "metrics")]
        if let Some(instruments) = &self.instruments {
            instruments
                .publish_seconds
                .record(started.elapsed().as_secs_f64());
        }
        self.settle(slots, publisher, token, epoch, &result);
        result.map(|()| true)
    }

    /// [`publish_newest`](Self::publish_newest) inline, when the backend publishes without
    /// waiting: under the state's lock, as a transition publishes, so the publishing role is
    /// never held across the call and a transition made meanwhile (on another thread: the
    /// driver renews, retries and recovers) is published inline too instead of waiting for
    /// this one. `None`: the backend cannot; use the asynchronous path.
    fn publish_newest_now(
        &self,
        slots: &impl SlotLock,
        publisher: &KeyPublisher,
        mode: PublishMode,
    ) -> Option<Result<bool>> {
        if !publisher.publishes_inline() {
            return None;
        }
        let mut slot = slots.slot();
        if !slot.needs_publish(mode) {
            return Some(Ok(false));
        }
        let result = slot.publish_inline(publisher, self.index, &self.key)?;
        drop(slot);
        self.count_outcome(&result);
        // As for an inline transition: nobody listens for this outcome (waiters listen only
        // while the role is held), so nobody needs waking; a failure goes to the driver.
        if result.is_err() {
            publisher.wake_driver(self.index);
        }
        Some(result.map(|()| true).map_err(|source| Error::Backend {
            key: String::from(&*self.key),
            source,
        }))
    }

    /// Takes the publishing role for the newest status if `mode` has something to send and
    /// the role is free — or held by a publish `claim` may supersede: one of an older status
    /// (latest wins), or, for the driver after a lease, the one whose token it names.
    /// Returns the token, epoch, sequence, and status.
    fn claim(
        &self,
        slots: &impl SlotLock,
        mode: PublishMode,
        claim: Claim,
    ) -> Option<(u64, u32, u64, bool, Option<String>)> {
        let mut slot = slots.slot();
        if !slot.wanted(mode) {
            return None;
        }
        let free = match claim {
            _ if slot.role == 0 => true,
            Claim::Caller | Claim::Driver => epoch_is_newer(slot.newest_epoch, slot.role_epoch),
            Claim::TakeOver(token) => slot.role == token,
        };
        if !free {
            return None;
        }
        let token = slot.take_role();
        Some((
            token,
            slot.newest_epoch,
            slot.next_seq(),
            slot.newest_busy,
            slot.newest_data.get().map(String::from),
        ))
    }

    /// Records the outcome of publishing `epoch` for every waiter and gives the role back
    /// (if `token` still holds it); a failure hands the retry to the driver.
    fn settle(
        &self,
        slots: &impl SlotLock,
        publisher: &KeyPublisher,
        token: u64,
        epoch: u32,
        result: &Result<()>,
    ) {
        {
            let mut slot = slots.slot();
            slot.give_back(token);
            slot.record_outcome(epoch, result);
        }
        self.count_outcome(result);
        self.published.notify_all();
        if result.is_err() {
            publisher.wake_driver(self.index);
        }
    }

    /// Wakes every task waiting for another publisher's outcome, after the registry was
    /// closed: each then stops waiting (see [`acknowledged`](Self::acknowledged)).
    pub(crate) fn notify_closed(&self) {
        self.published.notify_all();
    }

    /// The token of the publish holding the role, if any (for the driver's lease).
    pub(crate) fn role_token(&self, slots: &impl SlotLock) -> Option<u64> {
        let role = slots.slot().role;
        (role != 0).then_some(role)
    }

    /// A wire sequence above every one this key published (for the goodbye).
    pub(crate) fn next_seq(&self, slots: &impl SlotLock) -> u64 {
        slots.slot().next_seq()
    }

    /// Acknowledged and failed publishes of this key so far.
    pub(crate) fn publish_counts(&self, slots: &impl SlotLock) -> (u64, u64) {
        let slot = slots.slot();
        (slot.publishes, slot.publish_failures)
    }

    /// Whether the newest status still waits for an acknowledgement.
    pub(crate) fn has_pending(&self, slots: &impl SlotLock) -> bool {
        slots.slot().pending()
    }

    /// The newest busy status this instance holds, for goodbyes and diagnostics.
    pub(crate) fn newest_is_busy(&self, slots: &impl SlotLock) -> bool {
        slots.slot().newest_busy
    }

    /// Asks the driver to publish what is pending for this key.
    #[inline]
    pub(crate) fn wake_driver(&self) {
        if let Some(publisher) = &self.publisher {
            publisher.wake_driver(self.index);
        }
    }
}

/// Who asks for the publishing role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// A caller's future (an `Ack`).
    Caller,
    /// The driver's own round (pending publishes, renewal, recovery).
    Driver,
    /// The driver taking over the role the publish with this token has held past its lease.
    TakeOver(u64),
}

/// Gives the publishing role back if a publish future is dropped mid-publish, and hands the
/// publish to the driver.
struct PublishingGuard<'a, S: SlotLock> {
    point: &'a PublishPoint,
    slots: &'a S,
    publisher: &'a KeyPublisher,
    token: u64,
    done: bool,
}

impl<S: SlotLock> Drop for PublishingGuard<'_, S> {
    fn drop(&mut self) {
        if !self.done {
            self.slots.slot().give_back(self.token);
            self.point.published.notify_all();
            self.publisher.wake_driver(self.point.index);
        }
    }
}

#[cfg(loom)]
pub use bell::Bell;
#[cfg(all(feature = "std", not(loom)))]
pub(crate) use bell::{Bell, LEASE};
#[cfg(all(feature = "std", not(loom)))]
pub(crate) use registry_side::RegistryPublisher;

/// The publisher a key's transitions go through: the registry's. A concrete type rather than
/// `dyn Publisher`, so that a transition's inline publish is one chain of static calls the
/// compiler can flatten (a local transition is mostly that chain).
#[cfg(all(feature = "std", not(loom)))]
pub(crate) type KeyPublisher = RegistryPublisher;
/// Without a registry (no `std`, the loom models) no key has a publisher.
#[cfg(not(all(feature = "std", not(loom))))]
pub(crate) type KeyPublisher = NoPublisher;

/// The publisher of builds without a registry: there is none, so no value of it exists.
#[cfg(not(all(feature = "std", not(loom))))]
pub(crate) enum NoPublisher {}

#[cfg(not(all(feature = "std", not(loom))))]
impl Publisher for NoPublisher {
    fn publish<'a>(
        &'a self,
        _: &'a str,
        _: u64,
        _: bool,
        _: Option<&'a str>,
    ) -> BoxFuture<'a, Result<()>> {
        match *self {}
    }
    fn publish_now(
        &self,
        _: usize,
        _: &str,
        _: &InstanceStatus,
    ) -> Option<core::result::Result<(), BackendError>> {
        match *self {}
    }
    fn valid_for(&self) -> Duration {
        match *self {}
    }
    fn publishes_inline(&self) -> bool {
        match *self {}
    }
    fn is_closed(&self) -> bool {
        match *self {}
    }
    fn first_seq(&self) -> u64 {
        match *self {}
    }
    fn wake_driver(&self, _: usize) {
        match *self {}
    }
    fn lease(&self, _: usize, _: u64) {
        match *self {}
    }
}

/// The driver's bell, apart from the registry so that the loom models check it: no ring is
/// lost, and what a ringer did before ringing is seen by the driver's look that follows.
#[cfg(any(feature = "std", loom))]
// The models exercise the bell alone, without the driver that uses the rest of it.
#[cfg_attr(loom, allow(dead_code))]
mod bell {
    use alloc::boxed::Box;
    use alloc::vec::Vec;

    use event_listener::{Event, EventListener};

    use crate::sync::{AtomicBool, Mutex, Ordering};

    /// Wakes the driver and tells it which trackers need a look (a publish left pending, an
    /// expiry to re-arm after a read-through), so that a round of the driver costs what
    /// changed, not the number of trackers.
    ///
    /// Public only in the loom models' build (`--cfg loom`), which checks it from the
    /// `loom-tests` crate.
    pub struct Bell {
        event: Event,
        /// Whether a tracker is in `list` already: each is queued once however often it rings.
        queued: Box<[AtomicBool]>,
        list: Mutex<Vec<usize>>,
        /// Publishing roles callers' futures took (tracker, token), for the driver's lease.
        leases: Mutex<Vec<(usize, u64)>>,
    }

    /// How long a caller's future may hold a key's publishing role before the driver takes it
    /// over and publishes the newest status itself: an `Ack` polled once and then kept (a
    /// `select!` that awaits it later) must not keep the status from the store. Well above a
    /// store round trip, so a publish in flight is rarely sent twice; sending it twice is
    /// harmless (the store orders statuses by sequence).
    pub(crate) const LEASE: core::time::Duration = core::time::Duration::from_millis(200);

    impl Bell {
        /// A bell for `trackers` trackers, indexed from 0.
        pub fn new(trackers: usize) -> Self {
            Bell {
                event: Event::new(),
                queued: (0..trackers).map(|_| AtomicBool::new(false)).collect(),
                list: Mutex::new(Vec::new()),
                leases: Mutex::new(Vec::new()),
            }
        }

        /// Tells the driver a caller's future holds tracker `index`'s publishing role as
        /// `token` (see [`LEASE`]).
        pub(crate) fn lease(&self, index: usize, token: u64) {
            self.leases.lock().push((index, token));
            self.event.notify(usize::MAX);
        }

        pub(crate) fn take_leases(&self) -> Vec<(usize, u64)> {
            core::mem::take(&mut *self.leases.lock())
        }

        /// A listener for the next ring or wake. The driver takes it before it takes what
        /// rang, so a ring during its round wakes it for the next one.
        pub fn listen(&self) -> EventListener {
            self.event.listen()
        }

        /// Wakes the driver to look at tracker `index`.
        pub fn ring(&self, index: usize) {
            if let Some(flag) = self.queued.get(index)
                && !flag.swap(true, Ordering::AcqRel)
            {
                self.list.lock().push(index);
            }
            self.event.notify(usize::MAX);
        }

        /// Wakes the driver for no tracker in particular (stop).
        pub(crate) fn wake(&self) {
            self.event.notify(usize::MAX);
        }

        /// The trackers rung since the last call. A flag is cleared with a read-modify-write,
        /// which reads the ringer's swap: what the ringer did before ringing is visible to the
        /// driver's look that follows, even when that ring found the tracker still queued.
        pub fn take(&self) -> Vec<usize> {
            let list = core::mem::take(&mut *self.list.lock());
            for &i in &list {
                self.queued[i].swap(false, Ordering::AcqRel);
            }
            list
        }
    }
}

/// The protocol's part that a registry adds: the publisher that turns a status into a
/// backend call.
#[cfg(all(feature = "std", not(loom)))]
mod registry_side {
    use alloc::boxed::Box;
    use alloc::string::String;
    use alloc::sync::Arc;
    use alloc::vec::Vec;
    use core::time::Duration;

    use super::{Bell, Publisher};
    use crate::backend::{BoundPublisher, BoxFuture, DynBackend, InstanceStatus, StoreTime};
    use crate::error::{Error, Result};
    use crate::sync::{AtomicBool, Ordering};

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
                if self.is_closed() {
                    return Err(Error::Shutdown { key: key.into() });
                }
                let status = self.status(seq, busy, data);
                with_key(
                    key,
                    self.backend.publish_dyn(key, &self.instance, &status).await,
                )
            })
        }

        #[inline]
        fn publish_now(
            &self,
            index: usize,
            key: &str,
            status: &InstanceStatus,
        ) -> Option<core::result::Result<(), crate::BackendError>> {
            // After shutdown the asynchronous path reports `Error::Shutdown`.
            if !self.publishes_inline() {
                return None;
            }
            if let Some(Some(bound)) = self.bound.get(index) {
                return Some(bound.publish_now(status));
            }
            let Some(result) = self.backend.publish_now_dyn(key, &self.instance, status) else {
                self.inline.store(false, Ordering::Relaxed);
                return None;
            };
            Some(result)
        }

        #[inline]
        fn publishes_inline(&self) -> bool {
            self.inline.load(Ordering::Relaxed) && !self.is_closed()
        }

        fn is_closed(&self) -> bool {
            self.closed.load(Ordering::Acquire)
        }

        /// Strictly increasing per key from here, starting from the wall clock in nanoseconds
        /// at build, so that an instance restarted under the same name still supersedes its old
        /// statuses: the old process's sequences grew by one per publish, and a publish takes
        /// far longer than a nanosecond, so they stay below the wall clock at which the new
        /// process starts.
        fn first_seq(&self) -> u64 {
            self.first_seq
        }

        #[inline]
        fn valid_for(&self) -> Duration {
            self.valid_for
        }

        fn wake_driver(&self, index: usize) {
            self.bell.ring(index);
        }

        fn lease(&self, index: usize, token: u64) {
            self.bell.lease(index, token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{LockData, SPARE_CAPACITY, set_lock_data};
    use alloc::string::String;

    /// Lock data a key goes through: longer and shorter texts, absences one and two in a row,
    /// and `long`, a text over what is kept while absent.
    fn flaps(long: &str) -> [Option<&str>; 10] {
        [
            Some("first"),
            Some("a longer second"),
            Some("3"),
            None,
            None,
            Some("after idle"),
            None,
            Some(long),
            None,
            Some("z"),
        ]
    }

    #[test]
    fn lock_data_reads_exactly_the_last_data_and_bounds_what_it_keeps() {
        let mut data = LockData::default();
        let long = "y".repeat(SPARE_CAPACITY + 1);
        for step in flaps(&long) {
            data.set(step);
            assert_eq!(data.get(), step);
            if step.is_none() {
                assert!(
                    data.text.capacity() <= SPARE_CAPACITY,
                    "a long text is not kept"
                );
            }
        }
    }

    #[test]
    fn set_lock_data_holds_exactly_the_last_data_and_bounds_its_spare() {
        let (mut field, mut spare) = (None, String::new());
        let long = "y".repeat(SPARE_CAPACITY + 1);
        for data in flaps(&long) {
            set_lock_data(&mut field, &mut spare, data);
            assert_eq!(field.as_deref(), data);
            assert!(
                spare.capacity() <= SPARE_CAPACITY,
                "a long text is not kept as a spare"
            );
        }
        set_lock_data(&mut field, &mut spare, None);
        assert!(
            spare.capacity() > 0,
            "a short text's allocation is kept for the next data"
        );
    }
}
