//! The Rinha de Backend 2025 payment processor: what the payments service forwards to, with
//! the admin API the load test drives.
//!
//! * `POST /payments {correlationId, amount, requestedAt}`: waits the configured delay, then
//!   answers 500 (nothing stored) while failure is configured, 422 for a `correlationId`
//!   already stored, else stores it and answers 200.
//! * `GET /payments/service-health`: `{failing, minResponseTime}`, one call per 5 s (429 beyond,
//!   across all callers).
//! * `GET /payments/{id}`: a stored payment, 404 if none.
//! * `/admin/...` (header `X-Rinha-Token`, initially `123`): `GET payments-summary?from&to`
//!   (inclusive, on `requestedAt`), `PUT configurations/token` (204), `PUT
//!   configurations/delay` and `PUT configurations/failure` (200, as the Rinha's test script
//!   expects), `POST purge-payments` (200).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use bytes::Bytes;
use poison_free::Mutex;
use serde::Deserialize;
use serde_json::json;

use crate::money::{cents_from_decimal, decimal_from_cents};
use crate::timestamp::{Window, format_ms, parse_us};
use crate::wire::{AdminSummary, Health, ProcessorPayment};

/// The rate limit of `GET /payments/service-health`.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

mod poison_free {
    /// `std`'s mutex, poison ignored: a panicking request must not wedge the processor.
    pub struct Mutex<T>(std::sync::Mutex<T>);
    impl<T> Mutex<T> {
        pub fn new(value: T) -> Self {
            Mutex(std::sync::Mutex::new(value))
        }
        pub fn lock(&self) -> std::sync::MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
    }
}

struct Stored {
    amount_cents: i64,
    requested_at_ms: i64,
}

/// A processor's state: its payments, configuration and rate limit.
///
/// # Examples
///
/// ```
/// let processor = reactive_lock_demo::processor::Processor::new(0.05);
/// let _router = processor.router();
/// ```
pub struct Processor {
    fee: f64,
    payments: Mutex<HashMap<uuid::Uuid, Stored>>,
    delay_ms: AtomicU64,
    failure: AtomicBool,
    token: Mutex<String>,
    last_health: Mutex<Option<Instant>>,
}

impl Processor {
    /// A processor charging `fee` (a rate: 0.05 is 5 %) per payment.
    ///
    /// # Examples
    ///
    /// ```
    /// let _p = reactive_lock_demo::processor::Processor::new(0.15);
    /// ```
    pub fn new(fee: f64) -> Arc<Processor> {
        Arc::new(Processor {
            fee,
            payments: Mutex::new(HashMap::new()),
            delay_ms: AtomicU64::new(0),
            failure: AtomicBool::new(false),
            token: Mutex::new(String::from("123")),
            last_health: Mutex::new(None),
        })
    }

    /// The HTTP API.
    ///
    /// # Examples
    ///
    /// ```
    /// let router: axum::Router = reactive_lock_demo::processor::Processor::new(0.05).router();
    /// # let _ = router;
    /// ```
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/payments", post(pay))
            .route("/payments/service-health", get(health))
            .route("/payments/{id}", get(payment))
            .route("/admin/payments-summary", get(admin_summary))
            .route("/admin/configurations/token", put(set_token))
            .route("/admin/configurations/delay", put(set_delay))
            .route("/admin/configurations/failure", put(set_failure))
            .route("/admin/purge-payments", post(purge))
            .with_state(self.clone())
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let token = self.token.lock();
        headers
            .get("x-rinha-token")
            .is_some_and(|given| given.as_bytes() == token.as_bytes())
    }
}

fn message(status: StatusCode, text: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "message": text.into() }))).into_response()
}

fn unauthorized() -> Response {
    message(StatusCode::UNAUTHORIZED, "missing or wrong X-Rinha-Token")
}

async fn pay(State(p): State<Arc<Processor>>, body: Bytes) -> Response {
    let request: ProcessorPayment = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return message(StatusCode::BAD_REQUEST, format!("invalid payment: {e}")),
    };
    let Some(amount_cents) = cents_from_decimal(request.amount) else {
        return message(StatusCode::BAD_REQUEST, "invalid amount");
    };
    let requested_at_us = match parse_us(&request.requested_at) {
        Ok(us) => us,
        Err(e) => return message(StatusCode::BAD_REQUEST, e),
    };
    // Configuration is read when the payment arrives, as the Rinha's processor does: a stage
    // change does not alter payments already being processed.
    let delay = p.delay_ms.load(Ordering::Relaxed);
    let failure = p.failure.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if failure {
        return message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "payment processor failure",
        );
    }
    let mut payments = p.payments.lock();
    if payments.contains_key(&request.correlation_id) {
        return message(StatusCode::UNPROCESSABLE_ENTITY, "payment already exists");
    }
    payments.insert(
        request.correlation_id,
        Stored {
            amount_cents,
            requested_at_ms: requested_at_us.div_euclid(1000),
        },
    );
    message(StatusCode::OK, "payment processed successfully")
}

async fn health(State(p): State<Arc<Processor>>) -> Response {
    {
        let mut last = p.last_health.lock();
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < HEALTH_INTERVAL) {
            return message(StatusCode::TOO_MANY_REQUESTS, "one health check per 5 s");
        }
        *last = Some(now);
    }
    axum::Json(Health {
        failing: p.failure.load(Ordering::Relaxed),
        min_response_time: p.delay_ms.load(Ordering::Relaxed),
    })
    .into_response()
}

async fn payment(State(p): State<Arc<Processor>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<uuid::Uuid>() else {
        return message(StatusCode::BAD_REQUEST, "invalid id");
    };
    match p.payments.lock().get(&id) {
        Some(s) => axum::Json(json!({
            "correlationId": id,
            "amount": decimal_from_cents(s.amount_cents),
            "requestedAt": format_ms(s.requested_at_ms),
        }))
        .into_response(),
        None => message(StatusCode::NOT_FOUND, "payment not found"),
    }
}

/// The `from` / `to` query of both summaries.
#[derive(Debug, Default, Deserialize)]
pub struct WindowQuery {
    /// Inclusive lower bound, RFC 3339.
    pub from: Option<String>,
    /// Inclusive upper bound, RFC 3339.
    pub to: Option<String>,
}

impl WindowQuery {
    /// The query's bounds in microseconds.
    ///
    /// # Errors
    ///
    /// A message naming the bound that is not RFC 3339.
    ///
    /// # Examples
    ///
    /// ```
    /// use reactive_lock_demo::processor::WindowQuery;
    /// let q = WindowQuery { from: None, to: Some("1970-01-01T00:00:00.001Z".into()) };
    /// assert_eq!(q.bounds_us(), Ok((None, Some(1000))));
    /// ```
    pub fn bounds_us(&self) -> Result<(Option<i64>, Option<i64>), String> {
        let parse = |s: &Option<String>| {
            s.as_deref()
                .filter(|s| !s.is_empty())
                .map(parse_us)
                .transpose()
        };
        Ok((parse(&self.from)?, parse(&self.to)?))
    }
}

async fn admin_summary(
    State(p): State<Arc<Processor>>,
    headers: HeaderMap,
    Query(query): Query<WindowQuery>,
) -> Response {
    if !p.authorized(&headers) {
        return unauthorized();
    }
    let (from, to) = match query.bounds_us() {
        Ok(b) => b,
        Err(e) => return message(StatusCode::BAD_REQUEST, e),
    };
    let window = Window::from_us(from, to);
    let (count, cents) = p
        .payments
        .lock()
        .values()
        .filter(|s| window.contains(s.requested_at_ms))
        .fold((0u64, 0i64), |(n, sum), s| (n + 1, sum + s.amount_cents));
    let total_amount = decimal_from_cents(cents);
    axum::Json(AdminSummary {
        total_requests: count,
        total_amount,
        total_fee: total_amount * p.fee,
        fee_per_transaction: p.fee,
    })
    .into_response()
}

#[derive(Deserialize)]
struct TokenBody {
    token: String,
}

#[derive(Deserialize)]
struct DelayBody {
    delay: u64,
}

#[derive(Deserialize)]
struct FailureBody {
    failure: bool,
}

fn parse_body<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(message(
            StatusCode::BAD_REQUEST,
            format!("invalid body: {e}"),
        ))
    })
}

async fn set_token(State(p): State<Arc<Processor>>, headers: HeaderMap, body: Bytes) -> Response {
    if !p.authorized(&headers) {
        return unauthorized();
    }
    match parse_body::<TokenBody>(&body) {
        Ok(b) => {
            *p.token.lock() = b.token;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(r) => *r,
    }
}

async fn set_delay(State(p): State<Arc<Processor>>, headers: HeaderMap, body: Bytes) -> Response {
    if !p.authorized(&headers) {
        return unauthorized();
    }
    match parse_body::<DelayBody>(&body) {
        Ok(b) => {
            p.delay_ms.store(b.delay, Ordering::Relaxed);
            message(StatusCode::OK, format!("delay set to {} ms", b.delay))
        }
        Err(r) => *r,
    }
}

async fn set_failure(State(p): State<Arc<Processor>>, headers: HeaderMap, body: Bytes) -> Response {
    if !p.authorized(&headers) {
        return unauthorized();
    }
    match parse_body::<FailureBody>(&body) {
        Ok(b) => {
            p.failure.store(b.failure, Ordering::Relaxed);
            message(StatusCode::OK, format!("failure set to {}", b.failure))
        }
        Err(r) => *r,
    }
}

async fn purge(State(p): State<Arc<Processor>>, headers: HeaderMap) -> Response {
    if !p.authorized(&headers) {
        return unauthorized();
    }
    p.payments.lock().clear();
    message(StatusCode::OK, "All payments purged.")
}
