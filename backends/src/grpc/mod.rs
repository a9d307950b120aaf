//! gRPC backend and hub, wire-compatible with the .NET ReactiveLockGrpc.
//!
//! The protocol (`proto/reactive_lock.proto`, compiled with protox: no `protoc` needed) has
//! no package, so paths are `/ReactiveLockGrpc/SetStatus` and
//! `/ReactiveLockGrpc/SubscribeLockStatus`, as in .NET.
//!
//! [`GrpcBackend`] talks to one or more hubs ([`server::Hub`], or the .NET sample). With
//! several hubs it does what .NET clients do: every status goes to every hub, and it
//! subscribes to each, merging their states per instance (newest `validUntil` wins), so one
//! hub dying loses nothing and blocks nobody. tonic needs tokio, so by default the backend
//! owns a small tokio runtime (one worker thread) and bridges to the caller's executor with
//! channels: the application may use tokio, smol, async-std or no runtime. A tokio
//! application can hand it its own runtime instead ([`GrpcBackendBuilder::runtime`]): no extra
//! thread, and no thread hand-off per call when the caller runs on that runtime.

pub mod server;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_lite::{Stream, StreamExt};
use parking_lot::Mutex;
use reactive_lock::{
    Backend, BackendError, BackendErrorKind, BackendEvent, Entry, InstanceStatus, Snapshot,
    StoreTime,
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

pub(crate) fn system_time(t: &prost_types::Timestamp) -> SystemTime {
    if t.seconds < 0 {
        return UNIX_EPOCH;
    }
    UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos.clamp(0, 999_999_999) as u32)
}

fn store_time(t: &prost_types::Timestamp) -> StoreTime {
    let d = system_time(t)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    StoreTime::from_unix_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Checks `authorization: Bearer <token>` when a token is configured.
#[derive(Clone)]
pub(crate) struct TokenCheck {
    expected: Option<Arc<str>>,
}

impl TokenCheck {
    pub(crate) fn new(token: Option<String>) -> Self {
        TokenCheck {
            expected: token.map(|t| Arc::from(format!("Bearer {t}"))),
        }
    }
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        // Constant-time: the time a wrong token takes to refuse says nothing about how many
        // of its leading bytes were right (only its length may show).
        let given = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        match given {
            Some(given)
                if bool::from(subtle::ConstantTimeEq::ct_eq(given, expected.as_bytes())) =>
            {
                Ok(request)
            }
            _ => Err(tonic::Status::unauthenticated(
                "missing or wrong bearer token",
            )),
        }
    }
}

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone)]
struct AddToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for AddToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
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
    client: Client,
}

struct Inner {
    hubs: Vec<Hub>,
    runtime: Runtime,
    response_timeout: Duration,
    /// Last `validUntil` sent per (key, instance): kept strictly increasing, so hubs order
    /// statuses by it.
    last_valid_until: Mutex<HashMap<(String, String), SystemTime>>,
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

    /// How long a call may wait for its answer (default 2 s).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Connects: at least one hub must answer; the others are retried in the background.
    ///
    /// # Errors
    ///
    /// [`BackendErrorKind::Rejected`] for no URL, an invalid URL or token, or bad TLS
    /// material; [`BackendErrorKind::Unavailable`] when no hub can be reached. Messages name
    /// the hubs.
    ///
    /// # Cancel safety
    ///
    /// Dropping it before it resolves leaves nothing running.
    pub async fn connect(self) -> Result<GrpcBackend, BackendError> {
        let rejected = |m: String| BackendError::new(BackendErrorKind::Rejected, m);
        if self.urls.is_empty() {
            return Err(rejected("no hub URL given".into()));
        }
        let token = match &self.token {
            None => None,
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| rejected("the token is not valid ASCII header text".into()))?,
            ),
        };
        let runtime = match self.runtime.clone() {
            Some(handle) => Runtime {
                handle,
                owned: None,
            },
            None => {
                let owned = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("reactive-lock-grpc")
                    .enable_all()
                    .build()
                    .map_err(|e| rejected(format!("cannot start the gRPC runtime thread: {e}")))?;
                Runtime {
                    handle: owned.handle().clone(),
                    owned: Some(owned),
                }
            }
        };
        let mut hubs = Vec::new();
        let mut reachable = 0;
        let mut failures = Vec::new();
        for url in &self.urls {
            let mut endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| rejected(format!("invalid hub URL `{url}`: {e}")))?
                .tcp_nodelay(true)
                // h2 (≥ 0.4.16) ends a connection with GOAWAY(ENHANCE_YOUR_CALM) after a budget
                // of small non-final DATA frames — every notification of a long-lived
                // subscription is one — and the automatic budget is half the connection
                // window. A 1 GiB window makes that millions of notifications per connection
                // instead of ~17,000; the stream windows, which bound buffering, stay default.
                .initial_connection_window_size(Some(1 << 30))
                .connect_timeout(self.connect_timeout)
                .timeout(self.response_timeout.max(Duration::from_secs(3600)));
            if let Some(pem) = &self.tls_root_cert {
                let tls = tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(pem.clone()));
                endpoint = endpoint
                    .tls_config(tls)
                    .map_err(|e| rejected(format!("TLS for `{url}`: {e}")))?;
            }
            let probe = {
                let endpoint = endpoint.clone();
                runtime
                    .handle
                    .spawn(async move { endpoint.connect().await })
            };
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
                last_valid_until: Mutex::new(HashMap::new()),
                reader_name: format!("reactive-lock-reader-{:08x}", fastrand::u32(..)),
            }),
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
        }
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
                let (url, client, call) = (hub.url.clone(), hub.client.clone(), call.clone());
                async move {
                    let mut attempt = 0;
                    loop {
                        attempt += 1;
                        match tokio::time::timeout(timeout, call(client.clone())).await {
                            Ok(Ok(value)) => return Ok(value),
                            Ok(Err(status))
                                if retry_lost_connection
                                    && attempt == 1
                                    && is_connection_error(&status) => {}
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

    fn valid_until(&self, key: &str, instance: &str, valid_for: Duration) -> SystemTime {
        let mut last = self.inner.last_valid_until.lock();
        let slot = last
            .entry((key.into(), instance.into()))
            .or_insert(UNIX_EPOCH);
        let next = (SystemTime::now() + valid_for).max(*slot + Duration::from_micros(1));
        *slot = next;
        next
    }
}

/// Merges the hubs' states of one key per instance (newest `validUntil` wins).
fn merge(key: &str, per_hub: &[Option<LockStatusNotification>]) -> Snapshot {
    let mut merged: HashMap<&str, &proto::InstanceLockStatus> = HashMap::new();
    for notification in per_hub.iter().flatten() {
        for (instance, status) in &notification.instances_status {
            let newer = match merged.get(instance.as_str()) {
                None => true,
                Some(held) => {
                    held.valid_until.as_ref().map(store_time)
                        < status.valid_until.as_ref().map(store_time)
                }
            };
            if newer {
                merged.insert(instance, status);
            }
        }
    }
    let entries = merged
        .into_iter()
        .map(|(instance, status)| {
            let valid_until = status
                .valid_until
                .as_ref()
                .map(store_time)
                .unwrap_or(StoreTime::UNIX_EPOCH);
            // Empty lock data reads as none, as the .NET client reads it (`IsNullOrEmpty`).
            let data = status.lock_data.clone().filter(|data| !data.is_empty());
            Entry::new(instance, status.is_busy, data, valid_until)
                .with_seq(valid_until.as_unix_nanos())
        })
        .collect();
    Snapshot::new(key, entries, StoreTime::now_system())
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
    let refused = errors.iter().all(|(code, _)| {
        matches!(
            code,
            tonic::Code::InvalidArgument
                | tonic::Code::ResourceExhausted
                | tonic::Code::OutOfRange
                | tonic::Code::Unauthenticated
                | tonic::Code::PermissionDenied
        )
    });
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

/// Opens a subscription stream for `key` on one hub (first message: key and instance),
/// asking the hub not to send this instance's own changes back.
async fn open_stream(
    client: Client,
    key: String,
    instance: String,
) -> Result<HubStream, tonic::Status> {
    // The request stream stays open while the `HubStream` lives, so the hub keeps the
    // subscription; it ends when the `HubStream` is dropped.
    let (open, closed) = tokio::sync::oneshot::channel::<()>();
    let until_dropped = futures_lite::stream::once_future(async move {
        let _ = closed.await;
    })
    .filter_map(|()| None::<LockStatusRequest>);
    let requests = futures_lite::stream::once(first_message(key, instance)).chain(until_dropped);
    Ok(HubStream {
        messages: subscribe_with(client, requests).await?,
        _open: open,
    })
}

/// One hub's subscription stream for one key. Dropping it ends the request stream as well
/// as the response: with both halves gone the h2 stream closes (RST_STREAM) and the hub
/// drops the subscriber. A request stream left pending would keep the h2 stream, and the
/// hub's sending to it, alive after the response is gone.
struct HubStream {
    messages: tonic::Streaming<LockStatusNotification>,
    _open: tokio::sync::oneshot::Sender<()>,
}

/// Reads `key`'s current state from one hub: the first message of a subscription whose
/// request stream ends after naming the key, so that dropping the response once it is read
/// closes the h2 stream (see [`HubStream`]).
async fn read_once(
    client: Client,
    key: String,
    instance: String,
) -> Result<LockStatusNotification, tonic::Status> {
    let requests = futures_lite::stream::once(first_message(key, instance));
    let mut stream = subscribe_with(client, requests).await?;
    stream
        .message()
        .await?
        .ok_or_else(|| tonic::Status::unavailable("stream closed"))
}

fn first_message(key: String, instance: String) -> LockStatusRequest {
    LockStatusRequest {
        lock_key: key,
        instance_id: instance,
        is_busy: false,
        lock_data: None,
        valid_until: None,
    }
}

async fn subscribe_with(
    mut client: Client,
    requests: impl Stream<Item = LockStatusRequest> + Send + 'static,
) -> Result<tonic::Streaming<LockStatusNotification>, tonic::Status> {
    let mut request = tonic::Request::new(requests);
    request.metadata_mut().insert(
        SKIP_OWN_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    Ok(client.subscribe_lock_status(request).await?.into_inner())
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
        let request = LockStatusRequest {
            lock_key: key.into(),
            instance_id: instance.into(),
            is_busy: status.busy,
            lock_data: status.lock_data.clone(),
            valid_until: Some(timestamp(self.valid_until(key, instance, status.valid_for))),
        };
        let results = self
            .on_every_hub(true, move |mut client| {
                let request = request.clone();
                async move { client.set_status(request).await.map(|_| ()) }
            })
            .await?;
        if results.iter().any(Result::is_ok) {
            return Ok(());
        }
        let errors: Vec<(tonic::Code, String)> =
            results.into_iter().filter_map(Result::err).collect();
        Err(failed_everywhere("SetStatus", &errors))
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
        let (tx, rx) = async_channel::unbounded::<BackendEvent>();
        let hubs: Vec<(String, Client)> = self
            .inner
            .hubs
            .iter()
            .map(|h| (h.url.clone(), h.client.clone()))
            .collect();
        let keys = keys.to_vec();
        // Subscribe under the instance's own name, as the .NET client does.
        let instance = instance.to_string();
        let hub_count = hubs.len();
        // One stream per hub and key (a .NET-style hub reads only a stream's first message),
        // all feeding one merge task.
        let (updates_tx, mut updates_rx) = tokio::sync::mpsc::unbounded_channel::<(
            usize,
            String,
            Option<LockStatusNotification>,
        )>();
        let merge = self.inner.runtime().spawn(async move {
            // Dropped with this task (the subscriber's stream dropped: see `Subscription`),
            // the set aborts the per-key tasks, whose `HubStream`s then close.
            let mut tasks = tokio::task::JoinSet::new();
            for (hub_index, (url, client)) in hubs.into_iter().enumerate() {
                for key in &keys {
                    let (client, key, instance, url, updates) =
                        (client.clone(), key.clone(), instance.clone(), url.clone(), updates_tx.clone());
                    tasks.spawn(async move {
                        let mut delay = Duration::from_millis(50);
                        loop {
                            match open_stream(client.clone(), key.clone(), instance.clone()).await {
                                Ok(mut stream) => {
                                    delay = Duration::from_millis(50);
                                    while let Ok(Some(n)) = stream.messages.message().await {
                                        if updates.send((hub_index, key.clone(), Some(n))).is_err() {
                                            return;
                                        }
                                    }
                                    tracing::warn!(hub = %url, key, "reactive-lock: hub stream ended; reconnecting");
                                }
                                Err(status) => {
                                    tracing::debug!(hub = %url, key, %status, "reactive-lock: hub unreachable");
                                }
                            }
                            if updates.send((hub_index, key.clone(), None)).is_err() {
                                return;
                            }
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(2));
                        }
                    });
                }
            }
            drop(updates_tx);
            // Merge: per key, the latest state of every hub; per hub, whether it is up.
            let mut states: HashMap<String, Vec<Option<LockStatusNotification>>> = HashMap::new();
            let mut up: HashMap<(usize, String), bool> = HashMap::new();
            let mut connected = true;
            // Per key, the other instances' entries last sent: a notification that changed
            // only this instance's own entry (the echo of its publish) is not passed on.
            let mut last_sent: HashMap<String, Vec<Entry>> = HashMap::new();
            while let Some((hub, key, update)) = updates_rx.recv().await {
                let per_hub = states.entry(key.clone()).or_insert_with(|| vec![None; hub_count]);
                let was_up = up.get(&(hub, key.clone())).copied();
                match update {
                    Some(n) => {
                        per_hub[hub] = Some(n);
                        up.insert((hub, key.clone()), true);
                        if was_up == Some(false) && tx.send(BackendEvent::Reconnected).await.is_err() {
                            break;
                        }
                    }
                    None => {
                        // A hub that dropped out no longer speaks for anyone.
                        per_hub[hub] = None;
                        up.insert((hub, key.clone()), false);
                    }
                }
                let any_up = up.values().any(|&u| u);
                if connected && !any_up {
                    connected = false;
                    last_sent.clear();
                    if tx.send(BackendEvent::Disconnected).await.is_err() {
                        break;
                    }
                    continue;
                }
                connected = any_up;
                if per_hub.iter().any(Option::is_some) {
                    let snapshot = merge(&key, per_hub);
                    let mut others: Vec<Entry> = snapshot
                        .entries
                        .iter()
                        .filter(|e| e.instance != instance)
                        .cloned()
                        .collect();
                    others.sort_by(|a, b| a.instance.cmp(&b.instance));
                    if last_sent.get(&key) == Some(&others) {
                        continue;
                    }
                    last_sent.insert(key.clone(), others);
                    if tx.send(BackendEvent::Snapshot(snapshot)).await.is_err() {
                        break;
                    }
                }
            }
            drop(tasks);
        });
        Ok(Box::pin(Subscription {
            events: Box::pin(rx),
            merge: merge.abort_handle(),
        }))
    }
}

/// The event stream of [`GrpcBackend::subscribe`](Backend::subscribe). Dropping it (the
/// registry's driver ended: shutdown, or the registry dropped) aborts the merge task and with
/// it every hub stream, so the hubs stop sending — also while the backend itself lives on in
/// controller handles.
struct Subscription {
    /// Boxed: the receiver is `!Unpin`.
    events: Pin<Box<async_channel::Receiver<BackendEvent>>>,
    merge: tokio::task::AbortHandle,
}

impl Stream for Subscription {
    type Item = BackendEvent;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<BackendEvent>> {
        self.events.as_mut().poll_next(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.merge.abort();
    }
}
