//! The driver: the background work that is the same for every backend.
//!
//! * **renewal** — re-publish own busy statuses every `renewal` (before they expire);
//! * **expiry** — re-evaluate each key at the earliest `valid_until` among busy entries, on
//!   the local monotonic clock re-armed from the store's clock, so a crashed instance's key
//!   unblocks on time with no new message;
//! * **delivery** — apply the subscription's snapshots and updates to the states;
//! * **publishing in the background** — transitions made by guards (which cannot await),
//!   by cancelled or failed `Ack`s;
//! * **recovery** — after a reconnect: re-read every key and re-publish own busy statuses
//!   (the store may have restarted empty); resubscribe when the stream ends; `Unknown`
//!   status meanwhile; retries with exponential backoff and jitter (backon).
//!
//! It is one future. [`ReactiveLockBuilder::build`](crate::ReactiveLockBuilder::build) runs
//! it on its own thread with `futures_lite::future::block_on` (no application runtime
//! needed; timers from async-io, whose reactor runs on whichever thread drives it, or its
//! own). A plain parking `block_on` makes each wake-up one futex wake; `async_io::block_on`
//! would make this thread compete for the reactor and pay epoll and timerfd system calls
//! on every notification;
//! [`build_with_driver`](crate::ReactiveLockBuilder::build_with_driver)
//! hands it to the caller's executor instead.

use alloc::boxed::Box;
use alloc::collections::BinaryHeap;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::cmp::Reverse;
use std::collections::HashMap;
use std::time::Instant;

use backon::BackoffBuilder;
use event_listener::Event;
use futures_lite::StreamExt;

use crate::backend::{BackendEvent, Driver, DynBackend, EventStream};
use crate::config::Resilience;
use crate::controller::TrackerShared;
use crate::error::{Error, Result};
use crate::handlers::HandlerThread;
use crate::publish::{Bell, Claim, LEASE, PublishMode, RegistryPublisher};
use crate::sync::{AtomicBool, AtomicU64, Ordering};

/// Counters of a registry's background work (monotonic since build).
///
/// # Examples
///
/// ```
/// let metrics = reactive_lock::Metrics::default();
/// assert_eq!(metrics.publishes, 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// Statuses the backend acknowledged (transitions, renewals, recovery).
    pub publishes: u64,
    /// Publishes that failed (each is retried).
    pub publish_failures: u64,
    /// Renewal rounds.
    pub renewals: u64,
    /// Full snapshots applied (initial sync, resyncs, read-through waits, notifications).
    pub snapshots_applied: u64,
    /// Single-entry updates applied.
    pub updates_applied: u64,
    /// Times the backend connection was lost (subscription ended or reported so).
    pub disconnects: u64,
    /// Completed recoveries (re-read + re-publish after a reconnect or resubscribe).
    pub resyncs: u64,
    /// `on_blocked` / `on_unblocked` handler calls that panicked (caught and logged; see
    /// [`TrackerState::on_blocked`](crate::TrackerState::on_blocked)).
    pub handler_panics: u64,
}

#[derive(Default)]
struct Counters {
    renewals: AtomicU64,
    snapshots_applied: AtomicU64,
    updates_applied: AtomicU64,
    disconnects: AtomicU64,
    resyncs: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(crate) struct DriverShared {
    backend: Arc<dyn DynBackend>,
    trackers: Vec<Arc<TrackerShared>>,
    keys: Vec<String>,
    /// Tracker by key: events and the registry's lookups find it without a scan.
    index: HashMap<Arc<str>, usize, foldhash::fast::RandomState>,
    resilience: Resilience,
    bell: Arc<Bell>,
    publisher: Arc<RegistryPublisher>,
    /// The registry's handler thread: it outlives the registry until the driver has ended,
    /// so that the handlers of the driver's last changes run there too, not on the driver.
    handlers: Arc<HandlerThread>,
    /// Whether the states were marked driven before the driver's first poll (`build`
    /// spawns it at once); a driver the caller spawns later first catches up.
    driven: AtomicBool,
    stop: AtomicBool,
    running: AtomicBool,
    done: AtomicBool,
    done_event: Event,
    counters: Counters,
    #[cfg(feature = "metrics")]
    instruments: crate::instruments::RegistryInstruments,
}

impl DriverShared {
    pub(crate) fn new(
        backend: Arc<dyn DynBackend>,
        trackers: Vec<Arc<TrackerShared>>,
        resilience: Resilience,
        bell: Arc<Bell>,
        publisher: Arc<RegistryPublisher>,
        handlers: Arc<HandlerThread>,
    ) -> Self {
        let keys = trackers.iter().map(|t| String::from(t.key())).collect();
        let index = trackers
            .iter()
            .enumerate()
            .map(|(i, t)| (t.key_arc(), i))
            .collect();
        DriverShared {
            backend,
            trackers,
            keys,
            index,
            resilience,
            bell,
            publisher,
            handlers,
            driven: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            running: AtomicBool::new(false),
            done: AtomicBool::new(false),
            done_event: Event::new(),
            counters: Counters::default(),
            #[cfg(feature = "metrics")]
            instruments: crate::instruments::RegistryInstruments::new(),
        }
    }

    pub(crate) fn backend(&self) -> &dyn DynBackend {
        &*self.backend
    }

    pub(crate) fn trackers(&self) -> &[Arc<TrackerShared>] {
        &self.trackers
    }

    pub(crate) fn keys(&self) -> &[String] {
        &self.keys
    }

    pub(crate) fn metrics(&self) -> Metrics {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (publishes, publish_failures) = self
            .trackers
            .iter()
            .map(|t| t.publish_counts())
            .fold((0, 0), |(p, f), (tp, tf)| (p + tp, f + tf));
        Metrics {
            publishes,
            publish_failures,
            renewals: get(&c.renewals),
            snapshots_applied: get(&c.snapshots_applied),
            updates_applied: get(&c.updates_applied),
            disconnects: get(&c.disconnects),
            resyncs: get(&c.resyncs),
            handler_panics: self
                .trackers
                .iter()
                .map(|t| t.state().handler_panics())
                .sum(),
        }
    }

    /// Marks every state driven or not (Unknown while not).
    pub(crate) fn set_driven(&self, driven: bool) {
        self.driven.store(driven, Ordering::SeqCst);
        for tracker in &self.trackers {
            tracker.state().set_driven(driven);
        }
    }

    /// The driver has ended (or will never run): every state turns Unknown for good.
    fn end(&self) {
        if !self.stopping() {
            tracing::error!(
                "reactive-lock: the driver ended before shutdown (its task or thread was dropped); \
                 no other instance's change is heard and nothing renews: every key is Unknown"
            );
        }
        for tracker in &self.trackers {
            tracker.state().end();
        }
    }

    /// Stops the driver; called once the registry's publisher is closed, so the tasks
    /// waiting for another publisher's outcome are woken to stop waiting as well.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.bell.wake();
        for tracker in &self.trackers {
            tracker.notify_closed();
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Resolves once a running driver has finished (at once if it never started).
    pub(crate) async fn stopped(&self) {
        loop {
            if !self.running.load(Ordering::SeqCst) || self.done.load(Ordering::SeqCst) {
                return;
            }
            let listener = self.done_event.listen();
            if !self.running.load(Ordering::SeqCst) || self.done.load(Ordering::SeqCst) {
                return;
            }
            listener.await;
        }
    }

    /// Subscribes to every key, then reads each: the subscription comes first so that no
    /// change can fall between the read and the subscription.
    pub(crate) async fn initial_sync(&self) -> Result<EventStream> {
        let events = self
            .backend
            .subscribe_dyn(&self.publisher.instance, &self.keys)
            .await
            .map_err(|source| Error::Backend {
                key: self.keys.join(","),
                source,
            })?;
        self.read_all().await?;
        // This instance's idle status for every key, before anything else: it replaces at
        // once what a previous run under the same name left (a crash while busy), rather than
        // leaving the others blocked until that entry expires.
        for tracker in &self.trackers {
            tracker
                .publish_newest(PublishMode::Recover, Claim::Driver)
                .await?;
        }
        Ok(events)
    }

    /// Reads every key.
    async fn read_all(&self) -> Result<()> {
        for tracker in &self.trackers {
            let snapshot = self
                .backend
                .snapshot_dyn(tracker.key())
                .await
                .map_err(|source| Error::Backend {
                    key: tracker.key().into(),
                    source,
                })?;
            tracker.state().apply_snapshot(&snapshot);
            bump(&self.counters.snapshots_applied);
        }
        Ok(())
    }

    fn set_all_connected(&self, connected: bool) {
        for tracker in &self.trackers {
            tracker.state().set_connected(connected);
        }
    }

    pub(crate) fn tracker(&self, key: &str) -> Option<&Arc<TrackerShared>> {
        self.index_of(key).map(|i| &self.trackers[i])
    }

    fn index_of(&self, key: &str) -> Option<usize> {
        self.index.get(key).copied()
    }

    /// Publishes through the tracker's latest-wins slot, counting the outcome.
    async fn publish(
        &self,
        tracker: &TrackerShared,
        mode: PublishMode,
        claim: Claim,
    ) -> Result<()> {
        match tracker.publish_newest(mode, claim).await {
            Ok(_) => Ok(()),
            Err(error) => {
                tracing::warn!(key = tracker.key(), %error, "reactive-lock: publish failed; retrying with backoff");
                Err(error)
            }
        }
    }

    /// Recovery: re-read every key, re-publish every own status — idle ones too: a store
    /// restarted from a persisted snapshot may hold an old busy status of this instance.
    async fn resync(&self) -> Result<()> {
        self.read_all().await?;
        for tracker in &self.trackers {
            self.publish(tracker, PublishMode::Recover, Claim::Driver)
                .await?;
        }
        bump(&self.counters.resyncs);
        #[cfg(feature = "metrics")]
        self.instruments.resyncs.increment(1);
        Ok(())
    }

    /// Applies one event; returns the tracker it changed, if just one.
    fn handle(&self, event: BackendEvent, state: &mut Loop) -> Option<usize> {
        match event {
            BackendEvent::Snapshot(snapshot) => {
                let i = self.index_of(&snapshot.key)?;
                self.trackers[i].state().apply_snapshot(&snapshot);
                bump(&self.counters.snapshots_applied);
                Some(i)
            }
            BackendEvent::Update {
                key,
                entry,
                store_now,
            } => {
                let i = self.index_of(&key)?;
                self.trackers[i].state().apply_update(&entry, store_now);
                bump(&self.counters.updates_applied);
                Some(i)
            }
            BackendEvent::Disconnected => {
                tracing::warn!("reactive-lock: backend disconnected; status Unknown");
                state.outage_since.get_or_insert_with(Instant::now);
                bump(&self.counters.disconnects);
                #[cfg(feature = "metrics")]
                self.instruments.disconnects.increment(1);
                self.set_all_connected(false);
                None
            }
            BackendEvent::KeyDisconnected(key) => {
                let i = self.index_of(&key)?;
                tracing::warn!(
                    key,
                    "reactive-lock: subscription to the key lost; status Unknown"
                );
                bump(&self.counters.disconnects);
                #[cfg(feature = "metrics")]
                self.instruments.disconnects.increment(1);
                self.trackers[i].state().set_connected(false);
                Some(i)
            }
            BackendEvent::Reconnected => {
                tracing::info!("reactive-lock: backend reconnected; recovering");
                state.resync_since.get_or_insert_with(Instant::now);
                None
            }
        }
    }
}

/// The driver's loop-carried state.
struct Loop {
    events: Option<EventStream>,
    /// Set while a recovery is due; the instant it became due.
    resync_since: Option<Instant>,
    /// When the backend was lost, until the recovery that follows (for its log line).
    outage_since: Option<Instant>,
    /// Earliest instant of the next retry after a failure.
    retry_at: Option<Instant>,
    backoff: backon::ExponentialBackoff,
    next_renewal: Instant,
    /// Trackers whose renewal failed: renewed again at every retry until it succeeds.
    renew_failed: Vec<usize>,
    /// Per tracker, when its newest transition's lease runs out (one lease per tracker: a
    /// later transition moves it, so flapping keeps one entry, not one per transition).
    lease_due: Vec<Option<Instant>>,
    /// The trackers with a lease, by due time; an entry whose tracker's lease moved later is
    /// filed again when it comes up.
    lease_heap: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Trackers with a publish to look at (rung, or failed and waiting for the retry).
    pending: Vec<usize>,
    in_pending: Vec<bool>,
    /// Earliest expiry per tracker, lazily: an entry may be stale (the tracker is simply
    /// re-evaluated when it comes due); `scheduled` keeps one tracker from piling up entries.
    expiry: BinaryHeap<Reverse<(Instant, usize)>>,
    scheduled: Vec<Option<Instant>>,
    /// Every tracker's expiry must be recomputed (start, after a recovery re-read all).
    rescan: bool,
}

impl Loop {
    fn new(shared: &DriverShared, events: EventStream) -> Self {
        let keys = shared.trackers.len();
        Loop {
            events: Some(events),
            resync_since: None,
            outage_since: None,
            retry_at: None,
            backoff: new_backoff(),
            next_renewal: Instant::now() + shared.resilience.renewal,
            renew_failed: Vec::new(),
            lease_due: vec![None; keys],
            lease_heap: BinaryHeap::new(),
            pending: Vec::new(),
            in_pending: vec![false; keys],
            expiry: BinaryHeap::new(),
            scheduled: vec![None; keys],
            rescan: true,
        }
    }

    /// When the driver must run next with no event: the next renewal, retry, lease or
    /// expiry (`touched`: the keys whose expiry may have moved).
    fn deadline(&mut self, shared: &DriverShared, touched: &[usize]) -> Instant {
        let mut deadline = self.next_renewal;
        if let Some(t) = self.retry_at {
            deadline = deadline.min(t);
        }
        if let Some(&Reverse((t, _))) = self.lease_heap.peek() {
            deadline = deadline.min(t);
        }
        if let Some(t) = self.next_expiry(shared, touched) {
            deadline = deadline.min(t);
        }
        deadline
    }

    fn add_pending(&mut self, i: usize) {
        if !self.in_pending[i] {
            self.in_pending[i] = true;
            self.pending.push(i);
        }
    }

    /// Advances tracker `i`'s clock (expiring what is due) and files its next expiry.
    fn schedule(&mut self, shared: &DriverShared, i: usize, now: Instant) {
        if let Some(t) = shared.trackers[i].state().advance_clock(now)
            && self.scheduled[i].is_none_or(|s| t < s)
        {
            self.scheduled[i] = Some(t);
            self.expiry.push(Reverse((t, i)));
        }
    }

    /// Files the expiries that changed and re-evaluates the trackers that came due; returns
    /// the earliest expiry left.
    fn next_expiry(&mut self, shared: &DriverShared, touched: &[usize]) -> Option<Instant> {
        let now = Instant::now();
        if core::mem::take(&mut self.rescan) {
            for i in 0..shared.trackers.len() {
                self.schedule(shared, i, now);
            }
        }
        for &i in touched {
            self.schedule(shared, i, now);
        }
        let mut due = Vec::new();
        while let Some(&Reverse((t, i))) = self.expiry.peek()
            && t <= now
        {
            self.expiry.pop();
            if self.scheduled[i].is_some_and(|s| s <= now) {
                self.scheduled[i] = None;
            }
            due.push(i);
        }
        for i in due {
            self.schedule(shared, i, now);
        }
        self.expiry.peek().map(|Reverse((t, _))| *t)
    }
}

enum Woke {
    Event(Option<BackendEvent>),
    Signal,
    Timer,
}

/// The registry's background work as a [`Driver`]: one future, which marks its end
/// however it comes — completed, its task dropped, or dropped before its first poll.
pub(crate) fn driver(shared: Arc<DriverShared>, events: EventStream) -> Driver {
    let done = DoneOnDrop(shared.clone());
    Driver::from_future(Box::pin(async move {
        let _done = done;
        run(shared, events).await;
    }))
}

/// Marks the driver finished however it ends (also when its task is cancelled, or dropped
/// before it ever ran).
struct DoneOnDrop(Arc<DriverShared>);

impl Drop for DoneOnDrop {
    fn drop(&mut self) {
        self.0.end();
        self.0.handlers.close();
        self.0.done.store(true, Ordering::SeqCst);
        self.0.done_event.notify(usize::MAX);
    }
}

fn new_backoff() -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(core::time::Duration::from_millis(50))
        .with_max_delay(core::time::Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

async fn run(shared: Arc<DriverShared>, events: EventStream) {
    shared.running.store(true, Ordering::SeqCst);
    let mut st = Loop::new(&shared, events);
    if !shared.driven.load(Ordering::SeqCst) {
        first_read(&shared, &mut st).await;
    }
    shared.set_driven(true);
    let mut touched: Vec<usize> = Vec::new();
    let mut timer = WakeTimer::new();
    loop {
        // Register for wake-ups before doing the work, so a wake during the work is kept.
        let signal = shared.bell.listen();
        if shared.stopping() {
            return;
        }
        take_rung(&shared, &mut st, &mut touched);
        step(&shared, &mut st).await;
        if shared.stopping() {
            return;
        }
        let deadline = st.deadline(&shared, &touched);
        touched.clear();
        // Events first: under a flood the loop body still runs after every event, so
        // renewals and expiry never starve.
        let events = &mut st.events;
        let woke = futures_lite::future::or(
            async {
                match events {
                    Some(stream) => Woke::Event(stream.next().await),
                    None => futures_lite::future::pending().await,
                }
            },
            futures_lite::future::or(
                async {
                    signal.await;
                    Woke::Signal
                },
                async {
                    timer.at(deadline).await;
                    Woke::Timer
                },
            ),
        )
        .await;
        match woke {
            Woke::Event(Some(event)) => touched.extend(shared.handle(event, &mut st)),
            Woke::Event(None) => subscription_ended(&shared, &mut st),
            Woke::Signal | Woke::Timer => {}
        }
    }
}

/// A driver spawned by the caller some time after build: what the subscription delivered
/// meanwhile is queued behind, and the states still hold the build's read. Every key is
/// read before the registry answers as driven, so the first known answer is current.
async fn first_read(shared: &DriverShared, st: &mut Loop) {
    if let Err(error) = shared.read_all().await {
        tracing::warn!(%error, "reactive-lock: the driver's first read failed; recovering");
        shared.set_all_connected(false);
        st.resync_since = Some(Instant::now());
    }
}

/// Takes what the bell rang for: transitions to publish (pending) and publishes whose
/// callers hold the role (a lease each, taken over by the driver when it runs out).
fn take_rung(shared: &DriverShared, st: &mut Loop, touched: &mut Vec<usize>) {
    for i in shared.bell.take() {
        st.add_pending(i);
        touched.push(i);
    }
    let leased_at = Instant::now();
    for (i, _) in shared.bell.take_leases() {
        if st.lease_due[i].replace(leased_at + LEASE).is_none() {
            st.lease_heap.push(Reverse((leased_at + LEASE, i)));
        }
    }
}

/// The subscription's stream ended: every key is unknown until a new one is read.
fn subscription_ended(shared: &DriverShared, st: &mut Loop) {
    tracing::warn!("reactive-lock: subscription ended; resubscribing");
    st.outage_since.get_or_insert_with(Instant::now);
    bump(&shared.counters.disconnects);
    #[cfg(feature = "metrics")]
    shared.instruments.disconnects.increment(1);
    st.events = None;
    shared.set_all_connected(false);
}

/// One timer for the driver's life, re-armed only when the deadline moves: registering a
/// timer with async-io's reactor wakes its thread, which a new timer per event (per
/// notification received) would make a thread hand-off per event.
struct WakeTimer {
    timer: async_io::Timer,
    armed_for: Option<Instant>,
}

impl WakeTimer {
    fn new() -> Self {
        WakeTimer {
            timer: async_io::Timer::never(),
            armed_for: None,
        }
    }

    /// Fires at `deadline`.
    async fn at(&mut self, deadline: Instant) {
        if self.armed_for != Some(deadline) {
            self.timer.set_at(deadline);
            self.armed_for = Some(deadline);
        }
        (&mut self.timer).await;
        self.armed_for = None;
    }
}

/// One round of the driver's work: (re)subscribe, recover, publish what is pending, take
/// over what outlived its lease, renew; then schedule the retry of whatever failed.
async fn step(shared: &DriverShared, st: &mut Loop) {
    let now = Instant::now();
    let may_retry = st.retry_at.is_none_or(|t| now >= t);
    let mut failed = false;
    if may_retry {
        failed |= resubscribe(shared, st, now).await;
        if !failed {
            failed |= recover(shared, st).await;
        }
        if !failed {
            failed |= publish_pending(shared, st).await;
        }
    }
    failed |= publish_past_lease(shared, st).await;
    failed |= renew(shared, st).await;
    schedule_retry(shared, st, failed, may_retry);
}

/// Subscribes again if the stream ended; a new stream makes a recovery due. Whether it
/// failed.
async fn resubscribe(shared: &DriverShared, st: &mut Loop, now: Instant) -> bool {
    if st.events.is_some() {
        return false;
    }
    match shared
        .backend
        .subscribe_dyn(&shared.publisher.instance, &shared.keys)
        .await
    {
        Ok(events) => {
            st.events = Some(events);
            st.resync_since.get_or_insert(now);
            false
        }
        Err(error) => {
            tracing::warn!(%error, "reactive-lock: subscribe failed; retrying with backoff");
            shared.set_all_connected(false);
            true
        }
    }
}

/// Recovers if one is due (re-read every key, re-publish every own status); past the
/// recovery window, gives the stream up to subscribe afresh. Whether it failed.
async fn recover(shared: &DriverShared, st: &mut Loop) -> bool {
    let (Some(since), Some(_)) = (st.resync_since, &st.events) else {
        return false;
    };
    match shared.resync().await {
        Ok(()) => {
            st.resync_since = None;
            st.rescan = true;
            match st.outage_since.take() {
                Some(since) => tracing::info!(
                    outage = ?since.elapsed(),
                    "reactive-lock: recovered: every key re-read, own statuses re-published"
                ),
                None => tracing::info!(
                    "reactive-lock: resynced: every key re-read, own statuses re-published"
                ),
            }
            false
        }
        Err(error) => {
            tracing::warn!(%error, "reactive-lock: recovery failed; retrying");
            if since.elapsed() > shared.resilience.recovery {
                tracing::warn!("reactive-lock: recovery window exceeded; resubscribing");
                st.events = None;
                st.resync_since = None;
                shared.set_all_connected(false);
            }
            true
        }
    }
}

/// Publishes what was rung as pending, and retries failed renewals. Whether any failed.
async fn publish_pending(shared: &DriverShared, st: &mut Loop) -> bool {
    let mut failed = false;
    let pending = core::mem::take(&mut st.pending);
    for &i in &pending {
        st.in_pending[i] = false;
    }
    for i in pending {
        let tracker = &shared.trackers[i];
        if tracker.has_pending()
            && shared
                .publish(tracker, PublishMode::Pending, Claim::Driver)
                .await
                .is_err()
        {
            failed = true;
            // Retried after the backoff.
            st.add_pending(i);
        }
    }
    // A failed renewal is not pending (its status was acknowledged before), so it is
    // retried here until it succeeds: one refused write must not let the entry expire at
    // the others while this instance is busy.
    for i in core::mem::take(&mut st.renew_failed) {
        let tracker = &shared.trackers[i];
        if tracker.newest_is_busy()
            && shared
                .publish(tracker, PublishMode::Renew, Claim::Driver)
                .await
                .is_err()
        {
            failed = true;
            st.renew_failed.push(i);
        }
    }
    failed
}

/// Publishes the transitions still not acknowledged a lease after they were made: their
/// `Ack` was never polled, or stopped being polled with the role in hand. Whether any
/// failed.
async fn publish_past_lease(shared: &DriverShared, st: &mut Loop) -> bool {
    let mut failed = false;
    let now = Instant::now();
    let mut due = Vec::new();
    while let Some(&Reverse((at, i))) = st.lease_heap.peek()
        && at <= now
    {
        st.lease_heap.pop();
        match st.lease_due[i] {
            // A later transition moved the lease: file it again for then.
            Some(later) if later > now => st.lease_heap.push(Reverse((later, i))),
            Some(_) => {
                st.lease_due[i] = None;
                due.push(i);
            }
            None => {}
        }
    }
    for i in due {
        let tracker = &shared.trackers[i];
        if !tracker.has_pending() {
            continue;
        }
        let claim = match tracker.role_token() {
            Some(holder) => Claim::TakeOver(holder),
            None => Claim::Driver,
        };
        tracing::debug!(
            key = tracker.key(),
            "reactive-lock: a transition outlived its lease unacknowledged; the driver publishes it"
        );
        if shared
            .publish(tracker, PublishMode::Pending, claim)
            .await
            .is_err()
        {
            failed = true;
            st.add_pending(i);
        }
    }
    failed
}

/// Re-publishes every own busy status when the renewal period is up. Whether any failed.
async fn renew(shared: &DriverShared, st: &mut Loop) -> bool {
    if Instant::now() < st.next_renewal {
        return false;
    }
    let mut failed = false;
    bump(&shared.counters.renewals);
    #[cfg(feature = "metrics")]
    shared.instruments.renewals.increment(1);
    for (i, tracker) in shared.trackers.iter().enumerate() {
        if tracker.newest_is_busy()
            && shared
                .publish(tracker, PublishMode::Renew, Claim::Driver)
                .await
                .is_err()
        {
            failed = true;
            if !st.renew_failed.contains(&i) {
                st.renew_failed.push(i);
            }
        }
    }
    st.next_renewal = Instant::now() + shared.resilience.renewal;
    failed
}

/// After a failure, the next retry: exponential backoff with jitter, and within a fifth
/// of the renewal period while a renewal is failing.
fn schedule_retry(shared: &DriverShared, st: &mut Loop, failed: bool, may_retry: bool) {
    if failed {
        let mut delay = st
            .backoff
            .next()
            .unwrap_or(core::time::Duration::from_secs(5));
        if !st.renew_failed.is_empty() {
            // A busy entry's validity runs `expiration − renewal` past the next renewal:
            // retrying at least five times a renewal period keeps several tries within it.
            delay = delay.min(shared.resilience.renewal / 5);
        }
        st.retry_at = Some(Instant::now() + delay);
    } else if may_retry {
        st.retry_at = None;
        st.backoff = new_backoff();
    }
}
