//! The one place that chooses atomics and locks.
//!
//! Everything in the core imports its atomics and its mutex from here, so that under
//! `--cfg loom` every shared-memory operation goes through loom's model checker
//! (the event-listener / async-lock pattern). With `std` the mutex is `parking_lot`'s;
//! without it (no_std + alloc) a spin lock, which is fine because every critical section
//! in the core is a handful of loads and stores with no I/O and no user code.

// `AtomicBool` serves the registry and its driver, which need `std`.
#[cfg(loom)]
#[cfg_attr(not(feature = "std"), allow(unused_imports))]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};

#[cfg(not(loom))]
#[cfg_attr(not(feature = "std"), allow(unused_imports))]
pub(crate) use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};

/// A mutex with an infallible `lock()` whatever the backing implementation.
pub(crate) struct Mutex<T> {
    #[cfg(loom)]
    inner: loom::sync::Mutex<T>,
    #[cfg(all(not(loom), feature = "std"))]
    inner: parking_lot::Mutex<T>,
    #[cfg(all(not(loom), not(feature = "std")))]
    inner: spin::Mutex<T>,
}

#[cfg(loom)]
pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;
#[cfg(all(not(loom), feature = "std"))]
pub(crate) type MutexGuard<'a, T> = parking_lot::MutexGuard<'a, T>;
#[cfg(all(not(loom), not(feature = "std")))]
pub(crate) type MutexGuard<'a, T> = spin::MutexGuard<'a, T>;

impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Self {
            #[cfg(loom)]
            inner: loom::sync::Mutex::new(value),
            #[cfg(all(not(loom), feature = "std"))]
            inner: parking_lot::Mutex::new(value),
            #[cfg(all(not(loom), not(feature = "std")))]
            inner: spin::Mutex::new(value),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        #[cfg(loom)]
        {
            // A poisoned loom mutex means a model thread panicked; the model already failed.
            self.inner
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        }
        #[cfg(not(loom))]
        {
            self.inner.lock()
        }
    }
}

impl<T: core::fmt::Debug> core::fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mutex").finish_non_exhaustive()
    }
}

/// An `event_listener::Event` that skips notifying when no one listens.
///
/// event-listener 5 takes its list lock on every `notify`, listeners or not; transitions
/// notify twice each, so counting listeners saves two lock round trips per transition in
/// the common case of nobody waiting. No wake-up is lost: a listener counts itself with a
/// read-modify-write before it registers and re-checks its condition; a notifier changes
/// the condition, then reads the count with a read-modify-write too (`fetch_add(0)`).
/// Read-modify-writes of one atomic are totally ordered, so either the notifier's comes
/// later and sees the listener, or the listener's comes later, reads the value the
/// notifier's released and so acquires the changed condition before its re-check. This is
/// plain acquire/release reasoning, which loom checks exactly (it weakens SeqCst loads and
/// stores to acquire/release, so a store-load (Dekker) version would not be verifiable).
pub(crate) struct Signal {
    event: event_listener::Event,
    listeners: AtomicUsize,
}

impl Signal {
    pub(crate) fn new() -> Self {
        Signal {
            event: event_listener::Event::new(),
            listeners: AtomicUsize::new(0),
        }
    }

    /// Wakes every current listener (call it after changing the condition).
    pub(crate) fn notify_all(&self) {
        if self.listeners.fetch_add(0, Ordering::AcqRel) != 0 {
            self.event.notify(usize::MAX);
        }
    }

    /// Whether anyone listens, for a signal whose listeners all register (with
    /// [`listen`](Self::listen) or [`register`](Self::register)) inside the same lock as
    /// the notifier changes the condition and calls this: the lock orders each registration
    /// before the change (the count is seen, and the listener exists before the notify) or
    /// after it (the listener's re-check, after the lock, sees the change). No
    /// read-modify-write needed: a plain load under the lock. A count that is stale-high
    /// (a listener dropped meanwhile) only costs a needless notify.
    pub(crate) fn has_listeners_locked(&self) -> bool {
        self.listeners.load(Ordering::Relaxed) != 0
    }

    /// Wakes every current listener, unconditionally (after
    /// [`has_listeners_locked`](Self::has_listeners_locked) said someone listens).
    pub(crate) fn notify_all_unchecked(&self) {
        self.event.notify(usize::MAX);
    }

    /// Counts a listener and registers it; pair with [`unregister`](Self::unregister) when
    /// the returned listener is dropped. Prefer [`listen`](Self::listen).
    pub(crate) fn register(&self) -> event_listener::EventListener {
        self.listeners.fetch_add(1, Ordering::AcqRel);
        self.event.listen()
    }

    /// Uncounts a listener taken with [`register`](Self::register).
    pub(crate) fn unregister(&self) {
        self.listeners.fetch_sub(1, Ordering::AcqRel);
    }

    /// A counted listener, uncounted on drop. Re-check the condition before awaiting it.
    pub(crate) fn listen(&self) -> SignalListener<'_> {
        SignalListener {
            listener: Some(self.register()),
            signal: self,
        }
    }
}

/// A listener of a [`Signal`]: a future, or a blocking wait with `std`.
pub(crate) struct SignalListener<'a> {
    /// Always `Some` until a blocking wait takes it (the count stays until drop).
    listener: Option<event_listener::EventListener>,
    signal: &'a Signal,
}

impl SignalListener<'_> {
    /// Parks the thread until notified.
    #[cfg(feature = "std")]
    pub(crate) fn wait(mut self) {
        use event_listener::Listener;
        if let Some(listener) = self.listener.take() {
            listener.wait();
        }
    }

    /// Parks the thread until notified or `deadline`; whether it was notified.
    #[cfg(feature = "std")]
    pub(crate) fn wait_deadline(mut self, deadline: std::time::Instant) -> bool {
        use event_listener::Listener;
        self.listener
            .take()
            .is_some_and(|listener| listener.wait_deadline(deadline).is_some())
    }
}

impl Drop for SignalListener<'_> {
    fn drop(&mut self) {
        self.signal.unregister();
    }
}

impl core::future::Future for SignalListener<'_> {
    type Output = ();

    fn poll(
        mut self: core::pin::Pin<&mut Self>,
        cx: &mut core::task::Context<'_>,
    ) -> core::task::Poll<()> {
        match self.listener.as_mut() {
            Some(listener) => core::pin::Pin::new(listener).poll(cx),
            None => core::task::Poll::Ready(()),
        }
    }
}
