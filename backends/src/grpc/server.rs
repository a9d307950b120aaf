//! The hub: a `ReactiveLockGrpc` service that keeps, per key, the latest status of each
//! instance and broadcasts the key's full state to its subscribers on every change.
//!
//! * statuses are ordered per instance by `validUntil`, within limits that keep a far
//!   validity from wedging a key (see [the ordering rule](HubLimits#the-ordering-rule));
//! * busy entries expire on the hub's clock: at the earliest `validUntil` the hub marks them
//!   idle and broadcasts, so subscribers unblock with no new message;
//! * a new subscriber gets the current state at once; a subscriber that stops reading is
//!   dropped (bounded buffer, and [`HubLimits::stall_timeout`] for a notification left
//!   unread on a quiet key) without disturbing the others, its stream ended with
//!   `RESOURCE_EXHAUSTED` (an error, so a .NET client, which resubscribes only after an
//!   error, resubscribes and reads the current state);
//! * a key's full state stays sendable: a status that would make the key's notification
//!   larger than [`HubLimits::max_notification_size`] is refused with `RESOURCE_EXHAUSTED`;
//! * on shutdown ([`Hub::serve`]'s `shutdown` future, or [`Hub::end_subscriptions`] for an
//!   embedded hub) every subscription ends with `UNAVAILABLE`, so clients move to another
//!   hub and the server's graceful shutdown does not wait for streams that never end;
//! * HTTP/2 keep-alive pings find dead or hung clients, whose subscriptions are then
//!   dropped; a subscription that never sends its first message is ended after
//!   [`HubLimits::first_message_timeout`] (`DEADLINE_EXCEEDED`);
//! * a subscription opened with the [`SKIP_OWN_HEADER`](super::SKIP_OWN_HEADER) metadata
//!   is not sent the changes its own instance made (reactive-lock clients ask for this:
//!   they know their own status; .NET clients do not send it and get every change);
//! * limits (message size, keys, instances per key, lock-data length) answer with a gRPC
//!   status naming the limit; streams per client connection are capped
//!   ([`HubLimits::max_streams_per_connection`]).
//!
//! Run it standalone (`reactive-lock hub --listen 127.0.0.1:50051`) or embed
//! [`Hub::service`] in an application's own tonic server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_lite::{Stream, StreamExt};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::proto::reactive_lock_grpc_server::{ReactiveLockGrpc, ReactiveLockGrpcServer};
use super::proto::{InstanceLockStatus, LockStatusNotification, LockStatusRequest};
use super::system_time;

/// Limits and timeouts of a [`Hub`].
///
/// # The size of a key
///
/// Every change of a key sends its subscribers the key's full state: one
/// `LockStatusNotification` holding an entry per instance. An entry costs its instance
/// name, its lock data and about 30 bytes of framing (map entry, flag, `validUntil`
/// timestamp, `StringValue` wrapper). The hub keeps that notification within
/// `max_notification_size` (1 MiB by default, the usual gRPC message limit of receivers,
/// .NET's included) by refusing the status that would push it over. With the defaults that
/// admits 1,000 instances (`max_instances_per_key`) of up to ~1 KiB of lock data each, or
/// about 63 instances that all carry the full 16 KiB (`max_lock_data_len`):
/// 63 × (16,384 + ~40) ≈ 1,035,000 bytes < 1,048,576.
///
/// # The ordering rule
///
/// Statuses of one instance may arrive out of order (calls in flight side by side, a retry
/// overtaken by a newer status), so the hub orders them by their `validUntil`, which
/// reactive-lock clients make strictly increasing: a status whose `validUntil` is earlier
/// than the one held for its instance is taken as an older message and dropped. That
/// order trusts the sender's clock and its validity, so two limits keep it from wedging a
/// key:
///
/// * **validity is capped on the hub's clock**: a `validUntil` later than the hub's now +
///   [`max_validity`](Self::max_validity) (a client clock ahead, a long expiration, a
///   hostile peer's year 10000) is stored as now + `max_validity`. A busy instance renews
///   its status, so the cap shortens nothing for a live client whose renewal period is below
///   `max_validity`; a busy status without a `validUntil` is refused (`INVALID_ARGUMENT`),
///   as it could block for good;
/// * **order holds only while messages can be in flight**: a status earlier than the held
///   one is dropped only if the held one arrived less than
///   [`reorder_window`](Self::reorder_window) ago; later, it cannot be an older message
///   still in transit, so it is the instance's newest word (its clock stepped back, or its
///   validity was shortened) and replaces the held one — an idle status then releases the
///   key.
///
/// A status that replaces one dated later is stored valid 1 µs after the one it replaces, so
/// the order readers keep (an instance's later `validUntil` is its newer status: long-lived
/// subscribers, read-throughs and merges across hubs all keep it) is the order the hub took
/// them in; such a status may stay valid as long as the one it replaced, which
/// `max_validity` bounds. Statuses are ordered against the `validUntil` their sender gave,
/// not the stored one.
///
/// The limits of the rule: a status delayed in transit longer than `reorder_window` is
/// applied although it is older — a stale idle status reads the instance idle, and a stale
/// busy one blocks the key, until the instance's next status or renewal (a renewal period,
/// 5 s by default); and within `reorder_window` after a clock step back, the stepped
/// client's statuses are still dropped (the next renewal after the window gets through).
///
/// # Examples
///
/// ```
/// let limits = reactive_lock_backends::grpc::server::HubLimits::default();
/// assert_eq!(limits.max_keys, 10_000);
/// assert_eq!(limits.max_validity, std::time::Duration::from_secs(300));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubLimits {
    /// Largest accepted gRPC message, bytes (default 64 KiB).
    pub max_message_size: usize,
    /// Keys the hub holds at most (default 10,000).
    pub max_keys: usize,
    /// Instances per key at most (default 1,000).
    pub max_instances_per_key: usize,
    /// Longest lock data, bytes (default 16 KiB).
    pub max_lock_data_len: usize,
    /// Notifications buffered per subscriber before it counts as stalled and is dropped
    /// (default 64).
    pub subscriber_buffer: usize,
    /// Largest encoded notification of one key (its full state), bytes (default 1 MiB);
    /// see [the size of a key](HubLimits#the-size-of-a-key). Also the hub's encoding limit.
    pub max_notification_size: usize,
    /// How long a subscription may take to send its first message (key and instance)
    /// before the hub ends it with `DEADLINE_EXCEEDED` (default 10 s).
    pub first_message_timeout: Duration,
    /// Interval of the HTTP/2 keep-alive pings the hub sends each client connection
    /// (default 10 s; [`serve`](Hub::serve) only).
    pub keep_alive_interval: Duration,
    /// How long a ping may go unanswered before the hub closes the connection and drops its
    /// subscriptions (default 20 s; [`serve`](Hub::serve) only).
    pub keep_alive_timeout: Duration,
    /// How long a key with no subscriber and no entry still valid stays after its last
    /// status or subscription before the hub forgets it (default 60 s), so that
    /// [`max_keys`](Self::max_keys) bounds the keys in use, not every key ever seen. A
    /// forgotten key reads as it did (no instance busy). Keys are forgotten when the limit is
    /// reached and, while [serving](Hub::serve), every such period. Likewise the idle entry
    /// of an instance not heard from for this long (gone for good: a live one renews) is
    /// forgotten, every such period and when
    /// [`max_instances_per_key`](Self::max_instances_per_key) is reached, so instances
    /// coming and going under new names do not fill the key.
    pub forget_idle_keys_after: Duration,
    /// Longest validity the hub stores, on its own clock (default 5 min): a later
    /// `validUntil` is capped to now + this; see [the ordering rule](HubLimits#the-ordering-rule).
    /// Keep it above the clients' renewal period (5 s by default), or their busy entries
    /// expire between renewals.
    pub max_validity: Duration,
    /// How long after a status arrives a status of the same instance with an earlier
    /// `validUntil` is still taken as an older message and dropped (default 2 s); see
    /// [the ordering rule](HubLimits#the-ordering-rule).
    pub reorder_window: Duration,
    /// Concurrent HTTP/2 streams per client connection (default 100, Kestrel's default;
    /// [`serve`](Hub::serve) only). A client opening more waits for a slot; reactive-lock
    /// clients spread their subscriptions over connections below this.
    pub max_streams_per_connection: u32,
    /// How long a subscriber may leave a notification unread before it counts as stalled
    /// and is dropped (default 30 s), also when fewer than
    /// [`subscriber_buffer`](Self::subscriber_buffer) notifications wait: a peer that
    /// never reads is dropped in bounded time on a quiet key too. Checked every second
    /// while [serving](Hub::serve), and on every change of the key.
    pub stall_timeout: Duration,
}

impl Default for HubLimits {
    fn default() -> Self {
        HubLimits {
            max_message_size: 64 * 1024,
            max_keys: 10_000,
            max_instances_per_key: 1_000,
            max_lock_data_len: 16 * 1024,
            subscriber_buffer: 64,
            max_notification_size: 1024 * 1024,
            first_message_timeout: Duration::from_secs(10),
            keep_alive_interval: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(20),
            forget_idle_keys_after: Duration::from_secs(60),
            max_validity: Duration::from_secs(300),
            reorder_window: Duration::from_secs(2),
            max_streams_per_connection: 100,
            stall_timeout: Duration::from_secs(30),
        }
    }
}

type Notifications = mpsc::Sender<LockStatusNotification>;

struct KeyState {
    entries: HashMap<String, InstanceLockStatus>,
    /// Per instance, when its held status arrived and whether its `validUntil` was capped
    /// (see [the ordering rule](HubLimits#the-ordering-rule)).
    arrivals: HashMap<String, Arrival>,
    subscribers: Vec<Subscriber>,
    expiry: Option<tokio::task::JoinHandle<()>>,
    /// The last status or subscription (see [`HubLimits::forget_idle_keys_after`]).
    touched: std::time::Instant,
}

impl KeyState {
    fn new() -> Self {
        KeyState {
            entries: HashMap::new(),
            arrivals: HashMap::new(),
            subscribers: Vec::new(),
            expiry: None,
            touched: std::time::Instant::now(),
        }
    }

    /// Forgets the idle entries of instances not heard from for `grace` (instances gone for
    /// good: a live one renews its status every few seconds), so that instances coming and
    /// going under new names (restarts, autoscaling) neither fill
    /// [`max_instances_per_key`](HubLimits::max_instances_per_key) nor grow every
    /// notification. Only an entry whose validity has also passed: a reader may still hold
    /// it, and orders the instance's next status against its `validUntil`, which that next
    /// status (dated at least its own now) then exceeds. An idle entry blocks nobody, so no
    /// reader's answer changes; by then no older message of the instance can still be in
    /// transit. Returns how many.
    fn forget_departed(&mut self, grace: Duration) -> usize {
        let before = self.entries.len();
        let arrivals = &mut self.arrivals;
        let now = SystemTime::now();
        self.entries.retain(|instance, entry| {
            let departed = !entry.is_busy
                && entry
                    .valid_until
                    .as_ref()
                    .is_none_or(|until| system_time(until) + grace <= now)
                && arrivals
                    .get(instance)
                    .is_none_or(|arrival| arrival.at.elapsed() >= grace);
            if departed {
                arrivals.remove(instance);
            }
            !departed
        });
        before - self.entries.len()
    }

    /// Whether the hub may forget the key: untouched for `grace`, nobody subscribed, and no
    /// entry valid any more — so a delayed older status, whose validity cannot outlast the
    /// entry that superseded it, arrives already expired and blocks nobody.
    fn forgettable(&mut self, now: SystemTime, grace: Duration) -> bool {
        self.subscribers
            .retain(|subscriber| !subscriber.tx.is_closed());
        self.subscribers.is_empty()
            && self.touched.elapsed() >= grace
            && self.entries.values().all(|entry| {
                entry
                    .valid_until
                    .as_ref()
                    .is_none_or(|until| system_time(until) <= now)
            })
    }
}

/// When an instance's held status arrived, and the `validUntil` its sender gave it (what a
/// later message of the same sender is ordered against).
#[derive(Clone)]
struct Arrival {
    at: std::time::Instant,
    sent: Option<prost_types::Timestamp>,
}

struct Subscriber {
    id: u64,
    /// Notifications handed to its buffer.
    sent: u64,
    /// Notifications its stream took from the buffer (counted by the stream).
    taken: Arc<std::sync::atomic::AtomicU64>,
    /// `taken` at the last look, and since when nothing was taken while some notification
    /// waited (`None`: nothing waited at the last look).
    taken_seen: u64,
    unread_since: Option<std::time::Instant>,
    /// The instance that subscribed, when it asked not to be sent its own changes.
    skip_own: Option<String>,
    tx: Notifications,
    /// Ends the stream with this status ahead of anything still buffered.
    end: tokio::sync::oneshot::Sender<Status>,
}

impl Subscriber {
    fn end(self, status: Status) {
        let _ = self.end.send(status);
    }

    /// Whether a notification has waited unread for `timeout` with nothing taken since:
    /// a stream that takes anything restarts the clock, so a slow reader is not a stalled
    /// one.
    fn stalled(&mut self, now: std::time::Instant, timeout: Duration) -> bool {
        let taken = self.taken.load(std::sync::atomic::Ordering::Relaxed);
        if taken >= self.sent {
            self.unread_since = None;
            return false;
        }
        if taken != self.taken_seen || self.unread_since.is_none() {
            self.taken_seen = taken;
            self.unread_since = Some(now);
            return false;
        }
        self.unread_since
            .is_some_and(|since| now.saturating_duration_since(since) >= timeout)
    }

    fn end_stalled(self, key: &str, limit: &'static str, detail: String) {
        rejected(limit);
        tracing::warn!(
            key,
            subscriber = self.id,
            limit,
            "reactive-lock hub: subscriber stalled; dropped"
        );
        self.end(Status::resource_exhausted(format!(
            "subscriber stalled: {detail} of key `{key}`; resubscribe to read the current state"
        )));
    }
}

/// A subscription's response stream: the buffered notifications, unless the hub ended it
/// with an error status first (stalled subscriber, shutdown).
struct SubscriptionStream {
    notifications: mpsc::Receiver<LockStatusNotification>,
    end: Option<tokio::sync::oneshot::Receiver<Status>>,
    done: bool,
    /// Keeps the task reading the request half alive; dropped when the response ends.
    reading: Option<tokio::sync::oneshot::Sender<()>>,
    /// Notifications taken, for the hub's stall check ([`HubLimits::stall_timeout`]).
    taken: Arc<std::sync::atomic::AtomicU64>,
}

impl Stream for SubscriptionStream {
    type Item = Result<LockStatusNotification, Status>;

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(end) = &mut this.end {
            match Pin::new(end).poll(cx) {
                Poll::Ready(Ok(status)) => {
                    this.done = true;
                    this.reading = None;
                    this.notifications.close();
                    return Poll::Ready(Some(Err(status)));
                }
                // Dropped without a status: the subscriber went away; nothing to end.
                Poll::Ready(Err(_)) => this.end = None,
                Poll::Pending => {}
            }
        }
        let next = this.notifications.poll_recv(cx);
        if let std::task::Poll::Ready(Some(_)) = &next {
            this.taken
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        next.map(|n| n.map(Ok))
    }
}

struct HubInner {
    keys: Mutex<HashMap<String, KeyState>>,
    limits: HubLimits,
    next_subscriber: std::sync::atomic::AtomicU64,
    /// Set by [`Hub::end_subscriptions`]: new subscriptions are refused.
    closing: std::sync::atomic::AtomicBool,
}

/// Counts a request or subscriber the hub refused, by the limit that refused it.
fn rejected(limit: &'static str) {
    metrics::counter!("reactive_lock_hub_rejections_total", "limit" => limit).increment(1);
}

/// How long a shutting-down hub waits for open streams (beyond the subscriptions, which it
/// ends itself) before it closes their connections.
const DRAIN: Duration = Duration::from_secs(5);

/// The hub's TLS identity: a PEM certificate chain and its PEM private key (as read from
/// the files `reactive-lock hub --tls-cert F --tls-key F` takes).
///
/// # Examples
///
/// ```
/// use reactive_lock_backends::grpc::server::HubTls;
/// let tls = HubTls::from_pem(b"-----BEGIN CERTIFICATE-----...".to_vec(), b"...".to_vec());
/// # let _ = tls;
/// ```
#[derive(Clone)]
pub struct HubTls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl HubTls {
    /// The identity from a PEM certificate chain and a PEM private key; checked when the
    /// hub starts serving.
    pub fn from_pem(cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        HubTls {
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
        }
    }
}

impl std::fmt::Debug for HubTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("HubTls")
            .field("cert_pem_len", &self.cert_pem.len())
            .finish_non_exhaustive()
    }
}

/// The hub's state and service. Cheap to clone.
///
/// # Examples
///
/// ```no_run
/// use reactive_lock_backends::grpc::server::Hub;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// // Standalone:
/// Hub::default().serve("127.0.0.1:50051".parse()?, None, None, std::future::pending()).await?;
/// // Or embedded in an application's own tonic server:
/// let service = Hub::default().service();
/// tonic::transport::Server::builder().add_service(service);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new(HubLimits::default())
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub with these limits.
    pub fn new(limits: HubLimits) -> Self {
        Hub {
            inner: Arc::new(HubInner {
                keys: Mutex::new(HashMap::new()),
                limits,
                next_subscriber: std::sync::atomic::AtomicU64::new(0),
                closing: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// How many subscription streams the hub is sending `key`'s changes to (0 for a key it
    /// does not hold). For monitoring, and for tests of clients that must not leave
    /// subscriptions behind.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = reactive_lock_backends::grpc::server::Hub::default();
    /// assert_eq!(hub.subscriber_count("payments"), 0);
    /// ```
    pub fn subscriber_count(&self, key: &str) -> usize {
        self.inner.keys.lock().get(key).map_or(0, |state| {
            state
                .subscribers
                .iter()
                .filter(|subscriber| !subscriber.tx.is_closed())
                .count()
        })
    }

    /// The tonic service, to add to a `tonic::transport::Server` (limits applied).
    pub fn service(&self) -> ReactiveLockGrpcServer<Hub> {
        ReactiveLockGrpcServer::new(self.clone())
            .max_decoding_message_size(self.inner.limits.max_message_size)
            .max_encoding_message_size(self.inner.limits.max_notification_size)
    }

    /// Ends every subscription with `UNAVAILABLE` and refuses new ones, so clients move to
    /// another hub. [`serve`](Self::serve) calls it when its `shutdown` future resolves; a
    /// hub embedded in an application's own tonic server calls it before that server's
    /// graceful shutdown, which otherwise waits for subscription streams that never end.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = reactive_lock_backends::grpc::server::Hub::default();
    /// hub.end_subscriptions();
    /// assert_eq!(hub.subscriber_count("payments"), 0);
    /// ```
    pub fn end_subscriptions(&self) {
        self.inner
            .closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut keys = self.inner.keys.lock();
        for state in keys.values_mut() {
            for subscriber in state.subscribers.drain(..) {
                subscriber.end(Status::unavailable("the hub is shutting down"));
            }
        }
    }

    /// Serves on `addr` until `shutdown` resolves: TCP_NODELAY on, HTTP/2 keep-alive
    /// ([`HubLimits::keep_alive_interval`]), optional TLS ([`HubTls`]) and bearer `token`. On `shutdown` it ends every subscription with `UNAVAILABLE`
    /// ([`end_subscriptions`](Self::end_subscriptions)), lets calls in flight finish and
    /// returns.
    ///
    /// # Errors
    ///
    /// When the address cannot be bound or the TLS material is invalid.
    pub async fn serve(
        &self,
        addr: SocketAddr,
        tls: Option<HubTls>,
        token: Option<String>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        self.serve_listener(listener, tls, token, shutdown).await
    }

    /// [`serve`](Self::serve) on an already bound listener (e.g. port 0 in tests).
    ///
    /// # Errors
    ///
    /// When the TLS material is invalid or the server fails.
    pub async fn serve_listener(
        &self,
        listener: tokio::net::TcpListener,
        tls: Option<HubTls>,
        token: Option<String>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let limits = self.inner.limits;
        let mut builder = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(limits.keep_alive_interval))
            .http2_keepalive_timeout(Some(limits.keep_alive_timeout))
            .max_concurrent_streams(limits.max_streams_per_connection);
        if let Some(HubTls { cert_pem, key_pem }) = tls {
            let identity = tonic::transport::Identity::from_pem(cert_pem, key_pem);
            builder =
                builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
        }
        // TCP_NODELAY on every accepted socket: `Server::tcp_nodelay` only applies to sockets
        // the server accepts itself, and without it each streamed notification can wait for
        // the peer's delayed ACK (~40 ms).
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
            accepted.and_then(|stream| {
                stream.set_nodelay(true)?;
                Ok(stream)
            })
        });
        let check = super::TokenCheck::new(token);
        let service = tonic::service::interceptor::InterceptedService::new(self.service(), check);
        // `grpc.health.v1.Health`, without the token (load balancers and orchestrators ask):
        // SERVING for the overall server and for `ReactiveLockGrpc` while the hub accepts work.
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<ReactiveLockGrpcServer<Hub>>().await;
        let hub = self.clone();
        let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            shutdown.await;
            let _ = stopping.send(());
            health
                .set_not_serving::<ReactiveLockGrpcServer<Hub>>()
                .await;
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            // Graceful shutdown waits for every open stream; subscriptions end only here.
            hub.end_subscriptions();
        };
        // Idle keys go also without pressure on max_keys, so memory follows the keys in use.
        let sweeper = {
            let hub = self.clone();
            let period = limits.forget_idle_keys_after.max(Duration::from_secs(1));
            tokio::spawn(async move {
                let mut every = tokio::time::interval(period);
                loop {
                    every.tick().await;
                    hub.forget_idle_keys_now();
                }
            })
        };
        // The gauges, sampled every second: the hub's maps are not watched per change.
        let gauges = {
            let hub = self.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(1));
                loop {
                    every.tick().await;
                    hub.end_stalled_subscribers();
                    let (keys, subscribers) = {
                        let keys = hub.inner.keys.lock();
                        let subscribers: usize = keys.values().map(|k| k.subscribers.len()).sum();
                        (keys.len(), subscribers)
                    };
                    metrics::gauge!("reactive_lock_hub_keys").set(keys as f64);
                    metrics::gauge!("reactive_lock_hub_subscribers").set(subscribers as f64);
                }
            })
        };
        let serving = builder
            .add_service(health_service)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, shutdown);
        // Graceful shutdown waits for every open stream to end; one a client keeps open (a
        // health watch) must not keep the process: after DRAIN the rest are cut.
        let drained = async {
            if stopped.await.is_ok() {
                tokio::time::sleep(DRAIN).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let served = tokio::select! {
            served = serving => served,
            () = drained => {
                tracing::warn!("reactive-lock hub: streams still open {DRAIN:?} after shutdown; closing them");
                Ok(())
            }
        };
        sweeper.abort();
        gauges.abort();
        served?;
        Ok(())
    }

    /// Ends the subscriptions that left a notification unread for
    /// [`stall_timeout`](HubLimits::stall_timeout), on every key: a peer that never reads
    /// is dropped also while its key is quiet.
    fn end_stalled_subscribers(&self) {
        let timeout = self.inner.limits.stall_timeout;
        let now = std::time::Instant::now();
        let mut keys = self.inner.keys.lock();
        for (key, state) in keys.iter_mut() {
            for mut subscriber in std::mem::take(&mut state.subscribers) {
                if subscriber.tx.is_closed() {
                    continue;
                }
                if subscriber.stalled(now, timeout) {
                    subscriber.end_stalled(
                        key,
                        "stall_timeout",
                        format!("notifications unread for the hub's stall_timeout ({timeout:?})"),
                    );
                } else {
                    state.subscribers.push(subscriber);
                }
            }
        }
    }

    /// Forgets the keys nobody uses any more (see [`HubLimits::forget_idle_keys_after`]);
    /// returns how many.
    fn forget_idle_keys(&self, keys: &mut HashMap<String, KeyState>) -> usize {
        let (now, grace) = (SystemTime::now(), self.inner.limits.forget_idle_keys_after);
        let before = keys.len();
        keys.retain(|_, state| {
            state.forget_departed(grace);
            let forget = state.forgettable(now, grace);
            if forget && let Some(task) = state.expiry.take() {
                task.abort();
            }
            !forget
        });
        let forgotten = before - keys.len();
        if forgotten > 0 {
            tracing::debug!(
                forgotten,
                held = keys.len(),
                "reactive-lock hub: idle keys forgotten"
            );
        }
        forgotten
    }

    /// How many keys the hub holds (in use, or idle for less than
    /// [`forget_idle_keys_after`](HubLimits::forget_idle_keys_after)).
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(reactive_lock_backends::grpc::server::Hub::default().key_count(), 0);
    /// ```
    pub fn key_count(&self) -> usize {
        self.inner.keys.lock().len()
    }

    /// Forgets the keys nobody uses any more now, as the hub does by itself when
    /// [`max_keys`](HubLimits::max_keys) is reached and, while serving, every
    /// [`forget_idle_keys_after`](HubLimits::forget_idle_keys_after). Returns how many.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(reactive_lock_backends::grpc::server::Hub::default().forget_idle_keys_now(), 0);
    /// ```
    pub fn forget_idle_keys_now(&self) -> usize {
        let mut keys = self.inner.keys.lock();
        self.forget_idle_keys(&mut keys)
    }

    /// Applies one status update, after checking it against the limits.
    fn set(&self, request: LockStatusRequest) -> Result<(), Status> {
        let limits = self.inner.limits;
        require_names(&request)?;
        if let Some(data) = &request.lock_data
            && data.len() > limits.max_lock_data_len
        {
            rejected("max_lock_data_len");
            return Err(Status::invalid_argument(format!(
                "lockData of {} bytes exceeds the hub's max_lock_data_len ({})",
                data.len(),
                limits.max_lock_data_len
            )));
        }
        let mut keys = self.inner.keys.lock();
        if !keys.contains_key(&request.lock_key) && keys.len() >= limits.max_keys {
            self.forget_idle_keys(&mut keys);
        }
        if !keys.contains_key(&request.lock_key) && keys.len() >= limits.max_keys {
            rejected("max_keys");
            return Err(Status::resource_exhausted(format!(
                "the hub holds max_keys ({}) keys",
                limits.max_keys
            )));
        }
        let state = keys
            .entry(request.lock_key.clone())
            .or_insert_with(KeyState::new);
        state.touched = std::time::Instant::now();
        if !state.entries.contains_key(&request.instance_id)
            && state.entries.len() >= limits.max_instances_per_key
            && state.forget_departed(limits.forget_idle_keys_after) == 0
        {
            rejected("max_instances_per_key");
            return Err(Status::resource_exhausted(format!(
                "key `{}` holds max_instances_per_key ({}) instances",
                request.lock_key, limits.max_instances_per_key
            )));
        }
        if request.is_busy && request.valid_until.is_none() {
            rejected("valid_until");
            return Err(Status::invalid_argument(format!(
                "key `{}`: a busy status needs a validUntil (it would never expire)",
                request.lock_key
            )));
        }
        let arrived = std::time::Instant::now();
        let sent = request.valid_until;
        let (mut valid_until, capped) = cap_validity(sent, limits.max_validity);
        if let Some(held) = state.entries.get(&request.instance_id) {
            if is_older(
                sent.as_ref(),
                held.valid_until.as_ref(),
                state.arrivals.get(&request.instance_id),
                arrived,
                limits.reorder_window,
            ) {
                // An older message of this instance still in transit: dropped, latest wins.
                return Ok(());
            }
            valid_until = after_held(valid_until, held.valid_until.as_ref());
        }
        if capped {
            rejected("max_validity");
        }
        let source = request.instance_id.clone();
        let size_before = notification_len(&request.lock_key, &state.entries);
        let previous = state.entries.insert(
            request.instance_id,
            InstanceLockStatus {
                is_busy: request.is_busy,
                // Kept as sent: absent stays absent (.NET null), empty stays "".
                lock_data: request.lock_data,
                valid_until,
            },
        );
        let previous_arrival = state
            .arrivals
            .insert(source.clone(), Arrival { at: arrived, sent });
        let size = notification_len(&request.lock_key, &state.entries);
        // A status that shrinks the key is always taken, so an over-full key (a lowered
        // limit) can drain.
        if size > limits.max_notification_size && size > size_before {
            match previous {
                Some(previous) => state.entries.insert(source.clone(), previous),
                None => state.entries.remove(&source),
            };
            match previous_arrival {
                Some(previous) => state.arrivals.insert(source, previous),
                None => state.arrivals.remove(&source),
            };
            rejected("max_notification_size");
            return Err(Status::resource_exhausted(format!(
                "key `{}` would hold {size} bytes of statuses, over the hub's \
                 max_notification_size ({}): less lock data, or fewer instances per key",
                request.lock_key, limits.max_notification_size
            )));
        }
        self.changed(&request.lock_key, state, Some(&source));
        metrics::counter!("reactive_lock_hub_statuses_total").increment(1);
        Ok(())
    }

    /// Expires due entries, broadcasts the key's state (except to a subscriber that asked
    /// not to be sent the changes of `source`, the instance that made this one) and re-arms
    /// the expiry timer.
    fn changed(&self, key: &str, state: &mut KeyState, source: Option<&str>) {
        let now = SystemTime::now();
        let mut next: Option<SystemTime> = None;
        for entry in state.entries.values_mut() {
            let until = entry.valid_until.as_ref().map(system_time);
            match until {
                Some(until) if entry.is_busy && until <= now => {
                    entry.is_busy = false;
                    metrics::counter!("reactive_lock_hub_entries_expired_total").increment(1);
                }
                Some(until) if entry.is_busy => next = Some(next.map_or(until, |n| n.min(until))),
                _ => {}
            }
        }
        let notification = LockStatusNotification {
            lock_key: key.into(),
            instances_status: state.entries.clone(),
        };
        let limits = self.inner.limits;
        for mut subscriber in std::mem::take(&mut state.subscribers) {
            if source.is_some() && subscriber.skip_own.as_deref() == source {
                if !subscriber.tx.is_closed() {
                    state.subscribers.push(subscriber);
                }
                continue;
            }
            match subscriber.tx.try_send(notification.clone()) {
                Ok(()) => {
                    subscriber.sent += 1;
                    if subscriber.stalled(std::time::Instant::now(), limits.stall_timeout) {
                        subscriber.end_stalled(
                            key,
                            "stall_timeout",
                            format!(
                                "notifications unread for the hub's stall_timeout ({:?})",
                                limits.stall_timeout
                            ),
                        );
                    } else {
                        state.subscribers.push(subscriber);
                    }
                }
                Err(mpsc::error::TrySendError::Full(_)) => subscriber.end_stalled(
                    key,
                    "subscriber_buffer",
                    format!(
                        "more than subscriber_buffer ({}) notifications unread",
                        limits.subscriber_buffer
                    ),
                ),
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        if let Some(task) = state.expiry.take() {
            task.abort();
        }
        if let Some(next) = next {
            let hub = self.clone();
            let key = key.to_string();
            let delay = next.duration_since(now).unwrap_or_default() + Duration::from_millis(1);
            state.expiry = Some(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let mut keys = hub.inner.keys.lock();
                if let Some(state) = keys.get_mut(&key) {
                    state.expiry = None;
                    hub.changed(&key, state, None);
                }
            }));
        }
    }

    fn subscribe(&self, key: &str, skip_own: Option<String>) -> Result<SubscriptionStream, Status> {
        let limits = self.inner.limits;
        let mut keys = self.inner.keys.lock();
        // Checked under the keys lock that `end_subscriptions` takes: a subscription is
        // either refused here or ended there, never missed.
        if self.inner.closing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Status::unavailable("the hub is shutting down"));
        }
        if !keys.contains_key(key) && keys.len() >= limits.max_keys {
            self.forget_idle_keys(&mut keys);
        }
        if !keys.contains_key(key) && keys.len() >= limits.max_keys {
            rejected("max_keys");
            return Err(Status::resource_exhausted(format!(
                "the hub holds max_keys ({}) keys",
                limits.max_keys
            )));
        }
        let state = keys.entry(key.to_string()).or_insert_with(KeyState::new);
        state.touched = std::time::Instant::now();
        // Subscribers whose streams closed are otherwise dropped on the key's next change;
        // on a quiet key, many short reads would pile them up until then.
        state
            .subscribers
            .retain(|subscriber| !subscriber.tx.is_closed());
        let (tx, rx) = mpsc::channel(limits.subscriber_buffer.max(1));
        let current = LockStatusNotification {
            lock_key: key.into(),
            instances_status: state.entries.clone(),
        };
        // Capacity ≥ 1 and the channel is new: the current state always fits.
        let _ = tx.try_send(current);
        let id = self
            .inner
            .next_subscriber
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (end, ended) = tokio::sync::oneshot::channel();
        let taken = Arc::new(std::sync::atomic::AtomicU64::new(0));
        state.subscribers.push(Subscriber {
            id,
            skip_own,
            tx,
            end,
            sent: 1,
            taken: taken.clone(),
            taken_seen: 0,
            unread_since: Some(std::time::Instant::now()),
        });
        Ok(SubscriptionStream {
            notifications: rx,
            end: Some(ended),
            done: false,
            reading: None,
            taken,
        })
    }
}

/// The encoded length of `key`'s notification holding `entries` (what `prost` would
/// encode), computed without building the message.
fn notification_len(key: &str, entries: &HashMap<String, InstanceLockStatus>) -> usize {
    use prost::encoding::{encoded_len_varint, hash_map, key_len, message, string};
    let key_field = if key.is_empty() {
        0
    } else {
        key_len(1) + encoded_len_varint(key.len() as u64) + key.len()
    };
    key_field
        + hash_map::encoded_len(
            string::encoded_len,
            message::encoded_len::<InstanceLockStatus>,
            2,
            entries,
        )
}

/// `valid_until`, capped at the hub's now + `max_validity`; and whether it was capped.
fn cap_validity(
    valid_until: Option<prost_types::Timestamp>,
    max_validity: Duration,
) -> (Option<prost_types::Timestamp>, bool) {
    let Some(mut until) = valid_until else {
        return (None, false);
    };
    // Nanos outside 0..1e9 carried into the seconds, as every reader expects them (.NET's
    // `Timestamp.ToDateTime` throws on others).
    until.normalize();
    let now = SystemTime::now();
    let limit = now.checked_add(max_validity).unwrap_or(now);
    if system_time(&until) > limit {
        (Some(super::timestamp(limit)), true)
    } else {
        (Some(until), false)
    }
}

/// Whether a status its sender dated `new` is an older message than the held one, which
/// arrived as `arrival` (valid until `held` as stored) (see
/// [the ordering rule](HubLimits#the-ordering-rule)): only an earlier `validUntil` than the
/// sender gave the held one (capped or not), within `reorder_window` of its arrival.
fn is_older(
    new: Option<&prost_types::Timestamp>,
    held: Option<&prost_types::Timestamp>,
    arrival: Option<&Arrival>,
    now: std::time::Instant,
    reorder_window: Duration,
) -> bool {
    let held = match arrival {
        Some(arrival) => arrival.sent.as_ref(),
        None => held,
    };
    let (Some(new), Some(held)) = (new, held) else {
        return false;
    };
    let in_flight =
        arrival.is_none_or(|arrival| now.saturating_duration_since(arrival.at) < reorder_window);
    in_flight && system_time(new) < system_time(held)
}

/// The `validUntil` stored for a status that replaces one valid until `held`: never earlier
/// than `held` (1 µs later, at least), so that every reader, which keeps the later
/// `validUntil` of an instance as its newer status (reactive-lock clients do, also across
/// hubs and read-throughs), takes the status the hub took. A status dated earlier (a clock
/// stepped back, a shorter expiration after a restart, a capped entry replaced) is thus
/// stored valid at most until the held one was, which `max_validity` bounds.
fn after_held(
    valid_until: Option<prost_types::Timestamp>,
    held: Option<&prost_types::Timestamp>,
) -> Option<prost_types::Timestamp> {
    match (valid_until, held) {
        (Some(new), Some(held)) if system_time(&new) <= system_time(held) => Some(
            super::timestamp(system_time(held) + Duration::from_micros(1)),
        ),
        (valid_until, _) => valid_until,
    }
}

/// Every request must name its key and instance.
fn require_names(request: &LockStatusRequest) -> Result<(), Status> {
    if request.lock_key.is_empty() {
        return Err(Status::invalid_argument("lockKey must not be empty"));
    }
    if request.instance_id.is_empty() {
        return Err(Status::invalid_argument("instanceId must not be empty"));
    }
    Ok(())
}

type NotificationStream =
    Pin<Box<dyn Stream<Item = Result<LockStatusNotification, Status>> + Send>>;

#[tonic::async_trait]
impl ReactiveLockGrpc for Hub {
    async fn set_status(
        &self,
        request: Request<LockStatusRequest>,
    ) -> Result<Response<()>, Status> {
        self.set(request.into_inner())?;
        Ok(Response::new(()))
    }

    type SubscribeLockStatusStream = NotificationStream;

    async fn subscribe_lock_status(
        &self,
        request: Request<Streaming<LockStatusRequest>>,
    ) -> Result<Response<NotificationStream>, Status> {
        let skip_own = request.metadata().contains_key(super::SKIP_OWN_HEADER);
        let mut inbound = request.into_inner();
        let timeout = self.inner.limits.first_message_timeout;
        // Bounded: a client that never names its key would otherwise hold this task (and
        // its connection's stream slot) forever.
        let first = tokio::time::timeout(timeout, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no first message within the hub's first_message_timeout ({timeout:?})"
                ))
            })??
            .ok_or_else(|| {
                Status::invalid_argument("the first message must name the key and the instance")
            })?;
        require_names(&first)?;
        let key = first.lock_key.clone();
        let mut stream = self.subscribe(&key, skip_own.then(|| first.instance_id.clone()))?;
        // Later messages on the stream are status updates for this key. The reader ends
        // with the response: a request half still read would keep the h2 stream, and so
        // the connection and a graceful shutdown, open after the response ended.
        let (reading, response_gone) = tokio::sync::oneshot::channel::<()>();
        stream.reading = Some(reading);
        let hub = self.clone();
        tokio::spawn(async move {
            let updates = async {
                while let Ok(Some(mut update)) = inbound.message().await {
                    update.lock_key = key.clone();
                    if let Err(status) = hub.set(update) {
                        tracing::warn!(key, %status, "reactive-lock hub: rejected a streamed status");
                    }
                }
            };
            tokio::select! {
                () = updates => {}
                _ = response_gone => {}
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn notification_len_is_the_encoded_length() {
        let mut entries = HashMap::new();
        assert_eq!(
            notification_len("k", &entries),
            LockStatusNotification {
                lock_key: "k".into(),
                instances_status: entries.clone(),
            }
            .encoded_len()
        );
        for (i, data) in [None, Some(String::new()), Some("x".repeat(300))]
            .into_iter()
            .enumerate()
        {
            entries.insert(
                format!("instance-{i}"),
                InstanceLockStatus {
                    is_busy: i % 2 == 0,
                    lock_data: data,
                    valid_until: Some(crate::grpc::timestamp(crate::grpc::valid_until(
                        Duration::from_secs(10),
                    ))),
                },
            );
            let notification = LockStatusNotification {
                lock_key: "payments".into(),
                instances_status: entries.clone(),
            };
            assert_eq!(
                notification_len("payments", &entries),
                notification.encoded_len()
            );
        }
    }
}
