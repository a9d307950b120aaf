//! Redis backend, wire-compatible with the .NET ReactiveLock.
//!
//! # Wire format (the .NET library's, unchanged)
//!
//! * hash `ReactiveLock:Redis:HashSet:{key}`, field = instance name, value
//!   `"{1|0};{validUntil}"` or `"1;{validUntil};{lockData}"`, `validUntil` in UTC .NET ticks
//!   (100 ns units since 0001-01-01);
//! * after the write, `PUBLISH ReactiveLock:Redis:HashSetNotifier:{key}`.
//!
//! A .NET subscriber ignores the published payload and re-reads the hash, so ours carries a
//! self-describing payload (`RLv2`, instance, sequence, the server's clock, the .NET value)
//! that our subscribers apply directly — no re-read per notification, so a transition costs
//! O(1) Redis work per subscriber instead of a full `HGETALL`. A payload that is not ours
//! (a .NET writer's bare value) makes our subscriber re-read that key once.
//!
//! Writes go through one Lua script: `TIME` + `HSET` + `PUBLISH`, atomically, with a busy
//! entry's `validUntil` computed from the **server's** clock (an idle entry's is never judged,
//! so the client stamps it on its own clock), and dropped if the instance already
//! wrote a newer sequence (kept in `{ReactiveLock:Redis:HashSet:{key}}:seq`, which hashes to
//! the same cluster slot as the .NET hash). Reads run one Lua script too (`HGETALL` — or
//! a whole `HSCAN` returning [`MAX_ENTRIES_PER_KEY`], unexpired busy ones first, for a
//! hash someone else filled — the sequences and
//! `TIME`), so expiry is judged on the server's clock too: skewed client clocks cannot make a live instance look
//! dead or a dead one alive.
//!
//! # Connections and runtime
//!
//! One multiplexed connection for commands and one RESP3 connection per registry for the
//! subscriptions to all its keys. On a single server a registry's publishes go through its
//! subscription's connection while it is up: the echo of each publish (Redis delivers it to
//! every subscriber of the channel, the publisher's own subscription included) then returns
//! on the connection that sent the script, in the same read as its reply, instead of costing
//! the server a second write and the client a second wake-up. Publishes fall back to the command connection while it is down; the
//! script's sequence check keeps a write that arrives late on one connection from
//! overriding a newer one sent on the other. The redis crate runs the connections on smol's
//! global executor (`smol-comp`), so the backend works whatever runtime the application
//! uses — tokio, smol, async-std — or none.
//!
//! Which thread runs what: the connections and the registry's driver run on smol's global
//! executor (its `smol-N` threads, one unless `SMOL_THREADS` says otherwise), shared with
//! any `smol::spawn` task of the application; the handlers of changes made by other
//! instances run on the registry's handler thread; a controller's own transitions run
//! their handlers on the caller's thread. Anything that blocks a `smol-N` thread stalls all
//! Redis I/O of the process while it blocks, so the blocking waits
//! ([`wait_if_blocked_blocking`](reactive_lock::TrackerState::wait_if_blocked_blocking))
//! refuse to run there (they panic, naming the key): in a `smol::spawn` task, await
//! `wait_if_blocked()` instead, or move the blocking call to `smol::unblock`.
//! A lost command connection is re-established on the next call; the subscription pings the
//! server after [`health_check_interval`](RedisBackendBuilder::health_check_interval) of silence and
//! reports [`BackendEvent::Disconnected`] when the server stops answering (also a server
//! paused with SIGSTOP, whose sockets stay open), after which the driver resubscribes with
//! backoff, re-reads every key and re-publishes its own statuses.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_lite::Stream;
use parking_lot::Mutex;
use reactive_lock::{
    Backend, BackendError, BackendErrorKind, BackendEvent, InstanceStatus, Snapshot,
};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError, Script};

mod connection;
mod subscription;
mod wire;

use connection::{ClusterParams, Commands, Target, is_broken_connection, is_transient, redact};
use subscription::{
    Overflow, OwnConnection, SUBSCRIBE_SLICE, Source, Subscription, own_echo_filter,
};
use wire::{
    CHANNEL_PREFIX, Payload, READ_SCRIPT, ReadReply, parse_payload, seq_hash_name,
    snapshot_from_reply, store_time_of,
};
pub use wire::{MAX_ENTRIES_PER_KEY, MAX_VALUE_LEN, channel_name, hash_name};
pub(crate) use wire::{PUBLISH_SCRIPT, publish_command};

/// The decoders of what other writers put in Redis, for the fuzz targets in `fuzz/`
/// (feature `fuzzing`). Not a public API: names and shapes follow the decoders.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use super::wire::{self, Payload};
    use reactive_lock::{Entry, Snapshot, StoreTime};

    pub use super::wire::MAX_VALUE_LEN;

    /// A hash field's value, .NET format: `(busy, validUntil, lockData)`.
    pub fn parse_value(value: &[u8]) -> Result<(bool, StoreTime, Option<String>), &'static str> {
        wire::parse_value(value)
    }

    /// A notification: `Ok(Some((entry, store_now)))` for ours (the entry's `seq` set),
    /// `Ok(None)` for a foreign one (a .NET writer's, re-read by subscribers), `Err` for
    /// malformed.
    pub fn parse_payload(payload: &[u8]) -> Result<Option<(Entry, StoreTime)>, &'static str> {
        match wire::parse_payload(payload) {
            Payload::Ours { entry, store_now } => Ok(Some((entry, store_now))),
            Payload::Foreign => Ok(None),
            Payload::Malformed(why) => Err(why),
        }
    }

    /// The snapshot a read of `key` yields from `HGETALL` of the entries and of the
    /// sequences and `TIME` (seconds, microseconds); the count of malformed entries beside.
    pub fn snapshot_from_reply(
        key: &str,
        entries: Vec<(Vec<u8>, Vec<u8>)>,
        seqs: Vec<(String, String)>,
        time: (u64, u64),
    ) -> (Snapshot, usize) {
        // Each entry's sequence as the read script pairs them: the first stored for its field.
        let aligned = entries
            .iter()
            .map(|(field, _)| {
                seqs.iter()
                    .find(|(instance, _)| instance.as_bytes() == field.as_slice())
                    .map(|(_, seq)| seq.clone())
            })
            .collect();
        let store_now = StoreTime::from_unix_nanos(
            time.0
                .saturating_mul(1_000_000_000)
                .saturating_add(time.1.saturating_mul(1_000)),
        );
        let mut malformed = 0;
        let snapshot = wire::snapshot_from_reply(key, entries, aligned, store_now, |_, _, _| {
            malformed += 1;
        });
        (snapshot, malformed)
    }
}

/// Options of a [`RedisBackend`]; see [`RedisBackend::builder`].
///
/// # Examples
///
/// ```
/// use reactive_lock_backends::redis::RedisBackend;
/// use std::time::Duration;
///
/// let builder = RedisBackend::builder("redis://127.0.0.1:6379/")
///     .connect_timeout(Duration::from_secs(2))
///     .response_timeout(Duration::from_secs(1));
/// # let _ = builder;
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until connect() is awaited"]
pub struct RedisBackendBuilder {
    url: String,
    /// Cluster seed nodes; empty for a single server.
    cluster_nodes: Vec<String>,
    connect_timeout: Duration,
    response_timeout: Duration,
    health_check_interval: Duration,
    tls_root_cert: Option<Vec<u8>>,
    subscription_buffer: usize,
}

impl RedisBackendBuilder {
    /// Trusts this root certificate (PEM) for `rediss://` URLs instead of the system's
    /// trust store — for servers with a private CA or a self-signed certificate.
    pub fn tls_root_cert(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_cert = Some(pem.into());
        self
    }

    /// Pub/sub messages a subscription buffers for its reader (default 1,024, at least 1).
    /// The connection's task never waits for a lagging reader: a message that finds the
    /// buffer full is replaced by a re-read of its key once the reader catches up, so the
    /// newest state of every key still arrives ([`RedisStats::push_overflows`] counts them).
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = reactive_lock_backends::redis::RedisBackend::builder("redis://127.0.0.1:6379")
    ///     .subscription_buffer(4096);
    /// # let _ = builder;
    /// ```
    pub fn subscription_buffer(mut self, messages: usize) -> Self {
        self.subscription_buffer = messages.max(1);
        self
    }

    /// How long connecting may take before failing (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a command may wait for its reply before failing (default 2 s).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How long the subscription may stay silent before it pings the server to detect a
    /// dead or paused one (default 1 s, checked at that period, so a silent connection is
    /// pinged within two periods; the ping must answer within the response timeout).
    pub fn health_check_interval(mut self, every: Duration) -> Self {
        self.health_check_interval = every;
        self
    }

    /// Connects: parses the URL, opens the command connection and checks it with `PING`.
    ///
    /// # Errors
    ///
    /// [`BackendErrorKind::Rejected`] for an invalid URL, a duration outside
    /// [`MIN_DURATION`](reactive_lock::MIN_DURATION)`..=`[`MAX_DURATION`](reactive_lock::MAX_DURATION), or refused
    /// authentication; [`BackendErrorKind::Unavailable`] when the server cannot be reached
    /// within the connect timeout. The message names the address (never the password).
    ///
    /// # Cancel safety
    ///
    /// Dropping it before it resolves leaves nothing behind.
    pub async fn connect(self) -> Result<RedisBackend, BackendError> {
        crate::check_durations(
            "Redis",
            &[
                ("connect_timeout", self.connect_timeout),
                ("response_timeout", self.response_timeout),
                ("health_check_interval", self.health_check_interval),
            ],
        )?;
        // rustls needs one process-wide crypto provider; if the application has not picked
        // one (or enabled several), use ring rather than panic on the first TLS handshake.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let address = redact(&self.url);
        let target = self.target(&address)?;
        let backend = RedisBackend {
            inner: Arc::new(Inner {
                target,
                address,
                connect_timeout: self.connect_timeout,
                response_timeout: self.response_timeout,
                health_check_interval: self.health_check_interval,
                connection: async_lock::Mutex::new(None),
                script: Script::new(PUBLISH_SCRIPT),
                read_script: Script::new(READ_SCRIPT),
                subscription_buffer: self.subscription_buffer,
                push_overflows: Arc::new(AtomicU64::new(0)),
                entries_over_limit: AtomicU64::new(0),
                over_limit_warnings: Mutex::new(WarnBudget::per_minute(1)),
                malformed: AtomicU64::new(0),
                malformed_seen: Mutex::new(HashSet::new()),
                malformed_warnings: Mutex::new(WarnBudget::per_minute(
                    MALFORMED_WARNINGS_PER_MINUTE,
                )),
                notifications_applied: AtomicU64::new(0),
                rereads: AtomicU64::new(0),
                own: Mutex::new(HashMap::new()),
                next_own_id: AtomicU64::new(0),
            }),
        };
        let mut connection = backend.connection().await?;
        let _: String = redis::cmd("PING")
            .query_async(&mut connection)
            .await
            .map_err(|e| backend.error("PING", e))?;
        Ok(backend)
    }

    /// The clients for a single server (a RESP3 one for the subscription) or a cluster.
    fn target(&self, address: &str) -> Result<Target, BackendError> {
        let invalid = |e: RedisError| {
            BackendError::new(
                BackendErrorKind::Rejected,
                format!("invalid Redis URL `{address}`: {e}"),
            )
            .with_source(e)
        };
        if !self.cluster_nodes.is_empty() {
            let params = ClusterParams {
                nodes: self.cluster_nodes.clone(),
                root_cert: self.tls_root_cert.clone(),
                connect_timeout: self.connect_timeout,
                response_timeout: self.response_timeout,
            };
            let client = params.builder().build().map_err(invalid)?;
            return Ok(Target::Cluster {
                client: Box::new(client),
                params,
            });
        }
        let client = match &self.tls_root_cert {
            None => Client::open(self.url.as_str()),
            Some(root_cert) => Client::build_with_tls(
                self.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert.clone()),
                },
            ),
        }
        .map_err(invalid)?;
        // Subscriptions speak RESP3: their messages arrive as pushes through a callback on
        // the connection's task, where echoes of the instance's own publishes are dropped
        // before they wake anyone (a RESP2 pub/sub connection hands every message to the
        // subscriber's thread first).
        let info = client.get_connection_info().clone();
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let subscriber = Box::new(Client::open(info.set_redis_settings(resp3)).map_err(invalid)?);
        Ok(Target::Single { client, subscriber })
    }
}

/// The Redis backend: see the [module docs](self) for the wire format and behaviour.
///
/// Cheap to clone; clones share the connections. Give each registry (instance) its own
/// `RedisBackend` or a clone — both work.
///
/// # Examples
///
/// ```no_run
/// use reactive_lock::{ReactiveLock, TrackerConfig};
/// use reactive_lock_backends::redis::RedisBackend;
///
/// # futures_lite::future::block_on(async {
/// let backend = RedisBackend::connect("redis://127.0.0.1:6379/").await?;
/// let lock = ReactiveLock::builder()
///     .tracker("payments", TrackerConfig::new())
///     .build(backend)
///     .await?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # });
/// ```
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    address: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    health_check_interval: Duration,
    /// The command connection, re-established on the next call after it failed.
    connection: async_lock::Mutex<Option<Commands>>,
    script: Script,
    read_script: Script,
    subscription_buffer: usize,
    /// Pub/sub messages that found a subscription's buffer full (re-read instead).
    push_overflows: Arc<AtomicU64>,
    /// Entries beyond [`MAX_ENTRIES_PER_KEY`] that reads ignored.
    entries_over_limit: AtomicU64,
    over_limit_warnings: Mutex<WarnBudget>,
    malformed: AtomicU64,
    /// Malformed (key, field, value) already warned about, each once; bounded by
    /// [`MALFORMED_REMEMBERED`].
    malformed_seen: Mutex<HashSet<(String, String, Vec<u8>)>>,
    malformed_warnings: Mutex<WarnBudget>,
    notifications_applied: AtomicU64,
    rereads: AtomicU64,
    /// Each subscribed instance's subscription connection (single server), by instance
    /// name, with the id of the subscription that registered it: that instance's publishes
    /// go there (see the module docs).
    own: Mutex<HashMap<String, (u64, MultiplexedConnection)>>,
    next_own_id: AtomicU64,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("address", &self.inner.address)
            .finish_non_exhaustive()
    }
}

/// Warnings about malformed entries per minute at most, per backend.
const MALFORMED_WARNINGS_PER_MINUTE: u32 = 10;

/// Distinct malformed entries remembered (each warned about once); forgotten all at once
/// past this, so memory stays bounded whatever is written into the store.
const MALFORMED_REMEMBERED: usize = 1024;

/// A rate limit on one kind of warning, so a flood of bad data cannot flood the log: at
/// most `per_minute` warnings in any minute counted from the first of them.
struct WarnBudget {
    per_minute: u32,
    /// When the current minute began: at the first warning after the last minute ended.
    window_start: Option<std::time::Instant>,
    in_window: u32,
    /// Warnings withheld since the last one logged.
    unlogged: u64,
}

impl WarnBudget {
    fn per_minute(per_minute: u32) -> Self {
        WarnBudget {
            per_minute,
            window_start: None,
            in_window: 0,
            unlogged: 0,
        }
    }

    /// Whether a warning may be logged now: `Some` with how many were withheld since the
    /// last one, or `None` (this one is counted as withheld).
    fn take(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self
            .window_start
            .is_none_or(|start| now.duration_since(start) >= Duration::from_secs(60))
        {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window >= self.per_minute {
            self.unlogged += 1;
            return None;
        }
        self.in_window += 1;
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// Counters of a [`RedisBackend`].
///
/// # Examples
///
/// ```
/// let stats = reactive_lock_backends::redis::RedisStats::default();
/// assert_eq!(stats.malformed_entries, 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Entries or notifications that could not be parsed (ignored).
    pub malformed_entries: u64,
    /// Self-describing notifications applied without a re-read.
    pub notifications_applied: u64,
    /// Re-reads caused by notifications that were not ours (.NET writers).
    pub rereads: u64,
    /// Entries beyond [`MAX_ENTRIES_PER_KEY`] that reads of a key ignored (summed over
    /// reads): something else filled the key's hash.
    pub entries_over_limit: u64,
    /// Pub/sub messages that found a subscription's buffer full and were replaced by a
    /// re-read of their key (see
    /// [`subscription_buffer`](RedisBackendBuilder::subscription_buffer)).
    pub push_overflows: u64,
}

impl RedisBackend {
    /// Connects with default options; see [`RedisBackendBuilder::connect`].
    ///
    /// URL forms: `redis://[user[:password]@]host[:port][/db]`, `rediss://...` for TLS.
    ///
    /// # Errors
    ///
    /// As for [`RedisBackendBuilder::connect`].
    ///
    /// # Cancel safety
    ///
    /// Dropping it before it resolves leaves nothing behind.
    ///
    /// # Examples
    ///
    /// ```
    /// use reactive_lock::BackendErrorKind;
    /// use reactive_lock_backends::redis::RedisBackend;
    ///
    /// # futures_lite::future::block_on(async {
    /// let err = RedisBackend::connect("not a url").await.unwrap_err();
    /// assert_eq!(err.kind(), BackendErrorKind::Rejected);
    /// # });
    /// ```
    pub async fn connect(url: &str) -> Result<RedisBackend, BackendError> {
        Self::builder(url).connect().await
    }

    /// Connects to a Redis Cluster through any of its `nodes` (the others are discovered),
    /// with default options; see [`cluster_builder`](Self::cluster_builder).
    ///
    /// # Errors
    ///
    /// As for [`RedisBackendBuilder::connect`].
    ///
    /// # Cancel safety
    ///
    /// Dropping it before it resolves leaves nothing behind.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use reactive_lock_backends::redis::RedisBackend;
    /// # futures_lite::future::block_on(async {
    /// let backend = RedisBackend::connect_cluster(["redis://127.0.0.1:7000/", "redis://127.0.0.1:7001/"]).await?;
    /// # Ok::<(), reactive_lock::BackendError>(())
    /// # });
    /// ```
    pub async fn connect_cluster<S: Into<String>>(
        nodes: impl IntoIterator<Item = S>,
    ) -> Result<RedisBackend, BackendError> {
        Self::cluster_builder(nodes).connect().await
    }

    /// A builder for a Redis Cluster backend. The keys live in the cluster's slots as for a
    /// single server (same names); `PUBLISH` reaches subscribers on every node.
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = reactive_lock_backends::redis::RedisBackend::cluster_builder(["redis://127.0.0.1:7000/"]);
    /// # let _ = builder;
    /// ```
    pub fn cluster_builder<S: Into<String>>(
        nodes: impl IntoIterator<Item = S>,
    ) -> RedisBackendBuilder {
        let nodes: Vec<String> = nodes.into_iter().map(Into::into).collect();
        let mut builder = Self::builder(nodes.first().map_or("", String::as_str));
        builder.url = nodes.join(",");
        builder.cluster_nodes = nodes;
        builder
    }

    /// A builder for the options.
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = reactive_lock_backends::redis::RedisBackend::builder("redis://127.0.0.1/");
    /// # let _ = builder;
    /// ```
    pub fn builder(url: &str) -> RedisBackendBuilder {
        RedisBackendBuilder {
            url: url.into(),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(2),
            health_check_interval: Duration::from_secs(1),
            tls_root_cert: None,
            cluster_nodes: Vec::new(),
            subscription_buffer: 1024,
        }
    }

    /// The server's address as given (without the password).
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// Counters: malformed entries ignored, notifications applied, re-reads, entries over
    /// [`MAX_ENTRIES_PER_KEY`] ignored.
    pub fn stats(&self) -> RedisStats {
        RedisStats {
            malformed_entries: self.inner.malformed.load(Ordering::Relaxed),
            notifications_applied: self.inner.notifications_applied.load(Ordering::Relaxed),
            rereads: self.inner.rereads.load(Ordering::Relaxed),
            entries_over_limit: self.inner.entries_over_limit.load(Ordering::Relaxed),
            push_overflows: self.inner.push_overflows.load(Ordering::Relaxed),
        }
    }

    fn config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.inner.connect_timeout))
            .set_response_timeout(Some(self.inner.response_timeout))
    }

    async fn connection(&self) -> Result<Commands, BackendError> {
        let mut slot = self.inner.connection.lock().await;
        if let Some(connection) = &*slot {
            return Ok(connection.clone());
        }
        let connection = match &self.inner.target {
            Target::Single { client, .. } => Commands::Single(
                client
                    .get_multiplexed_async_connection_with_config(&self.config())
                    .await
                    .map_err(|e| self.error("connect", e))?,
            ),
            Target::Cluster { client, .. } => Commands::Cluster(
                client
                    .get_async_connection()
                    .await
                    .map_err(|e| self.error("connect (cluster)", e))?,
            ),
        };
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Maps a redis error, and forgets the command connection if it is broken.
    fn error(&self, what: &str, e: RedisError) -> BackendError {
        let error = self.map_error(what, e);
        if error.kind() == BackendErrorKind::Unavailable
            && let Some(mut slot) = self.inner.connection.try_lock()
        {
            *slot = None;
        }
        error
    }

    /// Maps a redis error to the backend's kinds, naming the server (never the password).
    fn map_error(&self, what: &str, e: RedisError) -> BackendError {
        let kind = if is_transient(&e) {
            BackendErrorKind::Unavailable
        } else {
            BackendErrorKind::Rejected
        };
        BackendError::new(
            kind,
            format!("Redis {what} at {} failed: {e}", self.inner.address),
        )
        .with_source(e)
    }

    /// Runs `call` on the command connection; when that connection turns out broken (the
    /// server closed it: `CLIENT KILL`, its idle `timeout`, a restart), it is replaced and
    /// the call tried once more, so a stale connection never reaches a caller as an error.
    /// Both calls here are safe to repeat: a read, and a publish whose sequence the script
    /// orders.
    async fn on_command_connection<T, F>(
        &self,
        what: &str,
        mut call: impl FnMut(Commands) -> F,
    ) -> Result<T, BackendError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let connection = self.connection().await?;
        match call(connection).await {
            Err(e) if is_broken_connection(&e) => {
                self.forget_connection();
                let connection = self.connection().await?;
                call(connection).await.map_err(|e| self.error(what, e))
            }
            other => other.map_err(|e| self.error(what, e)),
        }
    }

    /// Drops the cached command connection (the next call makes a new one).
    fn forget_connection(&self) {
        if let Some(mut slot) = self.inner.connection.try_lock() {
            *slot = None;
        }
    }

    /// Counts a malformed entry and warns about it: once per distinct entry (one left in a
    /// hash is read again on every change of its key), and at most
    /// [`MALFORMED_WARNINGS_PER_MINUTE`] a minute, so a flood of distinct ones cannot flood
    /// the log; the first warning after a quiet spell says how many went unlogged.
    fn malformed(&self, key: &str, field: &str, value: &[u8], why: &str) {
        self.inner.malformed.fetch_add(1, Ordering::Relaxed);
        // Registered here rather than held per key: only bad data takes this path (it
        // already locks and copies the value), and a backend serves whatever keys its
        // registries and reads name, so there is no fixed set of keys to register up front.
        #[cfg(feature = "metrics")]
        metrics::counter!("reactive_lock_malformed_entries_total", "key" => key.to_owned())
            .increment(1);
        {
            let mut seen = self.inner.malformed_seen.lock();
            let entry = (key.into(), field.into(), value.to_vec());
            if seen.contains(&entry) {
                return;
            }
            if seen.len() >= MALFORMED_REMEMBERED {
                seen.clear();
            }
            seen.insert(entry);
        }
        let Some(unlogged) = self.inner.malformed_warnings.lock().take() else {
            return;
        };
        tracing::warn!(
            key,
            field,
            value = %String::from_utf8_lossy(&value[..value.len().min(200)]),
            why,
            unlogged,
            "reactive-lock: ignoring a malformed Redis entry"
        );
    }

    /// Counts the entries of `key` beyond [`MAX_ENTRIES_PER_KEY`] that a read ignored, and
    /// warns at most once a minute per backend: a polluted hash is read on every change of
    /// its key.
    fn over_limit(&self, key: &str, total: u64, ignored: u64) {
        self.inner
            .entries_over_limit
            .fetch_add(ignored, Ordering::Relaxed);
        if self.inner.over_limit_warnings.lock().take().is_some() {
            tracing::warn!(
                key,
                fields = total,
                ignored,
                limit = MAX_ENTRIES_PER_KEY,
                "reactive-lock: Redis hash holds more entries than MAX_ENTRIES_PER_KEY; the rest ignored"
            );
        }
    }

    /// Reads `key` with the read script: its entries (at most [`MAX_ENTRIES_PER_KEY`]),
    /// their sequences and TIME in one atomic step: a publish script run between two
    /// separate reads would pair one status's value with another's sequence (and the newer
    /// status would then be ignored as old).
    async fn read(&self, key: &str) -> Result<Snapshot, BackendError> {
        let mut invocation = self.inner.read_script.key(hash_name(key));
        invocation
            .key(seq_hash_name(key))
            .arg(MAX_ENTRIES_PER_KEY)
            .arg(MAX_VALUE_LEN);
        let (total, entries, seqs, time): ReadReply = self
            .on_command_connection("read (EVALSHA)", |mut connection| {
                let invocation = &invocation;
                async move { invocation.invoke_async(&mut connection).await }
            })
            .await?;
        let store_now = store_time_of(time.0, time.1).ok_or_else(|| {
            BackendError::new(
                BackendErrorKind::Other,
                format!(
                    "Redis at {}: TIME answered {} s {} µs, which is no valid time",
                    self.inner.address, time.0, time.1
                ),
            )
        })?;
        let ignored = total.saturating_sub(entries.len() as u64);
        if ignored > 0 {
            self.over_limit(key, total, ignored);
        }
        Ok(snapshot_from_reply(
            key,
            entries,
            seqs,
            store_now,
            |field, value, why| self.malformed(key, field, value, why),
        ))
    }

    /// Turns one pub/sub message into an event: ours is applied as is (echoes of the
    /// subscriber's own publishes never get here: `own_echo_filter`); anything else makes us
    /// re-read the key (a .NET writer's bare value) or is ignored (malformed).
    async fn event_for(&self, channel: &str, payload: &[u8]) -> Option<BackendEvent> {
        let key = channel.strip_prefix(CHANNEL_PREFIX)?;
        match parse_payload(payload) {
            Payload::Ours { entry, store_now } => {
                self.inner
                    .notifications_applied
                    .fetch_add(1, Ordering::Relaxed);
                Some(BackendEvent::Update {
                    key: key.into(),
                    entry,
                    store_now,
                })
            }
            Payload::Malformed(why) => {
                self.malformed(key, "(notification)", payload, why);
                None
            }
            Payload::Foreign => {
                self.inner.rereads.fetch_add(1, Ordering::Relaxed);
                match self.read(key).await {
                    Ok(snapshot) => Some(BackendEvent::Snapshot(snapshot)),
                    Err(error) => {
                        tracing::warn!(key, %error, "reactive-lock: re-read after a foreign notification failed");
                        Some(BackendEvent::Disconnected)
                    }
                }
            }
        }
    }
}

type EventStream = std::pin::Pin<Box<dyn Stream<Item = BackendEvent> + Send>>;

impl Backend for RedisBackend {
    type Events = EventStream;

    /// On smol's global executor, beside the connections (the redis crate's `smol-comp`
    /// runs them there): a notification reaches the driver with a task switch instead of a
    /// thread hand-off.
    fn spawn_driver(&self, driver: reactive_lock::Driver) -> Option<reactive_lock::Driver> {
        smol::spawn(driver).detach();
        None
    }

    /// The threads of smol's global executor (named `smol-N` by smol), where the redis
    /// crate runs every connection of the process: a blocking wait there would park the I/O
    /// it waits for.
    fn runs_io_on_this_thread(&self) -> bool {
        std::thread::current()
            .name()
            .is_some_and(|name| name.starts_with("smol-"))
    }

    async fn publish(
        &self,
        key: &str,
        instance: &str,
        status: &InstanceStatus,
    ) -> Result<(), BackendError> {
        if status
            .lock_data
            .as_ref()
            .is_some_and(|d| d.len() > MAX_VALUE_LEN - 64)
        {
            return Err(BackendError::new(
                BackendErrorKind::Rejected,
                format!(
                    "lock data of {} bytes for key `{key}` exceeds the Redis backend's limit ({MAX_VALUE_LEN} bytes per value)",
                    status.lock_data.as_ref().map_or(0, String::len)
                ),
            ));
        }
        if instance.contains('\n') {
            return Err(BackendError::new(
                BackendErrorKind::Rejected,
                format!(
                    "instance name {instance:?} contains a newline, which the notification format reserves"
                ),
            ));
        }
        let command = publish_command(self.inner.script.get_hash(), key, instance, status);
        let run = |mut connection: Commands| {
            let command = &command;
            async move {
                let mut result = command.query_async::<redis::Value>(&mut connection).await;
                if matches!(&result, Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
                {
                    // A restarted or flushed server forgot the script: load it once, then
                    // retry.
                    result = match self.inner.script.load_async(&mut connection).await {
                        Ok(_) => command.query_async::<redis::Value>(&mut connection).await,
                        Err(e) => Err(e),
                    };
                }
                result
            }
        };
        // The instance's own subscription connection if it has one (its echo then comes back
        // with the reply), else the command connection.
        let own = self.inner.own.lock().get(instance).cloned();
        let reply = match own {
            Some((id, connection)) => match run(Commands::Single(connection)).await {
                Ok(reply) => reply,
                // The subscription's connection failed, not the command connection: a broken
                // one is replaced when the subscription notices; until then publishes take the
                // command connection, starting with this one.
                Err(e) if is_transient(&e) => {
                    OwnConnection::forget(&self.inner, instance, id);
                    self.on_command_connection("publish (EVALSHA)", run).await?
                }
                Err(e) => return Err(self.map_error("publish (EVALSHA)", e)),
            },
            None => self.on_command_connection("publish (EVALSHA)", run).await?,
        };
        match reply {
            redis::Value::Int(1) => Ok(()),
            // The store holds a newer status of this instance: the script's answer is the
            // sequence it holds.
            redis::Value::BulkString(held) => {
                let held = std::str::from_utf8(&held)
                    .ok()
                    .and_then(|held| held.parse::<u64>().ok())
                    .unwrap_or(u64::MAX);
                Err(BackendError::superseded(
                    held,
                    format!(
                        "Redis at {} holds sequence {held} of instance `{instance}` for key `{key}`, newer than {}; status not written",
                        self.inner.address, status.seq
                    ),
                ))
            }
            other => Err(BackendError::new(
                BackendErrorKind::Other,
                format!(
                    "Redis at {}: unexpected reply {other:?} to the publish script",
                    self.inner.address
                ),
            )),
        }
    }

    async fn snapshot(&self, key: &str) -> Result<Snapshot, BackendError> {
        self.read(key).await
    }

    async fn subscribe(
        &self,
        instance: &str,
        keys: &[String],
    ) -> Result<EventStream, BackendError> {
        let channels: Vec<String> = keys.iter().map(|k| channel_name(k)).collect();
        // RESP3 pushes through a callback on the connection's task (see `own_echo_filter`).
        // Bounded; what overflows is re-read (see `Overflow`).
        let (tx, pushes) = async_channel::bounded(self.inner.subscription_buffer);
        let overflow = Arc::new(Overflow::new(self.inner.push_overflows.clone()));
        let filter = own_echo_filter(instance, tx, overflow.clone());
        let mut connection = match &self.inner.target {
            Target::Single { subscriber, .. } => Commands::Single(
                subscriber
                    .get_multiplexed_async_connection_with_config(
                        &self.config().set_push_sender(filter),
                    )
                    .await
                    .map_err(|e| self.error("SUBSCRIBE (connect)", e))?,
            ),
            Target::Cluster { params, .. } => {
                // A cluster connection of its own; it keeps the subscription on whichever
                // nodes it talks to and renews it after reconnects.
                let client = params
                    .builder()
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(filter)
                    .build()
                    .map_err(|e| self.error("SUBSCRIBE (cluster client)", e))?;
                Commands::Cluster(
                    client
                        .get_async_connection()
                        .await
                        .map_err(|e| self.error("SUBSCRIBE (connect)", e))?,
                )
            }
        };
        // In slices: each SUBSCRIBE's reply is one confirmation per channel, and all of a
        // large registry's keys at once would leave megabytes of transient allocations in
        // the heap.
        for slice in channels.chunks(SUBSCRIBE_SLICE) {
            connection
                .subscribe(slice)
                .await
                .map_err(|e| self.error("SUBSCRIBE", e))?;
        }
        let own = match &connection {
            Commands::Single(connection) => {
                let id = self.inner.next_own_id.fetch_add(1, Ordering::Relaxed);
                self.inner
                    .own
                    .lock()
                    .insert(instance.to_string(), (id, connection.clone()));
                Some(OwnConnection {
                    inner: self.inner.clone(),
                    instance: instance.to_string(),
                    id,
                })
            }
            Commands::Cluster(_) => None,
        };
        let state = Subscription {
            backend: self.clone(),
            own,
            source: Source {
                connection,
                pushes,
                overflow,
            },
            done: false,
            health_check: async_io::Timer::interval(self.inner.health_check_interval),
            last_message: std::time::Instant::now(),
        };
        Ok(Box::pin(futures_lite::stream::unfold(
            state,
            Subscription::next,
        )))
    }
}
