//! `GET /payments-summary` that never answers a number it knows may be incomplete.
//!
//! Trackers (all threshold 1):
//!
//! * `payments-summary`: busy on an instance while it computes a summary; its lock data is
//!   the window, `{id};{from_ms};{to_ms}`.
//! * `http`: outbound calls to a processor that a summary must wait for.
//! * `payments`: payments a processor accepted that a summary must wait for, until persisted.
//! * `instances`: every live instance is busy here for its whole life, lock data = its
//!   name: who must acknowledge a window.
//! * `summary-seen`: an instance's acknowledgements, lock data `{name};{id},{id}...`: the
//!   windows it has taken into account.
//!
//! The summary on instance S, for window W (its `to` capped at the time of the request: a
//! payment requested after the question was asked cannot be expected in the answer):
//!
//! 1. turns `payments-summary` busy with W (acknowledged by the store);
//! 2. every instance's watcher (woken by `on_blocked`, then looping while the key is blocked)
//!    registers W: from then on its accepted payments inside W count on `payments` and its
//!    calls inside W on `http` (the tower layer's predicate); calls already in flight inside
//!    W are counted on `http` (acknowledged) until handled; its buffer is persisted; then it
//!    acknowledges W in `summary-seen`; payments counted for W are persisted as they come;
//! 3. S waits until every name in `instances` has acknowledged W, then reads `http` and then
//!    `payments` through to the store and waits until both are unblocked;
//! 4. reads the store, answers, and releases `payments-summary`.
//!
//! Step 2's acknowledgement is what the .NET integration app lacks: there, a summary may read
//! `http` before another instance has even heard of the window. If step 3 does not finish
//! within the bound, the answer is 503, never a number that may be incomplete.
//!
//! Concurrent summaries on one instance run one after another (a threshold-1 tracker carries
//! one lock data per instance; the .NET app drops the second window's).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use reactive_lock::TrackerController;

use crate::money::decimal_from_cents;
use crate::processor::WindowQuery;
use crate::service::Service;
use crate::service::pipeline::{Pending, flush, lock_calls};
use crate::timestamp::Window;
use crate::wire::{Summary, Totals};

/// Tracker names.
pub mod keys {
    /// Accepted payments not persisted yet (inside an active window).
    pub const PAYMENTS: &str = "payments";
    /// Outbound processor calls in flight (inside an active window).
    pub const HTTP: &str = "http";
    /// A summary is being computed; lock data: its window.
    pub const SUMMARY: &str = "payments-summary";
    /// Live instances; lock data: their names.
    pub const INSTANCES: &str = "instances";
    /// Windows each instance has taken into account.
    pub const SEEN: &str = "summary-seen";
}

/// How often the watcher looks at the active windows and flushes while a summary is running,
/// and how often a summary looks for acknowledgements (lock data changes without a status
/// change wake nobody).
const POLL: Duration = Duration::from_millis(2);

/// Decrements once when dropped: the summary's `payments-summary` count, also when the
/// request is cancelled.
struct Release(TrackerController);

impl Drop for Release {
    fn drop(&mut self) {
        drop(self.0.decrement(1));
    }
}

fn parse_window(data: &str) -> Option<(String, Window)> {
    let mut parts = data.split(';');
    let id = parts.next()?.to_owned();
    let from_ms = parts.next()?.parse().ok()?;
    let to_ms = parts.next()?.parse().ok()?;
    Some((id, Window { from_ms, to_ms }))
}

fn unavailable(text: impl Into<String>) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({ "message": text.into() })),
    )
        .into_response()
}

/// The `GET /payments-summary` handler.
pub async fn payments_summary(
    State(service): State<Arc<Service>>,
    Query(query): Query<WindowQuery>,
) -> Response {
    let (from_us, to_us) = match query.bounds_us() {
        Ok(b) => b,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(serde_json::json!({ "message": e })),
            )
                .into_response();
        }
    };
    let now_us = chrono::Utc::now().timestamp_micros();
    let window = Window::from_us(from_us, Some(to_us.map_or(now_us, |to| to.min(now_us))));
    if !service.config.no_lock {
        let _one_at_a_time = service.summary_gate.lock().await;
        let id = format!(
            "{}-{}",
            service.config.instance,
            service
                .next_window
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let data = format!("{id};{};{}", window.from_ms, window.to_ms);
        // The count changes when `increment` is called: the release is armed before the
        // await, so a request dropped while announcing gives the count back too.
        let announced = service.summary.increment(Some(&data));
        let _release = Release(service.summary.clone());
        if let Err(e) = announced.await {
            return unavailable(format!("cannot announce the summary: {e}"));
        }
        let settled =
            tokio::time::timeout(service.config.summary_wait, settle(&service, &id)).await;
        match settled {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return unavailable(e),
            Err(_) => {
                return unavailable(format!(
                    "payments in the window still in flight after {} ms",
                    service.config.summary_wait.as_millis()
                ));
            }
        }
        return answer(&service, window).await;
    }
    answer(&service, window).await
}

async fn answer(service: &Service, window: Window) -> Response {
    match service.store.totals(window).await {
        Ok([default, fallback]) => axum::Json(Summary {
            default: Totals {
                total_requests: default.count,
                total_amount: decimal_from_cents(default.cents),
            },
            fallback: Totals {
                total_requests: fallback.count,
                total_amount: decimal_from_cents(fallback.cents),
            },
        })
        .into_response(),
        Err(e) => unavailable(e),
    }
}

/// Step 3: every live instance acknowledged window `id`, then nothing inside it is in flight
/// or unpersisted anywhere.
async fn settle(service: &Service, id: &str) -> Result<(), String> {
    loop {
        let live = service.instances_state.lock_data_entries();
        let seen: HashSet<(String, String)> = service
            .seen_state
            .lock_data_entries()
            .iter()
            .filter_map(|entry| entry.split_once(';'))
            .flat_map(|(name, ids)| ids.split(',').map(move |w| (name.to_owned(), w.to_owned())))
            .collect();
        if !live.is_empty()
            && live
                .iter()
                .all(|name| seen.contains(&(name.clone(), id.to_owned())))
        {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    // `http` first: a call ends only after its accepted payment counts on `payments`.
    service
        .http_state
        .wait_if_blocked_consistent()
        .await
        .map_err(|e| format!("cannot read http: {e}"))?;
    service
        .payments_state
        .wait_if_blocked_consistent()
        .await
        .map_err(|e| format!("cannot read payments: {e}"))?;
    Ok(())
}

/// Step 2, on every instance: registers the active windows, catches up calls in flight,
/// flushes, acknowledges; while a summary runs anywhere, keeps flushing the payments that
/// count for one.
pub async fn watch(service: Arc<Service>) {
    let mut acknowledged: Vec<String> = Vec::new();
    let mut seen_busy = false;
    loop {
        if !service.summary_state.is_blocked() {
            Pending::lock(&service.pending).windows.clear();
            acknowledged.clear();
            if seen_busy {
                seen_busy = false;
                drop(service.seen.decrement(1));
            }
            // `on_blocked` notifies; the re-check above makes a notification sent before
            // this wait harmless (Notify keeps one permit).
            service.summary_blocked.notified().await;
            continue;
        }
        let windows: Vec<(String, Window)> = service
            .summary_state
            .lock_data_entries()
            .iter()
            .filter_map(|data| parse_window(data))
            .collect();
        let new: Vec<Window> = windows
            .iter()
            .filter(|(id, _)| !acknowledged.contains(id))
            .map(|(_, w)| *w)
            .collect();
        Pending::lock(&service.pending).windows = windows.clone();
        if !new.is_empty() {
            // Calls already in flight inside a new window: count each on `http` until its
            // worker is done with it (the worker gives the count back).
            let acks: Vec<_> = {
                let mut calls = lock_calls(&service.calls);
                calls
                    .values_mut()
                    .filter(|c| !c.caught && new.iter().any(|w| w.contains(c.requested_at_ms)))
                    .map(|c| {
                        c.caught = true;
                        service.http.increment(None)
                    })
                    .collect()
            };
            for ack in acks {
                if let Err(e) = ack.await {
                    tracing::warn!(error = %e, "publishing a caught call failed");
                }
            }
            flush(&service).await;
            acknowledged = windows.iter().map(|(id, _)| id.clone()).collect();
            let data = format!("{};{}", service.config.instance, acknowledged.join(","));
            // Idle then busy with the new list: lock data travels with the busy transition.
            if seen_busy {
                drop(service.seen.decrement(1));
            }
            seen_busy = true;
            if let Err(e) = service.seen.increment(Some(&data)).await {
                tracing::warn!(error = %e, "publishing an acknowledgement failed");
            }
        } else {
            acknowledged.retain(|id| windows.iter().any(|(w, _)| w == id));
            // Only payments inside a window hold a summary up; the rest wait for their batch.
            let counted = Pending::lock(&service.pending)
                .buffer
                .iter()
                .any(|(_, counted)| *counted);
            if counted {
                flush(&service).await;
            }
        }
        tokio::time::sleep(POLL).await;
    }
}
