//! The payments service: the Rinha de Backend 2025 API on axum, several instances sharing a
//! store and agreeing through reactive-lock on when a summary may read it.
//!
//! * `POST /payments {"correlationId", "amount"}` → 202 at once; a worker forwards the payment
//!   to a processor ([`processors`]) and buffers it for the store ([`pipeline`]).
//! * `GET /payments-summary?from&to` → totals per processor by `requestedAt` ([`summary`]).
//! * `POST /purge-payments` → empties the store.
//!
//! Backends and stores: `redis` (locks and payments in one Redis), `grpc` (locks through
//! `reactive-lock hub`, payments in Redis: a payments service needs a store anyway), `local`
//! (one process, locks and payments in memory: for trying the API, not for two instances).

pub mod pipeline;
pub mod processors;
pub mod store;
pub mod summary;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use reactive_lock::{ReactiveLock, TrackerConfig, TrackerController, TrackerState};

pub use processors::ProcessorName;

use crate::money::cents_from_decimal;
use crate::wire::PaymentRequest;
use pipeline::{Pending, Queued};
use store::Store;
use summary::keys;

/// Which reactive-lock backend the instances share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockBackend {
    /// In-process: a single instance.
    Local,
    /// Redis at this URL (also the payment store).
    Redis(String),
    /// `reactive-lock hub`s at these URLs; payments in the Redis at `store_url`.
    Grpc {
        /// The hubs.
        hubs: Vec<String>,
        /// The payment store.
        store_url: String,
    },
}

/// How to run an instance.
#[derive(Clone, Debug)]
pub struct Config {
    /// Instance name, unique among the instances.
    pub instance: String,
    /// Lock backend (and store).
    pub backend: LockBackend,
    /// The default processor's base URL.
    pub processor_default: String,
    /// The fallback processor's base URL.
    pub processor_fallback: String,
    /// Workers forwarding payments.
    pub workers: usize,
    /// The longest a summary waits for payments in flight before answering 503.
    pub summary_wait: Duration,
    /// Answer summaries from the store without waiting: the control that shows what the
    /// lock prevents.
    pub no_lock: bool,
}

/// One running instance's shared state.
pub struct Service {
    /// Its configuration.
    pub config: Config,
    /// The registry (kept for a clean shutdown).
    pub lock: ReactiveLock,
    /// `payments`.
    pub payments: TrackerController,
    /// `http`.
    pub http: TrackerController,
    /// `payments-summary`.
    pub summary: TrackerController,
    /// `summary-seen`.
    pub seen: TrackerController,
    /// `payments`' aggregate state.
    pub payments_state: TrackerState,
    /// `http`'s aggregate state.
    pub http_state: TrackerState,
    /// `payments-summary`'s aggregate state.
    pub summary_state: TrackerState,
    /// `instances`' aggregate state.
    pub instances_state: TrackerState,
    /// `summary-seen`'s aggregate state.
    pub seen_state: TrackerState,
    /// Where payments are persisted.
    pub store: Store,
    /// The processors and the outbound client.
    pub processors: Arc<processors::Processors>,
    /// Buffer and active windows.
    pub pending: Arc<std::sync::Mutex<Pending>>,
    /// Calls being handled.
    pub calls: pipeline::Calls,
    /// Next call id.
    pub next_call: AtomicU64,
    /// Next summary window id.
    pub next_window: AtomicU64,
    /// One flush at a time.
    pub flush_gate: tokio::sync::Mutex<()>,
    /// One summary at a time on this instance.
    pub summary_gate: tokio::sync::Mutex<()>,
    /// The buffer reached [`pipeline::BATCH_SIZE`].
    pub batch_full: tokio::sync::Notify,
    /// `payments-summary` turned blocked (its `on_blocked` handler).
    pub summary_blocked: Arc<tokio::sync::Notify>,
    queue: async_channel::Sender<Queued>,
}

impl Service {
    /// Connects the lock and the store and starts the workers, the batcher, the summary
    /// watcher and the health poller on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// A one-line message when a backend, the store or the configuration is unusable.
    pub async fn start(config: Config) -> Result<Arc<Service>, String> {
        let summary_blocked = Arc::new(tokio::sync::Notify::new());
        let notify = summary_blocked.clone();
        let builder = ReactiveLock::builder()
            .instance_name(config.instance.clone())
            .tracker(keys::PAYMENTS, TrackerConfig::new().busy_threshold(1))
            .tracker(keys::HTTP, TrackerConfig::new().busy_threshold(1))
            .tracker(
                keys::SUMMARY,
                TrackerConfig::new()
                    .busy_threshold(1)
                    .on_blocked(move || notify.notify_one()),
            )
            .tracker(keys::INSTANCES, TrackerConfig::new().busy_threshold(1))
            .tracker(keys::SEEN, TrackerConfig::new().busy_threshold(1));
        let (lock, store) = match &config.backend {
            LockBackend::Local => {
                let lock = builder
                    .build(reactive_lock::LocalBackend::new())
                    .await
                    .map_err(|e| format!("cannot start the lock: {e}"))?;
                (lock, Store::memory())
            }
            LockBackend::Redis(url) => {
                let backend = reactive_lock_backends::redis::RedisBackend::connect(url)
                    .await
                    .map_err(|e| format!("cannot connect the lock to Redis at {url}: {e}"))?;
                let lock = builder
                    .build(backend)
                    .await
                    .map_err(|e| format!("cannot start the lock: {e}"))?;
                (lock, Store::redis(url).await?)
            }
            LockBackend::Grpc { hubs, store_url } => {
                let backend =
                    reactive_lock_backends::grpc::GrpcBackend::builder(hubs.iter().cloned())
                        .runtime(tokio::runtime::Handle::current())
                        .connect()
                        .await
                        .map_err(|e| {
                            format!(
                                "cannot connect the lock to the hub at {}: {e}",
                                hubs.join(", ")
                            )
                        })?;
                let lock = builder
                    .build(backend)
                    .await
                    .map_err(|e| format!("cannot start the lock: {e}"))?;
                (lock, Store::redis(store_url).await?)
            }
        };
        let tracker = |key: &str| lock.controller(key).expect("configured above");
        let state = |key: &str| lock.state(key).expect("configured above");
        let pending = Arc::new(std::sync::Mutex::new(Pending::default()));
        let http = tracker(keys::HTTP);
        let processors = Arc::new(processors::Processors::new(
            &config.processor_default,
            &config.processor_fallback,
            http.clone(),
            pending.clone(),
        ));
        let (queue, queued) = async_channel::unbounded();
        let service = Arc::new(Service {
            payments: tracker(keys::PAYMENTS),
            http,
            summary: tracker(keys::SUMMARY),
            seen: tracker(keys::SEEN),
            payments_state: state(keys::PAYMENTS),
            http_state: state(keys::HTTP),
            summary_state: state(keys::SUMMARY),
            instances_state: state(keys::INSTANCES),
            seen_state: state(keys::SEEN),
            store,
            processors: processors.clone(),
            pending,
            calls: Default::default(),
            next_call: AtomicU64::new(0),
            next_window: AtomicU64::new(0),
            flush_gate: Default::default(),
            summary_gate: Default::default(),
            batch_full: Default::default(),
            summary_blocked,
            queue,
            config,
            lock,
        });
        // Present for the process's whole life: summaries wait for this instance's
        // acknowledgements from now on.
        let presence = tracker_of(&service.lock, keys::INSTANCES);
        presence
            .increment(Some(&service.config.instance))
            .await
            .map_err(|e| format!("cannot announce the instance: {e}"))?;
        for _ in 0..service.config.workers.max(1) {
            tokio::spawn(pipeline::worker(service.clone(), queued.clone()));
        }
        tokio::spawn(pipeline::batcher(service.clone()));
        tokio::spawn(summary::watch(service.clone()));
        tokio::spawn(processors.watch_health());
        Ok(service)
    }

    /// The HTTP API.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/payments", post(accept))
            .route("/payments-summary", get(summary::payments_summary))
            .route("/purge-payments", post(purge))
            .with_state(self.clone())
    }

    /// Persists what is buffered and leaves the lock cleanly (idle everywhere).
    pub async fn shutdown(&self) {
        pipeline::flush(self).await;
        self.lock.shutdown().await;
    }
}

fn tracker_of(lock: &ReactiveLock, key: &str) -> TrackerController {
    lock.controller(key).expect("configured at start")
}

fn bad_request(text: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(serde_json::json!({ "message": text.into() })),
    )
        .into_response()
}

async fn accept(State(service): State<Arc<Service>>, body: Bytes) -> Response {
    let request: PaymentRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("invalid payment: {e}")),
    };
    let Some(amount_cents) = cents_from_decimal(request.amount) else {
        return bad_request(
            "invalid amount: want a non-negative decimal with at most two decimals",
        );
    };
    if service
        .queue
        .try_send(Queued {
            correlation_id: request.correlation_id,
            amount_cents,
        })
        .is_err()
    {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    StatusCode::ACCEPTED.into_response()
}

async fn purge(State(service): State<Arc<Service>>) -> Response {
    let dropped = std::mem::take(&mut Pending::lock(&service.pending).buffer);
    let counted = dropped.iter().filter(|(_, counted)| *counted).count();
    if counted > 0 {
        drop(service.payments.decrement(counted));
    }
    match service.store.purge().await {
        Ok(()) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({ "message": "All payments purged." })),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "message": e })),
        )
            .into_response(),
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
