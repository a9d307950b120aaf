//! The hub: a `ReactiveLockGrpc` service that keeps, per key, the latest status of each
//! instance and broadcasts the key's full state to its subscribers on every change.
//!
//! * statuses are ordered per instance by `validUntil` (a status older than the stored one
//!   is dropped; reactive-lock clients make it strictly increasing);
//! * busy entries expire on the hub's clock: at the earliest `validUntil` the hub marks them
//!   idle and broadcasts, so subscribers unblock with no new message;
//! * a new subscriber gets the current state at once; a subscriber that stops reading is
//!   dropped (bounded buffer) without disturbing the others;
//! * a subscription opened with the [`SKIP_OWN_HEADER`](super::SKIP_OWN_HEADER) metadata
//!   is not sent the changes its own instance made (reactive-lock clients ask for this:
//!   they know their own status; .NET clients do not send it and get every change);
//! * limits (message size, keys, instances per key, lock-data length) answer with a gRPC
//!   status naming the limit.
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
use super::{system_time, timestamp};

/// Limits of a [`Hub`].
///
/// # Examples
///
/// ```
/// let limits = reactive_lock_backends::grpc::server::HubLimits::default();
/// assert_eq!(limits.max_keys, 10_000);
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
}

impl Default for HubLimits {
    fn default() -> Self {
        HubLimits {
            max_message_size: 64 * 1024,
            max_keys: 10_000,
            max_instances_per_key: 1_000,
            max_lock_data_len: 16 * 1024,
            subscriber_buffer: 64,
        }
    }
}

type Notifications = mpsc::Sender<Result<LockStatusNotification, Status>>;

struct KeyState {
    entries: HashMap<String, InstanceLockStatus>,
    subscribers: Vec<Subscriber>,
    expiry: Option<tokio::task::JoinHandle<()>>,
}

struct Subscriber {
    id: u64,
    /// The instance that subscribed, when it asked not to be sent its own changes.
    skip_own: Option<String>,
    tx: Notifications,
}

struct HubInner {
    keys: Mutex<HashMap<String, KeyState>>,
    limits: HubLimits,
    next_subscriber: std::sync::atomic::AtomicU64,
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
            .max_encoding_message_size(self.inner.limits.max_message_size.max(1024 * 1024))
    }

    /// Serves on `addr` until `shutdown` resolves: TCP_NODELAY on, optional TLS
    /// (`tls` = PEM certificate chain and key) and bearer `token`.
    ///
    /// # Errors
    ///
    /// When the address cannot be bound or the TLS material is invalid.
    pub async fn serve(
        &self,
        addr: SocketAddr,
        tls: Option<(Vec<u8>, Vec<u8>)>,
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
        tls: Option<(Vec<u8>, Vec<u8>)>,
        token: Option<String>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let mut builder = tonic::transport::Server::builder().tcp_nodelay(true);
        if let Some((cert, key)) = tls {
            let identity = tonic::transport::Identity::from_pem(cert, key);
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
        builder
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?;
        Ok(())
    }

    /// Applies one status update, after checking it against the limits.
    fn set(&self, request: LockStatusRequest) -> Result<(), Status> {
        let limits = self.inner.limits;
        require_names(&request)?;
        if let Some(data) = &request.lock_data
            && data.len() > limits.max_lock_data_len
        {
            return Err(Status::invalid_argument(format!(
                "lockData of {} bytes exceeds the hub's max_lock_data_len ({})",
                data.len(),
                limits.max_lock_data_len
            )));
        }
        let mut keys = self.inner.keys.lock();
        if !keys.contains_key(&request.lock_key) && keys.len() >= limits.max_keys {
            return Err(Status::resource_exhausted(format!(
                "the hub holds max_keys ({}) keys",
                limits.max_keys
            )));
        }
        let state = keys
            .entry(request.lock_key.clone())
            .or_insert_with(|| KeyState {
                entries: HashMap::new(),
                subscribers: Vec::new(),
                expiry: None,
            });
        if !state.entries.contains_key(&request.instance_id)
            && state.entries.len() >= limits.max_instances_per_key
        {
            return Err(Status::resource_exhausted(format!(
                "key `{}` holds max_instances_per_key ({}) instances",
                request.lock_key, limits.max_instances_per_key
            )));
        }
        let new_until = request.valid_until.as_ref().map(system_time);
        if let Some(held) = state.entries.get(&request.instance_id) {
            let held_until = held.valid_until.as_ref().map(system_time);
            if let (Some(held_until), Some(new_until)) = (held_until, new_until)
                && new_until < held_until
            {
                // Older than what the hub holds for this instance: dropped, latest wins.
                return Ok(());
            }
        }
        let source = request.instance_id.clone();
        state.entries.insert(
            request.instance_id,
            InstanceLockStatus {
                is_busy: request.is_busy,
                // Kept as sent: absent stays absent (.NET null), empty stays "".
                lock_data: request.lock_data,
                valid_until: request.valid_until,
            },
        );
        self.changed(&request.lock_key, state, Some(&source));
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
                Some(until) if entry.is_busy && until <= now => entry.is_busy = false,
                Some(until) if entry.is_busy => next = Some(next.map_or(until, |n| n.min(until))),
                _ => {}
            }
        }
        let notification = LockStatusNotification {
            lock_key: key.into(),
            instances_status: state.entries.clone(),
        };
        state.subscribers.retain(|subscriber| {
            if source.is_some() && subscriber.skip_own.as_deref() == source {
                return !subscriber.tx.is_closed();
            }
            match subscriber.tx.try_send(Ok(notification.clone())) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(
                        key,
                        subscriber = subscriber.id,
                        "reactive-lock hub: subscriber stalled; dropped"
                    );
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
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

    fn subscribe(
        &self,
        key: &str,
        skip_own: Option<String>,
    ) -> Result<mpsc::Receiver<Result<LockStatusNotification, Status>>, Status> {
        let limits = self.inner.limits;
        let mut keys = self.inner.keys.lock();
        if !keys.contains_key(key) && keys.len() >= limits.max_keys {
            return Err(Status::resource_exhausted(format!(
                "the hub holds max_keys ({}) keys",
                limits.max_keys
            )));
        }
        let state = keys.entry(key.to_string()).or_insert_with(|| KeyState {
            entries: HashMap::new(),
            subscribers: Vec::new(),
            expiry: None,
        });
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
        let _ = tx.try_send(Ok(current));
        let id = self
            .inner
            .next_subscriber
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        state.subscribers.push(Subscriber { id, skip_own, tx });
        Ok(rx)
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
        let first = inbound.message().await?.ok_or_else(|| {
            Status::invalid_argument("the first message must name the key and the instance")
        })?;
        require_names(&first)?;
        let key = first.lock_key.clone();
        let rx = self.subscribe(&key, skip_own.then(|| first.instance_id.clone()))?;
        // Later messages on the stream are status updates for this key.
        let hub = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(mut update)) = inbound.message().await {
                update.lock_key = key.clone();
                if let Err(status) = hub.set(update) {
                    tracing::warn!(key, %status, "reactive-lock hub: rejected a streamed status");
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|item| item);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The timestamp `d` from now (for tests and tools).
pub fn valid_for(d: Duration) -> prost_types::Timestamp {
    timestamp(SystemTime::now() + d)
}
