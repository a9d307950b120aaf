//! The Rinha de Backend 2025 load test (`rinha-test/rinha.js`), as a program.
//!
//! * Payments: virtual users ramp linearly from 1 to `max_vus` over the run; each posts a
//!   payment of 19.90 with a fresh UUID to one of the service instances (user `i` to
//!   instance `i mod n`), then sleeps 1 s. A request counts as failed unless it answers
//!   200/201/202/204 within 1.5 s (the Rinha's client timeout).
//! * Stages: at 1/10/20/30/40/50 s of a 60 s run (scaled to the run's length) both
//!   processors' delay and failure are set: default 0/100/100/2000/20/0 ms, failing at 20 and
//!   30 s; fallback 0/0/0/1000/20/5000 ms, failing at 30 s.
//! * Consistency: at the start and every 10 s, each instance's `GET /payments-summary` over
//!   [now − 10 s, now − 100 ms] is compared with both processors' admin summaries; the
//!   inconsistency is the absolute difference in amount per processor, summed. The instances
//!   are asked first and the processors after: a summary waits for payments of its window
//!   still in flight, and the processors hold them once that wait is over. (rinha.js asks
//!   the processors first; a payment a processor is still delaying is then counted by a
//!   service that waits and not by the processor, whatever the service does.)
//! * At the end, like rinha.js's teardown, the whole run's totals: each instance's summary
//!   over the run against the processors', and against 19.90 × the payments accepted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use crate::money::{cents_from_decimal, decimal_from_cents};
use crate::timestamp::{format_ms, now_ms};
use crate::wire::{AdminSummary, Summary};

/// The Rinha's fixed amount, in cents.
pub const AMOUNT_CENTS: i64 = 1990;

/// The Rinha's client timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);

/// One stage of the processors' configuration: (second of a 60 s run, default delay ms,
/// default failing, fallback delay ms, fallback failing), as in rinha.js.
pub const STAGES: [(u64, u64, bool, u64, bool); 6] = [
    (1, 0, false, 0, false),
    (10, 100, false, 0, false),
    (20, 100, true, 0, false),
    (30, 2000, true, 1000, true),
    (40, 20, false, 20, false),
    (50, 0, false, 5000, false),
];

/// How to run the load.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// The service instances' base URLs.
    pub targets: Vec<String>,
    /// The default processor's base URL.
    pub processor_default: String,
    /// The fallback processor's base URL.
    pub processor_fallback: String,
    /// The processors' admin token.
    pub token: String,
    /// Virtual users at the end of the ramp.
    pub max_vus: usize,
    /// Length of the run (the stages scale with it).
    pub duration: Duration,
    /// Time between consistency checks.
    pub check_every: Duration,
    /// Timeout of one `GET /payments-summary`.
    pub summary_timeout: Duration,
    /// Show a progress bar on stderr (when it is a terminal).
    pub progress: bool,
}

/// One processor's share of the run.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ProcessorReport {
    /// Payments the service reports for it over the run.
    pub requests: u64,
    /// Their amount.
    pub amount: f64,
    /// The fee: its rate × the amount (as rinha.js computes it).
    pub fee: f64,
}

/// The run's results: printed as one JSON object.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Length of the run in seconds.
    pub duration_s: f64,
    /// Virtual users at the end of the ramp.
    pub max_vus: usize,
    /// Service instances loaded.
    pub instances: usize,
    /// `POST /payments` sent.
    pub payments_sent: u64,
    /// Answered 2xx in time.
    pub payments_accepted: u64,
    /// Not answered 2xx in time.
    pub payments_failed: u64,
    /// p50 of `POST /payments` (accepted ones), ms.
    pub post_payments_p50_ms: f64,
    /// p99 of `POST /payments` (accepted ones), ms.
    pub post_payments_p99_ms: f64,
    /// Slowest accepted `POST /payments`, ms.
    pub post_payments_max_ms: f64,
    /// p50 of `GET /payments-summary` during the run, ms.
    pub summary_p50_ms: f64,
    /// Slowest `GET /payments-summary` during the run, ms.
    pub summary_max_ms: f64,
    /// Instance summaries compared with the processors'.
    pub summaries_checked: u64,
    /// Summaries that did not answer 200 in time (not compared).
    pub summaries_failed: u64,
    /// Checks with a difference.
    pub inconsistent_checks: u64,
    /// Sum over checks of |service − processor| amount, per processor.
    pub inconsistency: f64,
    /// 19.90 × payments accepted.
    pub expected_amount: f64,
    /// What the first instance reports over the whole run.
    pub reported_amount: f64,
    /// `expected_amount − reported_amount`.
    pub total_difference: f64,
    /// The default processor's share.
    pub default: ProcessorReport,
    /// The fallback processor's share.
    pub fallback: ProcessorReport,
    /// Both fees.
    pub total_fee: f64,
}

impl Report {
    /// Whether the run was clean: no failed payment, every summary answered and consistent,
    /// nothing missing at the end.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut report = reactive_lock_demo::load::Report::default();
    /// assert!(report.is_clean());
    /// report.inconsistency = 19.9;
    /// assert!(!report.is_clean());
    /// ```
    pub fn is_clean(&self) -> bool {
        self.payments_failed == 0
            && self.summaries_failed == 0
            && self.inconsistent_checks == 0
            && self.inconsistency == 0.0
            && self.total_difference == 0.0
    }
}

struct Counters {
    sent: AtomicU64,
    accepted: AtomicU64,
    failed: AtomicU64,
    vus: AtomicUsize,
    latencies: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
    summary_latencies: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
    checks: std::sync::Mutex<Checks>,
}

#[derive(Default)]
struct Checks {
    checked: u64,
    failed: u64,
    inconsistent: u64,
    inconsistency_cents: i64,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Load {
    config: LoadConfig,
    client: HttpClient,
    counters: Counters,
}

async fn call(
    client: &HttpClient,
    request: http::Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<(http::StatusCode, Bytes), String> {
    let uri = request.uri().clone();
    let exchange = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{uri}: no answer within {} ms", timeout.as_millis()))?
        .map_err(|e| format!("{uri}: {e}"))
}

fn json_request(
    method: http::Method,
    url: String,
    token: Option<&str>,
    body: serde_json::Value,
) -> http::Request<Full<Bytes>> {
    let mut builder = http::Request::builder()
        .method(method)
        .uri(url)
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        builder = builder.header("x-rinha-token", token);
    }
    let body = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    builder.body(Full::new(body)).expect("a valid request")
}

impl Load {
    fn processors(&self) -> [&str; 2] {
        [
            &self.config.processor_default,
            &self.config.processor_fallback,
        ]
    }

    async fn admin(
        &self,
        processor: &str,
        method: http::Method,
        path: &str,
        body: serde_json::Value,
        want: &[u16],
    ) -> Result<Bytes, String> {
        let request = json_request(
            method,
            format!("{processor}{path}"),
            Some(&self.config.token),
            body,
        );
        let (status, body) = call(&self.client, request, Duration::from_secs(10)).await?;
        if !want.contains(&status.as_u16()) {
            return Err(format!("{processor}{path} answered {status}"));
        }
        Ok(body)
    }

    async fn set_stage(&self, default: (u64, bool), fallback: (u64, bool)) -> Result<(), String> {
        for (processor, (delay, failure)) in self.processors().into_iter().zip([default, fallback])
        {
            self.admin(
                processor,
                http::Method::PUT,
                "/admin/configurations/delay",
                serde_json::json!({ "delay": delay }),
                &[200, 204],
            )
            .await?;
            self.admin(
                processor,
                http::Method::PUT,
                "/admin/configurations/failure",
                serde_json::json!({ "failure": failure }),
                &[200, 204],
            )
            .await?;
        }
        Ok(())
    }

    async fn admin_summary(
        &self,
        processor: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<AdminSummary, String> {
        let path = format!(
            "/admin/payments-summary?from={}&to={}",
            format_ms(from_ms),
            format_ms(to_ms)
        );
        let body = self
            .admin(
                processor,
                http::Method::GET,
                &path,
                serde_json::Value::Null,
                &[200],
            )
            .await?;
        serde_json::from_slice(&body).map_err(|e| format!("{processor}{path}: invalid answer: {e}"))
    }

    async fn service_summary(
        &self,
        target: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Summary, String> {
        let url = format!(
            "{target}/payments-summary?from={}&to={}",
            format_ms(from_ms),
            format_ms(to_ms)
        );
        let request = json_request(
            http::Method::GET,
            url.clone(),
            None,
            serde_json::Value::Null,
        );
        let started = Instant::now();
        let (status, body) = call(&self.client, request, self.config.summary_timeout).await?;
        let micros = u64::try_from(started.elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let _ = self
            .counters
            .summary_latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(micros);
        if status != http::StatusCode::OK {
            return Err(format!(
                "{url} answered {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        serde_json::from_slice(&body).map_err(|e| format!("{url}: invalid answer: {e}"))
    }

    /// Compares every instance's summary of the window with the processors'. Returns the
    /// summaries (for the final report).
    async fn check(&self, from_ms: i64, to_ms: i64) -> Vec<Summary> {
        let mut summaries = Vec::new();
        for target in &self.config.targets {
            match self.service_summary(target, from_ms, to_ms).await {
                Ok(s) => summaries.push(s),
                Err(e) => {
                    tracing::error!(error = %e, "summary failed");
                    self.checks().failed += 1;
                }
            }
        }
        let admin = futures_join(
            self.admin_summary(self.processors()[0], from_ms, to_ms),
            self.admin_summary(self.processors()[1], from_ms, to_ms),
        )
        .await;
        let (default, fallback) = match admin {
            (Ok(d), Ok(f)) => (d, f),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "processor summary failed");
                self.checks().failed += summaries.len() as u64;
                return summaries;
            }
        };
        let cents = |amount: f64| cents_from_decimal(amount).unwrap_or(i64::MAX / 4);
        for s in &summaries {
            let difference = (cents(s.default.total_amount) - cents(default.total_amount)).abs()
                + (cents(s.fallback.total_amount) - cents(fallback.total_amount)).abs();
            let mut checks = self.checks();
            checks.checked += 1;
            if difference != 0 {
                checks.inconsistent += 1;
                checks.inconsistency_cents += difference;
                tracing::warn!(
                    from = %format_ms(from_ms), to = %format_ms(to_ms),
                    service = ?s, default = ?default, fallback = ?fallback,
                    "inconsistent summary"
                );
            }
        }
        summaries
    }

    fn checks(&self) -> std::sync::MutexGuard<'_, Checks> {
        self.counters
            .checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    async fn virtual_user(self: Arc<Self>, index: usize, end: Instant) {
        let target = &self.config.targets[index % self.config.targets.len()];
        while Instant::now() < end {
            let body = serde_json::json!({
                "correlationId": uuid::Uuid::new_v4(),
                "amount": decimal_from_cents(AMOUNT_CENTS),
            });
            let request =
                json_request(http::Method::POST, format!("{target}/payments"), None, body);
            self.counters.sent.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let answer = call(&self.client, request, REQUEST_TIMEOUT).await;
            let took = started.elapsed();
            match answer {
                Ok((status, _)) if [200, 201, 202, 204].contains(&status.as_u16()) => {
                    self.counters.accepted.fetch_add(1, Ordering::Relaxed);
                    let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
                    let _ = self
                        .counters
                        .latencies
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .record(micros);
                }
                _ => {
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn futures_join<A: std::future::Future, B: std::future::Future>(
    a: A,
    b: B,
) -> (A::Output, B::Output) {
    tokio::join!(a, b)
}

/// Runs the load and returns its report.
///
/// # Errors
///
/// A one-line message when the processors or instances cannot be set up (unreachable,
/// wrong token).
pub async fn run(config: LoadConfig) -> Result<Report, String> {
    if config.targets.is_empty() {
        return Err("no service instance to load".into());
    }
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let load = Arc::new(Load {
        counters: Counters {
            sent: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            vus: AtomicUsize::new(0),
            latencies: std::sync::Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            ),
            summary_latencies: std::sync::Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            ),
            checks: Default::default(),
        },
        client,
        config,
    });

    // Setup, as rinha.js's: empty processors and service, known token, no delay or failure.
    for processor in load.processors() {
        load.admin(
            processor,
            http::Method::POST,
            "/admin/purge-payments",
            serde_json::Value::Null,
            &[200],
        )
        .await?;
    }
    let purge = json_request(
        http::Method::POST,
        format!("{}/purge-payments", load.config.targets[0]),
        None,
        serde_json::Value::Null,
    );
    let (status, _) = call(&load.client, purge, Duration::from_secs(10)).await?;
    if !status.is_success() {
        return Err(format!(
            "{}/purge-payments answered {status}",
            load.config.targets[0]
        ));
    }
    load.set_stage((0, false), (0, false)).await?;

    let duration = load.config.duration;
    let started = Instant::now();
    let started_ms = now_ms();
    let end = started + duration;
    let scale = duration.as_secs_f64() / 60.0;

    let stages = {
        let load = load.clone();
        tokio::spawn(async move {
            for (second, dd, df, fd, ff) in STAGES {
                tokio::time::sleep_until(
                    (started + Duration::from_secs_f64(second as f64 * scale)).into(),
                )
                .await;
                if let Err(e) = load.set_stage((dd, df), (fd, ff)).await {
                    tracing::error!(error = %e, "setting a stage failed");
                }
            }
        })
    };
    let checker = {
        let load = load.clone();
        tokio::spawn(async move {
            let mut next = started;
            while next < end {
                tokio::time::sleep_until(next.into()).await;
                let now = now_ms();
                load.check(now - 10_000, now - 100).await;
                next += load.config.check_every;
            }
        })
    };
    let progress = progress_bar(&load, duration);
    let done = Arc::new(AtomicBool::new(false));
    let ticker = progress.clone().map(|bar| {
        let load = load.clone();
        let done = done.clone();
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let (checked, failed, inconsistency_cents) = {
                    let checks = load.checks();
                    (checks.checked, checks.failed, checks.inconsistency_cents)
                };
                bar.set_position(started.elapsed().as_millis().min(duration.as_millis()) as u64);
                bar.set_message(format!(
                    "VUs {:>4}  sent {:>6}  failed {:>4}  summaries {:>3} (failed {})  inconsistency {:.2}",
                    load.counters.vus.load(Ordering::Relaxed),
                    load.counters.sent.load(Ordering::Relaxed),
                    load.counters.failed.load(Ordering::Relaxed),
                    checked,
                    failed,
                    decimal_from_cents(inconsistency_cents),
                ));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    });

    // The ramp: 1 user at the start, `max_vus` at the end, linearly (k6's ramping-vus).
    let mut users = Vec::new();
    loop {
        let elapsed = started.elapsed();
        if elapsed >= duration {
            break;
        }
        let target = 1
            + ((load.config.max_vus.saturating_sub(1)) as f64 * elapsed.as_secs_f64()
                / duration.as_secs_f64()) as usize;
        while users.len() < target {
            users.push(tokio::spawn(load.clone().virtual_user(users.len(), end)));
            load.counters.vus.store(users.len(), Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for user in users {
        let _ = user.await;
    }
    let _ = stages.await;
    let _ = checker.await;

    // The whole run, as rinha.js's teardown reads it.
    let to = now_ms();
    let from = started_ms - 10_000;
    let summaries = load.check(from, to).await;
    let fees = futures_join(
        load.admin_summary(load.processors()[0], from, to),
        load.admin_summary(load.processors()[1], from, to),
    )
    .await;
    done.store(true, Ordering::Relaxed);
    if let Some(ticker) = ticker {
        let _ = ticker.await;
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }

    let latencies = load
        .counters
        .latencies
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let summary_latencies = load
        .counters
        .summary_latencies
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let checks = load.checks();
    let accepted = load.counters.accepted.load(Ordering::Relaxed);
    let reported = summaries.first().copied().unwrap_or_default();
    let rate = |r: &Result<AdminSummary, String>| r.as_ref().map_or(0.0, |s| s.fee_per_transaction);
    let share = |totals: crate::wire::Totals, rate: f64| ProcessorReport {
        requests: totals.total_requests,
        amount: totals.total_amount,
        fee: round_cents(totals.total_amount * rate),
    };
    let default = share(reported.default, rate(&fees.0));
    let fallback = share(reported.fallback, rate(&fees.1));
    let expected_cents = accepted as i64 * AMOUNT_CENTS;
    let reported_cents = cents_from_decimal(reported.default.total_amount).unwrap_or(0)
        + cents_from_decimal(reported.fallback.total_amount).unwrap_or(0);
    let ms = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
    Ok(Report {
        duration_s: duration.as_secs_f64(),
        max_vus: load.config.max_vus,
        instances: load.config.targets.len(),
        payments_sent: load.counters.sent.load(Ordering::Relaxed),
        payments_accepted: accepted,
        payments_failed: load.counters.failed.load(Ordering::Relaxed),
        post_payments_p50_ms: ms(0.5),
        post_payments_p99_ms: ms(0.99),
        post_payments_max_ms: latencies.max() as f64 / 1000.0,
        summary_p50_ms: summary_latencies.value_at_quantile(0.5) as f64 / 1000.0,
        summary_max_ms: summary_latencies.max() as f64 / 1000.0,
        summaries_checked: checks.checked,
        summaries_failed: checks.failed,
        inconsistent_checks: checks.inconsistent,
        inconsistency: decimal_from_cents(checks.inconsistency_cents),
        expected_amount: decimal_from_cents(expected_cents),
        reported_amount: decimal_from_cents(reported_cents),
        total_difference: decimal_from_cents(expected_cents - reported_cents),
        total_fee: round_cents(default.fee + fallback.fee),
        default,
        fallback,
    })
}

fn round_cents(amount: f64) -> f64 {
    (amount * 100.0).round() / 100.0
}

fn progress_bar(load: &Load, duration: Duration) -> Option<indicatif::ProgressBar> {
    if !load.config.progress {
        return None;
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(duration.as_millis() as u64),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    Some(bar)
}
