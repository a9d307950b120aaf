//! From an accepted `POST /payments` to a persisted payment: the queue, the workers that
//! forward to the processors, the calls in flight, and the batch buffer.
//!
//! Counting rules (what a summary relies on, see [`summary`](crate::service::summary)):
//!
//! * every outbound call is registered in [`Service::calls`] while it is being handled, with
//!   its `requestedAt`; a summary window that arrives while it is in flight marks it caught
//!   and counts it on `http` until the worker has finished with it;
//! * an accepted payment whose `requestedAt` lies in an active window counts on `payments`
//!   from the moment it is buffered until its batch is persisted. The window check and the
//!   push happen under one lock with window registration, so a payment is either buffered
//!   before a window is registered (and flushed by the registration) or counted.
//!
//! Lock order: the call registry before the buffer; nothing takes the registry while holding
//! the buffer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::service::Service;
use crate::service::processors::{Outcome, ProcessorName};
use crate::service::store::Processed;
use crate::timestamp::{Window, format_ms, now_ms};
use crate::wire::ProcessorPayment;

/// Persist the buffer about this often outside summaries.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(500);

/// Persist at once when the buffer holds this many payments.
pub const BATCH_SIZE: usize = 500;

/// Pause before sending again a payment whose outcome is unknown.
const UNKNOWN_OUTCOME_PAUSE: Duration = Duration::from_millis(20);

/// A payment waiting for a worker.
#[derive(Clone, Debug)]
pub struct Queued {
    /// Its id.
    pub correlation_id: uuid::Uuid,
    /// Its amount in cents.
    pub amount_cents: i64,
}

/// The batch buffer and the summary windows this instance knows to be active, under one
/// lock (see the module docs for why together).
#[derive(Default)]
pub struct Pending {
    /// Accepted payments not persisted yet, each with whether it counts on `payments`.
    pub buffer: Vec<(Processed, bool)>,
    /// Active summary windows by id.
    pub windows: Vec<(String, Window)>,
}

impl Pending {
    /// Locks, ignoring poison (a panicked holder left the data consistent: every change is a
    /// single push, take or assignment).
    pub fn lock(this: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
        this.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `requested_at_ms` lies in an active window.
    pub fn in_window(&self, requested_at_ms: i64) -> bool {
        self.windows
            .iter()
            .any(|(_, w)| w.contains(requested_at_ms))
    }
}

/// An outbound call being handled.
#[derive(Clone, Copy, Debug)]
pub struct Call {
    /// Its `requestedAt`.
    pub requested_at_ms: i64,
    /// Counted on `http` by a window that arrived while it was in flight.
    pub caught: bool,
}

/// The calls being handled, by call id.
pub type Calls = Mutex<HashMap<u64, Call>>;

pub(crate) fn lock_calls(calls: &Calls) -> MutexGuard<'_, HashMap<u64, Call>> {
    calls.lock().unwrap_or_else(|e| e.into_inner())
}

/// A worker: forwards queued payments until the queue closes.
pub async fn worker(service: Arc<Service>, queue: async_channel::Receiver<Queued>) {
    while let Ok(payment) = queue.recv().await {
        forward(&service, payment).await;
    }
}

async fn forward(service: &Service, queued: Queued) {
    // After an unknown outcome, the same processor and `requestedAt` again: a 422 then tells
    // that the first attempt was stored, under that `requestedAt`.
    let mut pinned: Option<(ProcessorName, i64)> = None;
    loop {
        let (name, pinned_at) = match pinned {
            Some((name, at)) => (name, Some(at)),
            None => match service.processors.choose() {
                Some(name) => (name, None),
                None => {
                    service.processors.wait_for_recovery().await;
                    continue;
                }
            },
        };
        let call_id = service
            .next_call
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // `requestedAt` is taken and the call registered under the registry's lock, the one
        // a new window's catch-up takes after registering the window: either the catch-up
        // sees this call, or the call starts after the window was registered, so its
        // `requestedAt` is later than any window that existed then. A resent call keeps its
        // earlier `requestedAt` and is counted here if a window holds it.
        let (requested_at_ms, counted) = {
            let mut calls = lock_calls(&service.calls);
            let requested_at_ms = pinned_at.unwrap_or_else(now_ms);
            let caught = Pending::lock(&service.pending).in_window(requested_at_ms);
            calls.insert(
                call_id,
                Call {
                    requested_at_ms,
                    caught,
                },
            );
            (
                requested_at_ms,
                caught.then(|| service.http.increment(None)),
            )
        };
        if let Some(ack) = counted
            && let Err(e) = ack.await
        {
            tracing::warn!(error = %e, "publishing a counted call failed; the driver retries");
        }
        let payment = ProcessorPayment {
            correlation_id: queued.correlation_id,
            amount: crate::money::decimal_from_cents(queued.amount_cents),
            requested_at: format_ms(requested_at_ms),
        };
        let outcome = service
            .processors
            .send(name, &payment, requested_at_ms)
            .await;
        let counted = (outcome == Outcome::Accepted).then(|| {
            let mut pending = Pending::lock(&service.pending);
            let counted = pending.in_window(requested_at_ms);
            // Counted before it is buffered: a summary that sees this call end sees the
            // payment on `payments` until it is persisted.
            let ack = counted.then(|| service.payments.increment(None));
            pending.buffer.push((
                Processed {
                    correlation_id: queued.correlation_id,
                    amount_cents: queued.amount_cents,
                    requested_at_ms,
                    processor: name,
                },
                counted,
            ));
            let full = pending.buffer.len() >= BATCH_SIZE;
            drop(pending);
            if full {
                service.batch_full.notify_one();
            }
            ack
        });
        if let Some(Some(ack)) = counted
            && let Err(e) = ack.await
        {
            tracing::warn!(error = %e, "publishing a counted payment failed; the driver retries");
        }
        let caught = lock_calls(&service.calls)
            .remove(&call_id)
            .is_some_and(|c| c.caught);
        if caught {
            // The catch-up's count for this call: the call and its payment are accounted for.
            drop(service.http.decrement(1));
        }
        match outcome {
            Outcome::Accepted => return,
            Outcome::Failed => pinned = None,
            Outcome::Unknown => {
                pinned = Some((name, requested_at_ms));
                tokio::time::sleep(UNKNOWN_OUTCOME_PAUSE).await;
            }
            Outcome::Invalid(status) => {
                tracing::error!(%status, id = %queued.correlation_id, "processor refused the payment as invalid; dropped");
                return;
            }
        }
    }
}

/// Persists everything buffered now. Flushes run one at a time, so when one returns, every
/// payment buffered before it was called is persisted (also those a concurrent flush took).
pub async fn flush(service: &Service) {
    let _one_at_a_time = service.flush_gate.lock().await;
    let batch = std::mem::take(&mut Pending::lock(&service.pending).buffer);
    if batch.is_empty() {
        return;
    }
    let processed: Vec<Processed> = batch.iter().map(|(p, _)| p.clone()).collect();
    loop {
        match service.store.persist(&processed).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "persisting a batch failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let counted = batch.iter().filter(|(_, counted)| *counted).count();
    if counted > 0
        && let Err(e) = service.payments.decrement(counted).await
    {
        tracing::warn!(error = %e, "publishing persisted payments failed; the driver retries");
    }
}

/// Persists the buffer about every [`BATCH_INTERVAL`] (each wait drawn between half and
/// one and a half of it, so instances started together do not write in lockstep), or at once
/// when it fills up.
pub async fn batcher(service: Arc<Service>) {
    loop {
        let wait = BATCH_INTERVAL.mul_f64(0.5 + fastrand::f64());
        let _ = tokio::time::timeout(wait, service.batch_full.notified()).await;
        flush(&service).await;
    }
}
