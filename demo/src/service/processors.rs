//! The two payment processors as the service sees them: which one to use, and one call.
//!
//! The default processor is cheaper: it is used unless it is failing. A processor is marked
//! failing by a 5xx or a transport error and healthy again by an accepted payment or by its
//! health endpoint (polled every 5 s; a 429 from the shared rate limit keeps the last
//! answer). While a processor is marked failing, one call every [`PROBE_EVERY_MS`] across all
//! workers still goes to it, so its recovery is seen without waiting for the next health
//! answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use reactive_lock::TrackerController;
use reactive_lock::tower::{CountRequest, InFlight, InFlightLayer};
use tower::{Layer, ServiceExt};

use crate::service::pipeline::Pending;
use crate::timestamp::now_ms;
use crate::wire::{Health, ProcessorPayment};

/// How often a processor marked failing is still tried, in milliseconds.
pub const PROBE_EVERY_MS: i64 = 200;

/// Longest wait for a processor's answer; past it the outcome is unknown (the processor may
/// still store the payment), so the same payment is sent again to the same processor with
/// the same `requestedAt`, and a 422 then settles it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// One of the two processors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProcessorName {
    /// The cheaper one.
    Default = 0,
    /// The contingency.
    Fallback = 1,
}

impl ProcessorName {
    /// Both, default first.
    pub const ALL: [ProcessorName; 2] = [ProcessorName::Default, ProcessorName::Fallback];

    /// `"default"` / `"fallback"`.
    ///
    /// # Examples
    ///
    /// ```
    /// use reactive_lock_demo::service::ProcessorName;
    /// assert_eq!(ProcessorName::Fallback.as_str(), "fallback");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessorName::Default => "default",
            ProcessorName::Fallback => "fallback",
        }
    }
}

/// What came of one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx, or 422: the processor holds the payment.
    Accepted,
    /// 5xx or 429: nothing stored; try again, maybe elsewhere.
    Failed,
    /// No answer (transport error, timeout): the processor may or may not hold it.
    Unknown,
    /// Another 4xx: the request itself is wrong; sending it again cannot help.
    Invalid(u16),
}

/// The `requestedAt` of an outbound call, as a request extension for the in-flight predicate.
#[derive(Clone, Copy, Debug)]
pub struct RequestedAt(pub i64);

/// Counts an outbound call on `http` when its `requestedAt` lies inside a summary window
/// this instance knows to be active.
#[derive(Clone)]
pub struct RequestedInWindow {
    pending: Arc<std::sync::Mutex<Pending>>,
}

impl CountRequest<Full<Bytes>> for RequestedInWindow {
    fn counts(&self, request: &http::Request<Full<Bytes>>) -> bool {
        let Some(RequestedAt(ms)) = request.extensions().get::<RequestedAt>().copied() else {
            return false;
        };
        Pending::lock(&self.pending).in_window(ms)
    }
}

struct ProcessorState {
    url: String,
    failing: AtomicBool,
    last_probe_ms: AtomicI64,
}

/// Both processors: their URLs, health marks, and the outbound client (with the in-flight
/// layer counting on `http`).
pub struct Processors {
    states: [ProcessorState; 2],
    client: InFlight<Client<HttpConnector, Full<Bytes>>, RequestedInWindow>,
    plain: Client<HttpConnector, Full<Bytes>>,
    recovered: tokio::sync::Notify,
}

impl Processors {
    /// The processors at `default_url` and `fallback_url`, counting calls on `http`.
    pub fn new(
        default_url: &str,
        fallback_url: &str,
        http: TrackerController,
        pending: Arc<std::sync::Mutex<Pending>>,
    ) -> Processors {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let plain = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let layer = InFlightLayer::new(http).with_predicate(RequestedInWindow { pending });
        let state = |url: &str| ProcessorState {
            url: url.trim_end_matches('/').to_owned(),
            failing: AtomicBool::new(false),
            last_probe_ms: AtomicI64::new(0),
        };
        Processors {
            states: [state(default_url), state(fallback_url)],
            client: layer.layer(plain.clone()),
            plain,
            recovered: tokio::sync::Notify::new(),
        }
    }

    /// The processor to send the next payment to, or `None` when both are failing and
    /// neither is due for a probe.
    pub fn choose(&self) -> Option<ProcessorName> {
        let now = now_ms();
        ProcessorName::ALL.into_iter().find(|&name| {
            let s = &self.states[name as usize];
            if !s.failing.load(Ordering::Relaxed) {
                return true;
            }
            let last = s.last_probe_ms.load(Ordering::Relaxed);
            now - last >= PROBE_EVERY_MS
                && s.last_probe_ms
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
        })
    }

    /// Waits until a processor marked failing is seen healthy again, or until the next
    /// probe is due: workers with nowhere to send park here instead of spinning.
    pub async fn wait_for_recovery(&self) {
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(PROBE_EVERY_MS as u64),
            self.recovered.notified(),
        )
        .await;
    }

    fn mark(&self, state: &ProcessorState, failing: bool) {
        let was_failing = state.failing.swap(failing, Ordering::Relaxed);
        if was_failing && !failing {
            self.recovered.notify_waiters();
        }
    }

    /// Sends `payment` to `name` and records what the answer says about its health.
    pub async fn send(
        &self,
        name: ProcessorName,
        payment: &ProcessorPayment,
        requested_at_ms: i64,
    ) -> Outcome {
        let state = &self.states[name as usize];
        let body = serde_json::to_vec(payment).expect("a payment always serializes");
        let mut request = http::Request::post(format!("{}/payments", state.url))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("a valid request");
        request
            .extensions_mut()
            .insert(RequestedAt(requested_at_ms));
        let call = async {
            let response = self.client.clone().oneshot(request).await.ok()?;
            let status = response.status();
            // Read to the end: the connection goes back to the pool and the in-flight count
            // ends with the body.
            response.into_body().collect().await.ok()?;
            Some(status)
        };
        let outcome = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Some(status))
                if status.is_success() || status == http::StatusCode::UNPROCESSABLE_ENTITY =>
            {
                Outcome::Accepted
            }
            Ok(Some(status))
                if status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS =>
            {
                Outcome::Failed
            }
            Ok(Some(status)) => Outcome::Invalid(status.as_u16()),
            Ok(None) | Err(_) => Outcome::Unknown,
        };
        match outcome {
            Outcome::Accepted => self.mark(state, false),
            Outcome::Failed | Outcome::Unknown => self.mark(state, true),
            Outcome::Invalid(_) => {}
        }
        outcome
    }

    /// Polls both health endpoints every 5 s for as long as the process runs.
    pub async fn watch_health(self: Arc<Self>) {
        let mut every = tokio::time::interval(crate::processor::HEALTH_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            for name in ProcessorName::ALL {
                let state = &self.states[name as usize];
                let request = http::Request::get(format!("{}/payments/service-health", state.url))
                    .body(Full::new(Bytes::new()))
                    .expect("a valid request");
                let answer = async {
                    let response = self.plain.request(request).await.ok()?;
                    if !response.status().is_success() {
                        return None;
                    }
                    let body = response.into_body().collect().await.ok()?.to_bytes();
                    serde_json::from_slice::<Health>(&body).ok()
                };
                if let Ok(Some(health)) = tokio::time::timeout(Duration::from_secs(2), answer).await
                {
                    self.mark(state, health.failing);
                }
            }
        }
    }
}
