//! gRPC backend and hub, wire-compatible with the .NET ReactiveLockGrpc.
//!
//! The protocol (`proto/reactive_lock.proto`, compiled with protox: no `protoc` needed) has
//! no package, so paths are `/ReactiveLockGrpc/SetStatus` and
//! `/ReactiveLockGrpc/SubscribeLockStatus`, as in .NET.
//!
//! [`GrpcBackend`] talks to one or more hubs ([`server::Hub`], or the .NET sample). With
//! several hubs it does what .NET clients do: every status goes to every hub, and it
//! subscribes to each, merging their states per instance (newest `validUntil` wins), so one
//! hub dying loses nothing and blocks nobody: a publish resolves with the first hub that
//! accepts it; the other hubs get it in the background, their failures counted
//! ([`GrpcBackend::background_publish_failures`]) and retried with backoff until they take
//! the newest status.
//!
//! # Connections, failures and bounds
//!
//! * Per hub, one HTTP/2 connection carries `SetStatus` calls and reads; subscriptions (one
//!   never-ending stream per key) are spread over connections of at most
//!   [`streams_per_connection`](GrpcBackendBuilder::streams_per_connection) streams (default
//!   50), below a server's `max_concurrent_streams` (Kestrel's default is 100), so any number
//!   of keys works.
//! * HTTP/2 keep-alive pings every connection: a hub that hangs or is cut off is noticed
//!   within [`keep_alive_interval`](GrpcBackendBuilder::keep_alive_interval) +
//!   [`keep_alive_timeout`](GrpcBackendBuilder::keep_alive_timeout) (10 s by default), and
//!   the keys no other hub serves turn [`Status::Unknown`](reactive_lock::Status).
//! * Unknown is per key: a key whose streams to every hub are down turns Unknown
//!   ([`BackendEvent::KeyDisconnected`]) while other keys stay known; with every stream down
//!   the whole subscription is [`BackendEvent::Disconnected`]. A stream is retried with
//!   jittered backoff (50 ms doubling to 2 s, each delay plus a random part of up to
//!   itself, so clients that lost a hub together do not return in lockstep), reset only
//!   once a stream delivered its first message;
//!   opening one is bounded by the [response timeout](GrpcBackendBuilder::response_timeout).
//! * A status is stamped with a `validUntil` that grows with its sequence
//!   ([`InstanceStatus::seq`]); one whose sequence is below one already stamped for the key
//!   and instance is superseded and not sent, so hubs keep the latest.
//!
//! tonic needs tokio, so by default the backend
//! owns a small tokio runtime (one worker thread) and bridges to the caller's executor with
//! channels: the application may use tokio, smol, async-std or no runtime. A tokio
//! application can hand it its own runtime instead ([`GrpcBackendBuilder::runtime`]): no extra
//! thread, and no thread hand-off per call when the caller runs on that runtime.

#[cfg(feature = "grpc-server")]
#[cfg_attr(docsrs, doc(cfg(feature = "grpc-server")))]
pub mod server;

mod auth;
mod subscription;

use auth::AddToken;
#[cfg(feature = "grpc-server")]
pub(crate) use auth::TokenCheck;
use subscription::{merge, read_once};

/// The client's decoding of hub notifications, for the fuzz targets in `fuzz/` (feature
/// `fuzzing`). Not a public API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use super::proto::LockStatusNotification;
    use reactive_lock::Snapshot;

    /// The snapshot of `key` a client builds from each hub's latest notification (`None`
    /// for a hub that is down or has not answered).
    pub fn notifications_to_snapshot(
        key: &str,
        per_hub: &[Option<LockStatusNotification>],
    ) -> Snapshot {
        super::merge(key, per_hub)
    }
}

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_lite::Stream;
use parking_lot::Mutex;
use reactive_lock::{
    Backend, BackendError, BackendErrorKind, BackendEvent, InstanceStatus, Snapshot, StoreTime,
};
use tonic::transport::{Channel, Endpoint};

/// The generated protocol types and tonic stubs.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

use proto::reactive_lock_grpc_client::ReactiveLockGrpcClient;
use proto::{LockStatusNotification, LockStatusRequest};

pub(crate) fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// The longest validity written to the wire: a status published directly through the
/// [`Backend`] trait may carry any `valid_for` (a registry's is at most
/// [`MAX_DURATION`](reactive_lock::MAX_DURATION)), and a timestamp past this is as good as
/// never and nowhere near overflowing a `SystemTime` or the .NET `DateTime`.
const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Now plus `valid_for`, capped at a century.
pub(crate) fn valid_until(valid_for: Duration) -> SystemTime {
    let now = SystemTime::now();
    now.checked_add(valid_for.min(CENTURY)).unwrap_or(now)
}

pub(crate) fn system_time(t: &prost_types::Timestamp) -> SystemTime {
    if t.seconds < 0 {
        return UNIX_EPOCH;
    }
    // A peer's seconds can be anything up to `i64::MAX`, past what a `SystemTime` holds:
    // saturated at .NET's `DateTime.MaxValue` (9999-12-31T23:59:59Z), never a panic.
    UNIX_EPOCH
        .checked_add(Duration::new(
            t.seconds as u64,
            t.nanos.clamp(0, 999_999_999) as u32,
        ))
        .unwrap_or_else(|| UNIX_EPOCH + Duration::from_secs(DOTNET_MAX_SECONDS))
}

/// .NET's `DateTime.MaxValue` in Unix seconds.
const DOTNET_MAX_SECONDS: u64 = 253_402_300_799;

fn store_time(t: &prost_types::Timestamp) -> StoreTime {
    let d = system_time(t)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    StoreTime::from_unix_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Request metadata on `SubscribeLockStatus`: the hub sends the subscription no change made
/// by the instance named in the first message. An extension of the .NET protocol (whose
/// clients do not send it, and so still get every change): a reactive-lock instance knows
/// its own status, and each echo would cost a hub send, a decode and a wake-up per
/// transition. Hubs that do not know the header send echoes, which the client ignores.
///
/// # Examples
///
/// ```
/// assert_eq!(reactive_lock_backends::grpc::SKIP_OWN_HEADER, "x-reactive-lock-skip-own");
/// ```
pub const SKIP_OWN_HEADER: &str = "x-reactive-lock-skip-own";

/// One hub's answer, or its gRPC code and a message naming the hub.
type HubResult<T> = Result<T, (tonic::Code, String)>;

type Client =
    ReactiveLockGrpcClient<tonic::service::interceptor::InterceptedService<Channel, AddToken>>;

struct Hub {
    url: String,
    /// For `SetStatus` and reads: its streams are short, so they never hold the server's
    /// stream slots for long.
    client: Client,
    /// Where subscription channels connect: each carries at most `streams_per_connection`
    /// never-ending streams.
    endpoint: Endpoint,
}

struct Inner {
    hubs: Vec<Hub>,
    runtime: Runtime,
    response_timeout: Duration,
    streams_per_connection: usize,
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    /// Per (key, instance) the last status sequence stamped and its `validUntil`: kept
    /// strictly increasing in sequence order, so hubs, which order statuses by `validUntil`,
    /// keep the latest sequence.
    last_stamped: Mutex<HashMap<(String, String), (u64, SystemTime)>>,
    /// Statuses a hub failed to take while another acknowledged them, per (hub, key,
    /// instance): the newest, retried in the background until that hub takes it.
    retrying: Mutex<HashMap<(usize, String, String), LockStatusRequest>>,
    background_failures: std::sync::atomic::AtomicU64,
    reader_name: String,
}

/// The gRPC backend; see the [module docs](self).
///
/// # Examples
///
/// ```no_run
/// use reactive_lock::{ReactiveLock, TrackerConfig};
/// use reactive_lock_backends::grpc::GrpcBackend;
///
/// # futures_lite::future::block_on(async {
/// let backend = GrpcBackend::connect(["http://127.0.0.1:50051", "http://127.0.0.1:50052"]).await?;
/// let lock = ReactiveLock::builder()
///     .tracker("payments", TrackerConfig::new())
///     .build(backend)
///     .await?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # });
/// ```
#[derive(Clone)]
pub struct GrpcBackend {
    inner: Arc<Inner>,
}

/// Where the backend's tasks run: its own runtime, or the application's.
struct Runtime {
    handle: tokio::runtime::Handle,
    /// The backend's own runtime, if it has one. Dropped by shutting it down in the
    /// background: dropping a tokio runtime inside an application's own tokio context (the
    /// last backend handle dropped in a tokio task, or a failed connect) would panic.
    owned: Option<tokio::runtime::Runtime>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(runtime) = self.owned.take() {
            // Also safe from one of its own workers: the last handle may go with the
            // driver, which runs on this runtime (`spawn_driver`) and ends when its
            // registry is dropped.
            runtime.shutdown_background();
        }
    }
}

impl Inner {
    fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime.handle
    }
}

impl std::fmt::Debug for GrpcBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<&str> = self.inner.hubs.iter().map(|h| h.url.as_str()).collect();
        f.debug_struct("GrpcBackend")
            .field("hubs", &urls)
            .finish_non_exhaustive()
    }
}

/// Options of a [`GrpcBackend`]; see [`GrpcBackend::builder`].
///
/// # Examples
///
/// ```
/// use reactive_lock_backends::grpc::GrpcBackend;
/// let builder = GrpcBackend::builder(["http://127.0.0.1:50051"]).token("secret");
/// # let _ = builder;
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until connect() is awaited"]
pub struct GrpcBackendBuilder {
    urls: Vec<String>,
    runtime: Option<tokio::runtime::Handle>,
    token: Option<String>,
    tls_root_cert: Option<Vec<u8>>,
    connect_timeout: Duration,
    response_timeout: Duration,
    keep_alive_interval: Duration,
    keep_alive_timeout: Duration,
    streams_per_connection: usize,
}

impl GrpcBackendBuilder {
    /// Sends `authorization: Bearer <token>` with every call.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Trusts this root certificate (PEM) for `https://` hubs.
    pub fn tls_root_cert(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_cert = Some(pem.into());
        self
    }

    /// Runs the backend's connections and tasks on this tokio runtime (the application's)
    /// instead of a runtime of its own: no extra thread, and calls made from tasks on that
    /// runtime need no hand-off to another thread. Run the registry's driver there too
    /// ([`build_with_driver`](reactive_lock::ReactiveLockBuilder::build_with_driver) +
    /// `tokio::spawn`). Calls from other threads still work: they are handed to the runtime.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use reactive_lock_backends::grpc::GrpcBackend;
    /// let builder = GrpcBackend::builder(["http://127.0.0.1:50051"])
    ///     .runtime(tokio::runtime::Handle::current());
    /// # let _ = builder;
    /// # }
    /// ```
    pub fn runtime(mut self, handle: tokio::runtime::Handle) -> Self {
        self.runtime = Some(handle);
        self
    }

    /// How long connecting to a hub may take (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a call may wait for its answer (default 2 s); also bounds opening a
    /// subscription stream up to its first message.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Interval of the HTTP/2 keep-alive pings sent on every connection to a hub, also while
    /// idle (default 5 s). With [`keep_alive_timeout`](Self::keep_alive_timeout) it bounds
    /// how long a hub that hangs or is cut off goes unnoticed: the connection is closed
    /// after `keep_alive_interval + keep_alive_timeout` (10 s by default) of silence, and the
    /// keys it served turn [`Status::Unknown`](reactive_lock::Status) (unless another hub
    /// still serves them).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use reactive_lock_backends::grpc::GrpcBackend;
    /// let builder = GrpcBackend::builder(["http://127.0.0.1:50051"])
    ///     .keep_alive_interval(Duration::from_secs(2))
    ///     .keep_alive_timeout(Duration::from_secs(3));
    /// # let _ = builder;
    /// ```
    pub fn keep_alive_interval(mut self, interval: Duration) -> Self {
        self.keep_alive_interval = interval;
        self
    }

    /// How long a keep-alive ping may go unanswered before the connection counts as dead
    /// (default 5 s); see [`keep_alive_interval`](Self::keep_alive_interval).
    pub fn keep_alive_timeout(mut self, timeout: Duration) -> Self {
        self.keep_alive_timeout = timeout;
        self
    }

    /// Subscription streams per HTTP/2 connection to a hub (default 50, at least 1). A
    /// subscription holds one never-ending stream per key and hub; servers cap the streams
    /// of one connection (`max_concurrent_streams`: 100 by default in Kestrel, the .NET
    /// hub's server), so the keys are spread over as many connections as they need.
    /// `SetStatus` calls and reads go over one more connection per hub.
    pub fn streams_per_connection(mut self, streams: usize) -> Self {
        self.streams_per_connection = streams.max(1);
        self
    }

    /// Connects: at least one hub must answer; the others are retried in the background.
    ///
    /// # Errors
    ///
    /// [`BackendErrorKind::Rejected`] for no URL, an invalid URL or token, bad TLS
    /// material, or a duration outside
    /// [`MIN_DURATION`](reactive_lock::MIN_DURATION)`..=`[`MAX_DURATION`](reactive_lock::MAX_DURATION); [`BackendErrorKind::Unavailable`] when no hub can be reached. Messages name
    /// the hubs.
    ///
    /// # Cancel safety
    ///
    /// Dropping it before it resolves leaves nothing running.
    pub async fn connect(self) -> Result<GrpcBackend, BackendError> {
        if self.urls.is_empty() {
            return Err(rejected("no hub URL given".into()));
        }
        crate::check_durations(
            "gRPC",
            &[
                ("connect_timeout", self.connect_timeout),
                ("response_timeout", self.response_timeout),
                ("keep_alive_interval", self.keep_alive_interval),
                ("keep_alive_timeout", self.keep_alive_timeout),
            ],
        )?;
        let token = match &self.token {
            None => None,
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| rejected("the token is not valid ASCII header text".into()))?,
            ),
        };
        let runtime = Runtime::start(self.runtime.clone())?;
        let mut hubs = Vec::new();
        let mut reachable = 0;
        let mut failures = Vec::new();
        for url in &self.urls {
            let endpoint = self.endpoint(url)?;
            let probe = {
                let endpoint = endpoint.clone();
                runtime
                    .handle
                    .spawn(async move { endpoint.connect().await })
            };
            // An unreachable hub is retried in the background: a lazy channel, connected
            // on first use.
            let channel = match probe.await {
                Ok(Ok(channel)) => {
                    reachable += 1;
                    channel
                }
                Ok(Err(e)) => {
                    failures.push(format!("{url}: {e}"));
                    let _guard = runtime.handle.enter();
                    endpoint.connect_lazy()
                }
                Err(e) => return Err(rejected(format!("gRPC runtime failed: {e}"))),
            };
            let client = ReactiveLockGrpcClient::with_interceptor(channel, AddToken(token.clone()));
            hubs.push(Hub {
                url: url.clone(),
                client,
                endpoint,
            });
        }
        if reachable == 0 {
            return Err(BackendError::new(
                BackendErrorKind::Unavailable,
                format!("no gRPC hub reachable: {}", failures.join("; ")),
            ));
        }
        Ok(GrpcBackend {
            inner: Arc::new(Inner {
                hubs,
                runtime,
                response_timeout: self.response_timeout,
                streams_per_connection: self.streams_per_connection,
                token,
                last_stamped: Mutex::new(HashMap::new()),
                retrying: Mutex::new(HashMap::new()),
                background_failures: std::sync::atomic::AtomicU64::new(0),
                reader_name: format!("reactive-lock-reader-{:08x}", fastrand::u32(..)),
            }),
        })
    }

    /// The hub at `url` with the builder's timeouts, keep-alive and TLS.
    fn endpoint(&self, url: &str) -> Result<Endpoint, BackendError> {
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| rejected(format!("invalid hub URL `{url}`: {e}")))?
            .tcp_nodelay(true)
            // h2 (≥ 0.4.16) ends a connection with GOAWAY(ENHANCE_YOUR_CALM) after a budget of
            // small non-final DATA frames — every notification of a long-lived subscription
            // is one — and the automatic budget is half the connection window. A 1 GiB window
            // makes that millions of notifications per connection instead of ~17,000; the
            // stream windows, which bound buffering, stay default.
            .initial_connection_window_size(Some(1 << 30))
            .connect_timeout(self.connect_timeout)
            // Pings find a hung or cut-off hub, whose streams would otherwise stay silent (and
            // its keys look connected) for as long as the OS keeps the socket.
            .http2_keep_alive_interval(self.keep_alive_interval)
            .keep_alive_timeout(self.keep_alive_timeout)
            .keep_alive_while_idle(true)
            .timeout(self.response_timeout.max(Duration::from_secs(3600)));
        if let Some(pem) = &self.tls_root_cert {
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem.clone()));
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| rejected(format!("TLS for `{url}`: {e}")))?;
        }
        Ok(endpoint)
    }
}

/// A rejected option, named in `message`.
fn rejected(message: String) -> BackendError {
    BackendError::new(BackendErrorKind::Rejected, message)
}

impl Runtime {
    /// The application's runtime when given one, else a runtime of the backend's own (one
    /// worker thread, `reactive-lock-grpc`).
    fn start(given: Option<tokio::runtime::Handle>) -> Result<Runtime, BackendError> {
        if let Some(handle) = given {
            return Ok(Runtime {
                handle,
                owned: None,
            });
        }
        let owned = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("reactive-lock-grpc")
            .enable_all()
            .build()
            .map_err(|e| rejected(format!("cannot start the gRPC runtime thread: {e}")))?;
        Ok(Runtime {
            handle: owned.handle().clone(),
            owned: Some(owned),
        })
    }
}

impl GrpcBackend {
    /// Connects to the hubs at `urls` (`http://host:port`, `https://` for TLS) with default
    /// options; see [`GrpcBackendBuilder::connect`].
    ///
    /// # Errors
    ///
    /// As for [`GrpcBackendBuilder::connect`].
    ///
    /// # Cancel safety
    ///
    /// Dropping it before it resolves leaves nothing running.
    pub async fn connect<S: Into<String>>(
        urls: impl IntoIterator<Item = S>,
    ) -> Result<GrpcBackend, BackendError> {
        Self::builder(urls).connect().await
    }

    /// A builder for the options.
    pub fn builder<S: Into<String>>(urls: impl IntoIterator<Item = S>) -> GrpcBackendBuilder {
        GrpcBackendBuilder {
            urls: urls.into_iter().map(Into::into).collect(),
            runtime: None,
            token: None,
            tls_root_cert: None,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            keep_alive_interval: Duration::from_secs(5),
            keep_alive_timeout: Duration::from_secs(5),
            streams_per_connection: 50,
        }
    }

    /// How many `SetStatus` calls failed on one hub after another hub had acknowledged the
    /// status (those are retried in the background, with backoff, until that hub takes the
    /// newest status of the key and instance). For monitoring a hub that is down or slow.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # futures_lite::future::block_on(async {
    /// use reactive_lock_backends::grpc::GrpcBackend;
    /// let backend = GrpcBackend::connect(["http://127.0.0.1:50051"]).await?;
    /// assert_eq!(backend.background_publish_failures(), 0);
    /// # Ok::<(), reactive_lock::BackendError>(())
    /// # });
    /// ```
    pub fn background_publish_failures(&self) -> u64 {
        self.inner
            .background_failures
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `f` on the backend's tokio runtime and awaits it from any executor. A caller
    /// already on that runtime (the application's, [`GrpcBackendBuilder::runtime`]) runs it
    /// in place: a spawned task would only add a scheduling round and an allocation.
    async fn on_runtime<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, BackendError> {
        let runtime = self.inner.runtime();
        if tokio::runtime::Handle::try_current().is_ok_and(|current| current.id() == runtime.id()) {
            return Ok(f.await);
        }
        runtime.spawn(f).await.map_err(|e| {
            BackendError::new(
                BackendErrorKind::Other,
                format!("gRPC runtime task failed: {e}"),
            )
        })
    }

    /// Runs `call` against every hub concurrently on the backend's runtime, each attempt
    /// bounded by the response timeout; one result per hub, in hub order, errors naming the
    /// hub. With `retry_lost_connection`, a call whose connection went away under it (GOAWAY,
    /// reset) is tried once more: the channel re-establishes the connection.
    async fn on_every_hub<T, F, Fut>(
        &self,
        retry_lost_connection: bool,
        call: F,
    ) -> Result<Vec<HubResult<T>>, BackendError>
    where
        T: Send + 'static,
        F: Fn(Client) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = Result<T, tonic::Status>> + Send + 'static,
    {
        let timeout = self.inner.response_timeout;
        let calls: Vec<_> = self
            .inner
            .hubs
            .iter()
            .map(|hub| {
                call_hub(
                    hub.url.clone(),
                    hub.client.clone(),
                    timeout,
                    retry_lost_connection,
                    call.clone(),
                )
            })
            .collect();
        self.on_runtime(async move {
            if calls.len() == 1 {
                // One hub: no task of its own, one scheduling hop less per call.
                let mut out = Vec::with_capacity(1);
                for call in calls {
                    out.push(call.await);
                }
                return out;
            }
            let handles: Vec<_> = calls.into_iter().map(tokio::spawn).collect();
            let mut out = Vec::with_capacity(handles.len());
            for handle in handles {
                out.push(
                    handle
                        .await
                        .unwrap_or_else(|e| Err((tonic::Code::Internal, e.to_string()))),
                );
            }
            out
        })
        .await
    }

    /// The `validUntil` to send `status` with: later than any sent before for the key and
    /// instance, so hubs keep the latest. `None` when a higher sequence was already stamped:
    /// this status is superseded and must not reach a hub after the newer one (publish
    /// futures may be polled in any order).
    fn valid_until(
        &self,
        key: &str,
        instance: &str,
        status: &InstanceStatus,
    ) -> Option<SystemTime> {
        let mut last = self.inner.last_stamped.lock();
        let slot = last
            .entry((key.into(), instance.into()))
            .or_insert((0, UNIX_EPOCH));
        if status.seq < slot.0 {
            return None;
        }
        let next = valid_until(status.valid_for).max(slot.1 + Duration::from_micros(1));
        *slot = (status.seq, next);
        Some(next)
    }

    /// `SetStatus` on every hub; resolves with the first hub that accepts, so a hung or slow
    /// hub delays no transition. The other hubs' calls go on in the background; those that
    /// fail are counted and retried ([`retry_in_background`]).
    async fn set_status_everywhere(&self, request: LockStatusRequest) -> Result<(), BackendError> {
        let timeout = self.inner.response_timeout;
        let call = {
            let request = request.clone();
            move |mut client: Client| {
                let request = request.clone();
                async move { client.set_status(request).await.map(|_| ()) }
            }
        };
        if self.inner.hubs.len() == 1 {
            let hub = &self.inner.hubs[0];
            let call = call_hub(hub.url.clone(), hub.client.clone(), timeout, true, call);
            return match self.on_runtime(call).await? {
                Ok(()) => Ok(()),
                Err(error) => Err(failed_everywhere("SetStatus", &[error])),
            };
        }
        // One answer per hub, each sent once: with a slot per hub no send ever waits.
        let (results_tx, mut results) = tokio::sync::mpsc::channel(self.inner.hubs.len());
        let calls: Vec<_> = self
            .inner
            .hubs
            .iter()
            .enumerate()
            .map(|(index, hub)| {
                let call = call_hub(
                    hub.url.clone(),
                    hub.client.clone(),
                    timeout,
                    true,
                    call.clone(),
                );
                let results_tx = results_tx.clone();
                async move {
                    let _ = results_tx.try_send((index, call.await));
                }
            })
            .collect();
        drop(results_tx);
        let inner = Arc::downgrade(&self.inner);
        self.on_runtime(async move {
            for call in calls {
                tokio::spawn(call);
            }
            let mut errors = Vec::new();
            let mut acknowledged = false;
            while let Some((index, result)) = results.recv().await {
                match result {
                    Ok(()) => {
                        acknowledged = true;
                        break;
                    }
                    Err(error) => errors.push((index, error)),
                }
            }
            if !acknowledged {
                let errors: Vec<_> = errors.into_iter().map(|(_, e)| e).collect();
                return Err(failed_everywhere("SetStatus", &errors));
            }
            for (index, error) in errors {
                retry_in_background(&inner, index, &request, &error);
            }
            tokio::spawn(async move {
                while let Some((index, result)) = results.recv().await {
                    if let Err(error) = result {
                        retry_in_background(&inner, index, &request, &error);
                    }
                }
            });
            Ok(())
        })
        .await?
    }
}

/// One call on one hub, bounded by `timeout`, its error naming the hub. With
/// `retry_lost_connection`, a call whose connection went away under it (GOAWAY, reset) is
/// tried once more: the channel re-establishes the connection.
async fn call_hub<T, F, Fut>(
    url: String,
    client: Client,
    timeout: Duration,
    retry_lost_connection: bool,
    call: F,
) -> HubResult<T>
where
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match tokio::time::timeout(timeout, call(client.clone())).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(status))
                if retry_lost_connection && attempt == 1 && is_connection_error(&status) => {}
            Ok(Err(status)) => {
                return Err((status.code(), format!("{url}: {status}")));
            }
            Err(_) => {
                return Err((
                    tonic::Code::DeadlineExceeded,
                    format!("{url}: no answer within {timeout:?}"),
                ));
            }
        }
    }
}

/// Whether a hub refused a call for what it carried (retrying the same would fail again).
fn is_refusal(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::InvalidArgument
            | tonic::Code::ResourceExhausted
            | tonic::Code::OutOfRange
            | tonic::Code::Unauthenticated
            | tonic::Code::PermissionDenied
    )
}

/// Counts a hub's failed `SetStatus` (another hub acknowledged it) and, unless the hub
/// refused it, keeps re-sending the newest status of the key and instance to that hub with
/// backoff (100 ms doubling to 5 s) until it takes it. One retry task per (hub, key,
/// instance); it holds the backend weakly, so a dropped backend ends it.
fn retry_in_background(
    inner: &std::sync::Weak<Inner>,
    hub: usize,
    request: &LockStatusRequest,
    error: &(tonic::Code, String),
) {
    let Some(strong) = inner.upgrade() else {
        return;
    };
    strong
        .background_failures
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(
        key = request.lock_key,
        error = error.1,
        "reactive-lock: a hub missed a status another acknowledged; retrying it there"
    );
    if is_refusal(error.0) {
        return;
    }
    let slot = (hub, request.lock_key.clone(), request.instance_id.clone());
    {
        let mut retrying = strong.retrying.lock();
        let started = retrying.contains_key(&slot);
        let newer = retrying.get(&slot).is_none_or(|held| {
            held.valid_until.as_ref().map(system_time)
                <= request.valid_until.as_ref().map(system_time)
        });
        if newer {
            retrying.insert(slot.clone(), request.clone());
        }
        if started {
            return;
        }
    }
    let inner = inner.clone();
    drop(strong);
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(100);
        loop {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
            let Some(strong) = inner.upgrade() else {
                return;
            };
            let Some(request) = strong.retrying.lock().get(&slot).cloned() else {
                return;
            };
            let (url, client) = (
                strong.hubs[hub].url.clone(),
                strong.hubs[hub].client.clone(),
            );
            let timeout = strong.response_timeout;
            drop(strong);
            let sent = request.clone();
            let result = call_hub(url, client, timeout, true, move |mut client: Client| {
                let request = sent.clone();
                async move { client.set_status(request).await.map(|_| ()) }
            })
            .await;
            let Some(strong) = inner.upgrade() else {
                return;
            };
            match result {
                Ok(()) => {
                    let mut retrying = strong.retrying.lock();
                    if retrying.get(&slot) == Some(&request) {
                        retrying.remove(&slot);
                        return;
                    }
                    // A newer status queued meanwhile: send it next, without waiting long.
                    delay = Duration::from_millis(100);
                }
                Err(error) => {
                    strong
                        .background_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if is_refusal(error.0) {
                        strong.retrying.lock().remove(&slot);
                        return;
                    }
                }
            }
        }
    });
}

/// A transport failure under the call (the channel reconnects), not an answer of the hub.
fn is_connection_error(status: &tonic::Status) -> bool {
    let text = status.message();
    status.code() == tonic::Code::Unavailable
        || text.contains("GoAway")
        || text.contains("h2 protocol error")
}

/// The error for a call that failed on every hub: `Rejected` if every hub refused it (bad
/// input, a limit, authentication), else `Unavailable`.
fn failed_everywhere(what: &str, errors: &[(tonic::Code, String)]) -> BackendError {
    let refused = errors.iter().all(|(code, _)| is_refusal(*code));
    let kind = if refused {
        BackendErrorKind::Rejected
    } else {
        BackendErrorKind::Unavailable
    };
    let messages: Vec<&str> = errors.iter().map(|(_, m)| m.as_str()).collect();
    BackendError::new(
        kind,
        format!("{what} failed on every hub: {}", messages.join("; ")),
    )
}

impl Backend for GrpcBackend {
    type Events = Pin<Box<dyn Stream<Item = BackendEvent> + Send>>;

    /// On the backend's tokio runtime (its own, or the application's given to
    /// [`GrpcBackendBuilder::runtime`]), beside the channels and subscription streams.
    fn spawn_driver(&self, driver: reactive_lock::Driver) -> Option<reactive_lock::Driver> {
        drop(self.inner.runtime().spawn(driver));
        None
    }

    async fn publish(
        &self,
        key: &str,
        instance: &str,
        status: &InstanceStatus,
    ) -> Result<(), BackendError> {
        let Some(valid_until) = self.valid_until(key, instance, status) else {
            // A higher sequence is stamped already: this status is superseded (latest wins).
            return Ok(());
        };
        let request = LockStatusRequest {
            lock_key: key.into(),
            instance_id: instance.into(),
            is_busy: status.busy,
            lock_data: status.lock_data.clone(),
            valid_until: Some(timestamp(valid_until)),
        };
        self.set_status_everywhere(request).await
    }

    async fn snapshot(&self, key: &str) -> Result<Snapshot, BackendError> {
        let (key_owned, instance) = (key.to_string(), self.inner.reader_name.clone());
        let results = self
            .on_every_hub(false, move |client| {
                let (key, instance) = (key_owned.clone(), instance.clone());
                read_once(client, key, instance)
            })
            .await?;
        let per_hub: Vec<Option<LockStatusNotification>> =
            results.iter().map(|r| r.as_ref().ok().cloned()).collect();
        if per_hub.iter().all(Option::is_none) {
            let errors: Vec<(tonic::Code, String)> =
                results.into_iter().filter_map(Result::err).collect();
            return Err(failed_everywhere("reading the key", &errors));
        }
        Ok(merge(key, &per_hub))
    }

    async fn subscribe(
        &self,
        instance: &str,
        keys: &[String],
    ) -> Result<Self::Events, BackendError> {
        let hubs = self
            .inner
            .hubs
            .iter()
            .map(|h| (h.url.clone(), h.endpoint.clone()))
            .collect();
        let plan = subscription::Plan {
            hubs,
            keys: keys.to_vec(),
            // Subscribe under the instance's own name, as the .NET client does.
            instance: instance.to_string(),
            per_connection: self.inner.streams_per_connection,
            token: self.inner.token.clone(),
            open_timeout: self.inner.response_timeout,
        };
        Ok(Box::pin(subscription::Subscription::start(
            self.inner.runtime(),
            plan,
        )))
    }
}
