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
//! the same cluster slot as the .NET hash). Reads pipeline `HGETALL` + `TIME`, so expiry is
//! judged on the server's clock too: skewed client clocks cannot make a live instance look
//! dead or a dead one alive.
//!
//! # Connections and runtime
//!
//! One multiplexed connection for commands and one RESP3 connection per registry for the
//! subscriptions to all its keys. On a single server a registry's publishes go through its
//! subscription's connection while it is up: the echo of each publish (Redis delivers it to
//! every subscriber of the channel, the publisher's own subscription included) then returns
//! on the connection that sent the script, in the same read as its reply, instead of costing
//! the server a second write and the client a second wake-up (`redis/transition_ack_pair`:
//! see BENCHMARKS.md). Publishes fall back to the command connection while it is down; the
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

use futures_lite::{Stream, StreamExt};
use parking_lot::Mutex;
use reactive_lock::{
    Backend, BackendError, BackendErrorKind, BackendEvent, Entry, InstanceStatus, Snapshot,
    StoreTime,
};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, RedisError, Script};

/// The hash holding every instance's entry for `key` (the .NET name).
pub fn hash_name(key: &str) -> String {
    format!("{HASH_PREFIX}{key}")
}

/// The channel announcing changes of `key` (the .NET name).
pub fn channel_name(key: &str) -> String {
    format!("{CHANNEL_PREFIX}{key}")
}

/// Per-instance write sequences of `key`; the hash tag puts it in the .NET hash's slot.
fn seq_hash_name(key: &str) -> String {
    format!("{{{HASH_PREFIX}{key}}}:seq")
}

const HASH_PREFIX: &str = "ReactiveLock:Redis:HashSet:";

/// One command argument made of pieces, written straight into the command's buffer: a
/// publish names three keys and a sequence, and a `String` for each cost an allocation, a
/// copy into the command and a free, per transition.
struct Joined<'a, const N: usize>([&'a [u8]; N]);

impl<const N: usize> redis::ToRedisArgs for Joined<'_, N> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        use std::io::Write as _;
        let mut arg = out.writer_for_next_arg();
        for piece in self.0 {
            // The writer appends to the command's in-memory buffer, which cannot fail.
            let _ = arg.write_all(piece);
        }
    }
}

/// `seq` as 20 zero-padded digits (u64::MAX has 20), so the script can compare sequences
/// as strings (Lua's numbers are doubles, exact only to 2^53).
fn seq_digits(seq: u64) -> [u8; 20] {
    let mut digits = [b'0'; 20];
    let mut rest = seq;
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    digits
}

/// `EVALSHA` of [`PUBLISH_SCRIPT`] (by its `sha`) for `instance`'s `status` of `key` (see
/// the script for the arguments), built in one buffer.
pub(crate) fn publish_command(
    sha: &str,
    key: &str,
    instance: &str,
    status: &InstanceStatus,
) -> redis::Cmd {
    // At most a century: the script prints whole seconds with Lua's `%.14g`, exact below
    // 1e14 s (and .NET's DateTime ends in the year 9999 anyway).
    const CENTURY_US: u128 = 100 * 365 * 24 * 3600 * 1_000_000;
    let valid_for_us = status.valid_for.as_micros().min(CENTURY_US) as u64;
    let data = match status.lock_data.as_deref() {
        Some(data) if status.busy => data,
        _ => "",
    };
    let busy = status.busy;
    let (key, seq) = (key.as_bytes(), seq_digits(status.seq));
    let data_len = if data.is_empty() { 0 } else { data.len() + 1 };
    let mut command =
        redis::Cmd::with_capacity(12, 180 + 3 * key.len() + instance.len() + data_len);
    command
        .arg("EVALSHA")
        .arg(sha)
        .arg(2)
        .arg(Joined([HASH_PREFIX.as_bytes(), key]))
        .arg(Joined([b"{", HASH_PREFIX.as_bytes(), key, b"}:seq"]))
        .arg(instance)
        .arg(&seq[..]);
    if busy {
        // The validity's whole seconds plus those from the .NET epoch to the Unix epoch (the
        // script adds `TIME`'s Unix seconds), and its sub-second microseconds.
        command
            .arg("1")
            .arg(DOTNET_EPOCH_TO_UNIX_SECS + valid_for_us / 1_000_000)
            .arg(valid_for_us % 1_000_000);
    } else {
        // An idle entry's validUntil is never judged (only busy entries expire), so the
        // script takes it as it is, stamped here on this host's clock: that spares the
        // server the number formatting, about a fifth of the script's time.
        let ticks = StoreTime::now_system()
            .saturating_add(status.valid_for)
            .to_dotnet_ticks();
        command.arg("0").arg(ticks).arg(0);
    }
    if data.is_empty() {
        command.arg("");
    } else {
        command.arg(Joined([b";", data.as_bytes()]));
    }
    command.arg(Joined([CHANNEL_PREFIX.as_bytes(), key]));
    command
}

/// Seconds from 0001-01-01 (.NET's `DateTime` epoch) to the Unix epoch.
const DOTNET_EPOCH_TO_UNIX_SECS: u64 = 62_135_596_800;

const CHANNEL_PREFIX: &str = "ReactiveLock:Redis:HashSetNotifier:";
/// Our notification payloads: `RLv2\n{instance}\n{seq}\n{unix seconds}\n{microseconds}\n{value}`
/// (the server's clock as `TIME` returns it). `RLv1` carried the clock as .NET ticks, which
/// the script had to compute; it is still accepted from instances of earlier versions.
const PAYLOAD_MAGIC: &str = "RLv2";
const PAYLOAD_MAGIC_V1: &str = "RLv1";

/// TIME + ordered HSET + PUBLISH in one atomic step. Lua numbers are doubles, so .NET ticks
/// (~6.4e17, beyond 2^53) are built as strings from exact parts: whole seconds since
/// 0001-01-01 (~6.4e10, printed exactly by Lua's `%.14g` number-to-string) and the 7-digit
/// sub-second tick count. Every number printed costs the script some 0.3–0.5 µs (and
/// `string.format` ~0.75 µs, a library call ~0.2 µs), so the script prints as little as it
/// can:
/// * a busy status's validity comes as whole seconds already offset to the .NET epoch
///   (`ARGV[4]`) and sub-second microseconds (`ARGV[5]`). With whole seconds (`0`, the usual
///   case) the sub-second ticks are `TIME`'s microseconds as they are, zero-padded by a
///   string operation: one number printed in all. Otherwise the microseconds are summed
///   with a carry, and a second number is printed;
/// * an idle status's validUntil comes ready (`ARGV[4]`): it is never judged.
///
/// Sequences are compared as zero-padded 20-digit strings for the same reason. A status
/// older than the one held is not written: the script returns the held sequence (a string;
/// `1` means written), so the caller can continue above it. They live in
/// a hash beside the .NET one, with no expiry, as the .NET hash's fields have none.
/// The notification carries `TIME`'s two numbers as they are, and the lock data comes
/// ready to append (`;data`, or empty).
pub(crate) const PUBLISH_SCRIPT: &str = r#"
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held and held > ARGV[2] then return held end
local t = redis.call('TIME')
local value
if ARGV[3] == '0' then
  value = '0;' .. ARGV[4]
elseif ARGV[5] == '0' then
  value = '1;' .. (t[1] + ARGV[4]) .. string.sub('00000' .. t[2], -6) .. '0' .. ARGV[6]
else
  local s, us = t[1] + ARGV[4], t[2] + ARGV[5]
  if us >= 1000000 then s, us = s + 1, us - 1000000 end
  value = '1;' .. s .. string.sub(us + 1000000, 2) .. '0' .. ARGV[6]
end
redis.call('HSET', KEYS[1], ARGV[1], value)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[7], 'RLv2\n' .. ARGV[1] .. '\n' .. ARGV[2] .. '\n' .. t[1] .. '\n' .. t[2] .. '\n' .. value)
return 1
"#;

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
}

impl RedisBackendBuilder {
    /// Trusts this root certificate (PEM) for `rediss://` URLs instead of the system's
    /// trust store — for servers with a private CA or a self-signed certificate.
    pub fn tls_root_cert(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_cert = Some(pem.into());
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
        let address = redact(&self.url);
        for (field, d) in [
            ("connect_timeout", self.connect_timeout),
            ("response_timeout", self.response_timeout),
            ("health_check_interval", self.health_check_interval),
        ] {
            if !(reactive_lock::MIN_DURATION..=reactive_lock::MAX_DURATION).contains(&d) {
                return Err(BackendError::new(
                    BackendErrorKind::Rejected,
                    format!(
                        "invalid Redis option `{field}`: must be between {:?} and {:?}, got {d:?}",
                        reactive_lock::MIN_DURATION,
                        reactive_lock::MAX_DURATION
                    ),
                ));
            }
        }
        // rustls needs one process-wide crypto provider; if the application has not picked
        // one (or enabled several), use ring rather than panic on the first TLS handshake.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let invalid = |e: RedisError| {
            BackendError::new(
                BackendErrorKind::Rejected,
                format!("invalid Redis URL `{address}`: {e}"),
            )
            .with_source(e)
        };
        let target = if self.cluster_nodes.is_empty() {
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
            // Subscriptions speak RESP3: their messages arrive as pushes through a callback
            // on the connection's task, where echoes of the instance's own publishes are
            // dropped before they wake anyone (a RESP2 pub/sub connection hands every
            // message to the subscriber's thread first).
            let info = client.get_connection_info().clone();
            let resp3 = info
                .redis_settings()
                .clone()
                .set_protocol(redis::ProtocolVersion::RESP3);
            let subscriber =
                Box::new(Client::open(info.set_redis_settings(resp3)).map_err(invalid)?);
            Target::Single { client, subscriber }
        } else {
            let params = ClusterParams {
                nodes: self.cluster_nodes.clone(),
                root_cert: self.tls_root_cert.clone(),
                connect_timeout: self.connect_timeout,
                response_timeout: self.response_timeout,
            };
            let client = params.builder().build().map_err(invalid)?;
            Target::Cluster {
                client: Box::new(client),
                params,
            }
        };
        let backend = RedisBackend {
            inner: Arc::new(Inner {
                target,
                address,
                connect_timeout: self.connect_timeout,
                response_timeout: self.response_timeout,
                health_check_interval: self.health_check_interval,
                connection: async_lock::Mutex::new(None),
                script: Script::new(PUBLISH_SCRIPT),
                malformed: AtomicU64::new(0),
                malformed_seen: Mutex::new(HashSet::new()),
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

/// Where the commands and the subscription go.
enum Target {
    Single {
        client: Client,
        /// The same server, speaking RESP3, for subscriptions.
        subscriber: Box<Client>,
    },
    /// The command client; subscriptions build their own (the push sender is fixed per client).
    Cluster {
        client: Box<ClusterClient>,
        params: ClusterParams,
    },
}

#[derive(Clone)]
struct ClusterParams {
    nodes: Vec<String>,
    root_cert: Option<Vec<u8>>,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl ClusterParams {
    fn builder(&self) -> ClusterClientBuilder {
        let mut builder = ClusterClientBuilder::new(self.nodes.clone())
            .connection_timeout(self.connect_timeout)
            .response_timeout(self.response_timeout)
            .retries(2);
        if let Some(root_cert) = &self.root_cert {
            builder = builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert.clone()),
            });
        }
        builder
    }
}

/// The command connection: a multiplexed connection to one server, or a cluster connection
/// that routes each command (and each pipeline, by its first key) to the slot's master.
#[derive(Clone)]
enum Commands {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Commands {
    /// SUBSCRIBE through the connection's own method, which remembers the channels (a
    /// cluster connection renews them after reconnects).
    async fn subscribe(&mut self, channels: &[String]) -> redis::RedisResult<()> {
        match self {
            Commands::Single(c) => c.subscribe(channels).await,
            Commands::Cluster(c) => c.subscribe(channels).await,
        }
    }
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Commands::Single(c) => c.req_packed_command(cmd),
            Commands::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Commands::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Commands::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Single(c) => c.get_db(),
            Commands::Cluster(c) => c.get_db(),
        }
    }
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
    malformed: AtomicU64,
    /// Malformed (key, field, value) already logged, so each is logged once. Bounded.
    malformed_seen: Mutex<HashSet<(String, String, Vec<u8>)>>,
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
        }
    }

    /// The server's address as given (without the password).
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// Counters: malformed entries ignored, notifications applied, re-reads.
    pub fn stats(&self) -> RedisStats {
        RedisStats {
            malformed_entries: self.inner.malformed.load(Ordering::Relaxed),
            notifications_applied: self.inner.notifications_applied.load(Ordering::Relaxed),
            rereads: self.inner.rereads.load(Ordering::Relaxed),
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

    fn malformed(&self, key: &str, field: &str, value: &[u8], why: &str) {
        self.inner.malformed.fetch_add(1, Ordering::Relaxed);
        let mut seen = self.inner.malformed_seen.lock();
        if seen.len() < 1024 && seen.insert((key.into(), field.into(), value.to_vec())) {
            tracing::warn!(
                key,
                field,
                value = %String::from_utf8_lossy(&value[..value.len().min(200)]),
                why,
                "reactive-lock: ignoring a malformed Redis entry"
            );
        }
    }

    /// Reads `key`: HGETALL of the entries and of the sequences, and TIME, in one
    /// MULTI/EXEC: a publish script run between the two reads would pair one status's value
    /// with another's sequence (and the newer status would then be ignored as old).
    async fn read(&self, key: &str) -> Result<Snapshot, BackendError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HGETALL")
            .arg(hash_name(key))
            .cmd("HGETALL")
            .arg(seq_hash_name(key))
            .cmd("TIME");
        let (entries, seqs, time): ReadReply = self
            .on_command_connection("HGETALL", |mut connection| {
                let pipe = &pipe;
                async move { pipe.query_async(&mut connection).await }
            })
            .await?;
        let store_now = StoreTime::from_unix_nanos(
            time.0
                .saturating_mul(1_000_000_000)
                .saturating_add(time.1.saturating_mul(1_000)),
        );
        let mut out = Vec::with_capacity(entries.len());
        for (field, value) in entries {
            let Ok(instance) = String::from_utf8(field.clone()) else {
                self.malformed(
                    key,
                    &String::from_utf8_lossy(&field),
                    &value,
                    "instance name is not UTF-8",
                );
                continue;
            };
            match parse_value(&value) {
                Ok((busy, valid_until, data)) => {
                    let seq = seqs
                        .iter()
                        .find(|(i, _)| *i == instance)
                        .and_then(|(_, s)| s.parse().ok())
                        .unwrap_or(0);
                    out.push(Entry::new(instance, busy, data, valid_until).with_seq(seq));
                }
                Err(why) => self.malformed(key, &instance, &value, why),
            }
        }
        Ok(Snapshot::new(key, out, store_now))
    }

    /// Turns one pub/sub message into an event: ours is applied as is (echoes of the
    /// subscriber's own publishes never get here: `own_echo_filter`); anything else makes us
    /// re-read the key (a .NET writer's bare value) or is ignored (malformed).
    async fn event_for(&self, channel: &str, payload: &[u8]) -> Option<BackendEvent> {
        let key = channel.strip_prefix(CHANNEL_PREFIX)?;
        match parse_payload(payload) {
            Payload::Ours {
                instance,
                seq,
                store_now,
                busy,
                valid_until,
                data,
            } => {
                self.inner
                    .notifications_applied
                    .fetch_add(1, Ordering::Relaxed);
                Some(BackendEvent::Update {
                    key: key.into(),
                    entry: Entry::new(instance, busy, data, valid_until).with_seq(seq),
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

/// Entries and notifications longer than this are ignored as malformed: lock data is a
/// short label, and a huge value is a sign of something else writing into the hash.
pub const MAX_VALUE_LEN: usize = 64 * 1024;

/// Reply of the read pipeline: raw entries (fields and values may be any bytes), sequences,
/// and `TIME` (seconds, microseconds).
type ReadReply = (Vec<(Vec<u8>, Vec<u8>)>, Vec<(String, String)>, (u64, u64));

/// Parses a .NET value `"{1|0};{ticks}[;{data}]"`.
fn parse_value(value: &[u8]) -> Result<(bool, StoreTime, Option<String>), &'static str> {
    if value.len() > MAX_VALUE_LEN {
        return Err("value longer than MAX_VALUE_LEN");
    }
    let text = std::str::from_utf8(value).map_err(|_| "value is not UTF-8")?;
    let mut parts = text.splitn(3, ';');
    let busy = match parts.next() {
        Some("1") => true,
        Some("0") => false,
        _ => return Err("flag is neither 1 nor 0"),
    };
    let ticks: u64 = parts
        .next()
        .ok_or("missing validUntil")?
        .parse()
        .map_err(|_| "validUntil is not a number")?;
    let valid_until = StoreTime::from_dotnet_ticks(ticks).ok_or("validUntil out of range")?;
    let data = parts.next().map(String::from);
    Ok((busy, valid_until, data))
}

enum Payload {
    Ours {
        instance: String,
        seq: u64,
        store_now: StoreTime,
        busy: bool,
        valid_until: StoreTime,
        data: Option<String>,
    },
    Foreign,
    Malformed(&'static str),
}

fn parse_payload(payload: &[u8]) -> Payload {
    if payload.len() > MAX_VALUE_LEN + 256 {
        return Payload::Malformed("notification longer than MAX_VALUE_LEN");
    }
    let Ok(text) = std::str::from_utf8(payload) else {
        return if payload.starts_with(PAYLOAD_MAGIC.as_bytes()) {
            Payload::Malformed("notification is not UTF-8")
        } else {
            Payload::Foreign
        };
    };
    let (magic, rest) = text.split_once('\n').unwrap_or((text, ""));
    let v1 = match magic {
        PAYLOAD_MAGIC => false,
        PAYLOAD_MAGIC_V1 => true,
        _ => return Payload::Foreign,
    };
    // The value comes last: lock data may hold newlines.
    let mut parts = rest.splitn(if v1 { 4 } else { 5 }, '\n');
    let (Some(instance), Some(seq), Some(now)) = (parts.next(), parts.next(), parts.next()) else {
        return Payload::Malformed("notification has missing fields");
    };
    let Ok(seq) = seq.parse::<u64>() else {
        return Payload::Malformed("notification sequence is not a number");
    };
    let store_now = if v1 {
        now.parse::<u64>()
            .ok()
            .and_then(StoreTime::from_dotnet_ticks)
    } else {
        // `TIME`'s seconds and microseconds.
        parts
            .next()
            .and_then(|micros| Some((now.parse::<u64>().ok()?, micros.parse::<u64>().ok()?)))
            .filter(|&(_, micros)| micros < 1_000_000)
            .and_then(|(secs, micros)| {
                secs.checked_mul(1_000_000_000)?
                    .checked_add(micros * 1_000)
                    .map(StoreTime::from_unix_nanos)
            })
    };
    let Some(store_now) = store_now else {
        return Payload::Malformed("notification clock is not a valid time");
    };
    let Some(value) = parts.next() else {
        return Payload::Malformed("notification has missing fields");
    };
    match parse_value(value.as_bytes()) {
        Ok((busy, valid_until, data)) => Payload::Ours {
            instance: instance.into(),
            seq,
            store_now,
            busy,
            valid_until,
            data,
        },
        Err(why) => Payload::Malformed(why),
    }
}

/// Whether a Redis error is transient ([`BackendErrorKind::Unavailable`]): the connection
/// (lost, refused, timed out) or a server or cluster state that passes by itself — a
/// failover or resharding (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`,
/// `READONLY` from a demoted primary), a server still loading its data (`LOADING`), busy
/// with a script (`BUSY`) or out of memory (`OOM`). Everything else (authentication, a
/// malformed request, a missing permission) is a refusal.
fn is_transient(e: &RedisError) -> bool {
    if matches!(
        e.kind(),
        redis::ErrorKind::AuthenticationFailed | redis::ErrorKind::InvalidClientConfig
    ) {
        return false;
    }
    const TRANSIENT_CODES: [&str; 9] = [
        "MOVED",
        "ASK",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "MASTERDOWN",
        "READONLY",
        "LOADING",
        "BUSY",
        "OOM",
    ];
    is_broken_connection(e)
        || e.is_timeout()
        || e.is_connection_refusal()
        || e.code().is_some_and(|code| TRANSIENT_CODES.contains(&code))
}

/// Whether the connection under a call is gone (a new one would do).
fn is_broken_connection(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!(
                "{}://{}{}",
                &url[..scheme_end],
                if user.is_empty() {
                    String::new()
                } else {
                    format!("{user}:***")
                },
                &url[at..]
            )
        }
        _ => url.into(),
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
        let (tx, pushes) = async_channel::unbounded();
        let filter = own_echo_filter(instance, tx);
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
        // In slices: each SUBSCRIBE's reply is one confirmation per channel, and 10,000 at
        // once left ~5 MB of transient allocations in the heap (`mem` bench).
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
            source: Source { connection, pushes },
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

/// A subscription's connection and the messages its push callback passed on.
struct Source {
    connection: Commands,
    pushes: async_channel::Receiver<redis::PushInfo>,
}

/// Channels per `SUBSCRIBE` command.
const SUBSCRIBE_SLICE: usize = 256;

/// One delivered message: channel and payload.
type Message = (String, Vec<u8>);

/// The push sender of a subscription: passes messages and disconnections on, except echoes of
/// `instance`'s own publishes (`RLv2\n<instance>\n...`), dropped here on the connection's
/// task so that the subscriber's thread is not woken for them. Instance names never contain a newline
/// (`publish` rejects them), so the prefix match is exact.
fn own_echo_filter(
    instance: &str,
    tx: async_channel::Sender<redis::PushInfo>,
) -> impl Fn(redis::PushInfo) -> Result<(), redis::aio::SendError> + Send + Sync + 'static {
    let mut prefix = format!("{PAYLOAD_MAGIC}\n{instance}\n").into_bytes();
    prefix.shrink_to_fit();
    move |info: redis::PushInfo| {
        let pass = match info.kind {
            redis::PushKind::Message => !matches!(
                info.data.as_slice(),
                [_, redis::Value::BulkString(payload), ..] if payload.starts_with(&prefix)
            ),
            redis::PushKind::Disconnection => true,
            // Subscribe confirmations and the like (one per channel: 10,000 for 10,000
            // keys) would only be queued to be dropped by the reader.
            _ => false,
        };
        if !pass {
            return Ok(());
        }
        tx.try_send(info).map_err(|_| redis::aio::SendError)
    }
}

impl Source {
    /// The next pub/sub message; `None` when the connection is gone.
    async fn next_message(&mut self) -> Option<Message> {
        loop {
            let push = self.pushes.recv().await.ok()?;
            match push.kind {
                redis::PushKind::Message => {
                    if let [
                        redis::Value::BulkString(channel),
                        redis::Value::BulkString(payload),
                        ..,
                    ] = push.data.as_slice()
                    {
                        return Some((
                            String::from_utf8_lossy(channel).into_owned(),
                            payload.clone(),
                        ));
                    }
                }
                redis::PushKind::Disconnection => return None,
                _ => {}
            }
        }
    }

    async fn ping(&mut self) -> bool {
        redis::cmd("PING")
            .query_async::<String>(&mut self.connection)
            .await
            .is_ok()
    }
}

/// A subscription's registration as its instance's publish connection; dropping it (the
/// subscription ended) takes the connection back out, unless a newer subscription of the
/// same instance has replaced it.
struct OwnConnection {
    inner: Arc<Inner>,
    instance: String,
    id: u64,
}

impl OwnConnection {
    fn forget(inner: &Inner, instance: &str, id: u64) {
        let mut own = inner.own.lock();
        if own.get(instance).is_some_and(|(held, _)| *held == id) {
            own.remove(instance);
        }
    }
}

impl Drop for OwnConnection {
    fn drop(&mut self) {
        Self::forget(&self.inner, &self.instance, self.id);
    }
}

struct Subscription {
    backend: RedisBackend,
    /// This connection's role as the instance's publish connection; ends when the
    /// subscription does (dropped or disconnected).
    own: Option<OwnConnection>,
    source: Source,
    done: bool,
    /// One periodic timer for the whole subscription (registering a fresh timer per
    /// message would cost a reactor wake-up per notification).
    health_check: async_io::Timer,
    /// When the last message arrived: traffic proves the connection alive, so the server
    /// is pinged only after a full interval of silence.
    last_message: std::time::Instant,
}

enum Woke {
    Message(Option<Message>),
    HealthCheck,
}

impl Subscription {
    /// Marks the stream ended (after its `Disconnected`) and stops publishing through it.
    fn end(&mut self) {
        self.done = true;
        self.own = None;
    }

    /// The next event; after `Disconnected` the stream ends and the driver resubscribes.
    async fn next(mut self) -> Option<(BackendEvent, Self)> {
        if self.done {
            return None;
        }
        loop {
            let (source, health_check) = (&mut self.source, &mut self.health_check);
            let woke = futures_lite::future::or(
                async { Woke::Message(source.next_message().await) },
                async {
                    health_check.next().await;
                    Woke::HealthCheck
                },
            )
            .await;
            match woke {
                Woke::Message(Some((channel, payload))) => {
                    self.last_message = std::time::Instant::now();
                    if let Some(event) = self.backend.event_for(&channel, &payload).await {
                        if matches!(event, BackendEvent::Disconnected) {
                            self.end();
                        }
                        return Some((event, self));
                    }
                }
                Woke::Message(None) => {
                    tracing::warn!(address = %self.backend.inner.address, "reactive-lock: Redis subscription closed");
                    self.end();
                    return Some((BackendEvent::Disconnected, self));
                }
                Woke::HealthCheck
                    if self.last_message.elapsed() < self.backend.inner.health_check_interval => {}
                Woke::HealthCheck => {
                    let timeout = self.backend.inner.response_timeout;
                    let source = &mut self.source;
                    let alive = futures_lite::future::or(async { source.ping().await }, async {
                        async_io::Timer::after(timeout).await;
                        false
                    })
                    .await;
                    if !alive {
                        tracing::warn!(address = %self.backend.inner.address, "reactive-lock: Redis stopped answering");
                        self.end();
                        return Some((BackendEvent::Disconnected, self));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_command_names_the_dotnet_keys_and_pads_the_sequence() {
        let args = |cmd: &redis::Cmd| -> Vec<Vec<u8>> {
            cmd.args_iter()
                .map(|arg| match arg {
                    redis::Arg::Simple(bytes) => bytes.to_vec(),
                    other => format!("<{other:?}>").into_bytes(),
                })
                .collect()
        };
        let expected = |seq: &str, busy: &str, until: &str, sub: &str, data: &str| {
            [
                "EVALSHA",
                "0123abcd",
                "2",
                "ReactiveLock:Redis:HashSet:payments",
                "{ReactiveLock:Redis:HashSet:payments}:seq",
                "api-1",
                seq,
                busy,
                until,
                sub,
                data,
                "ReactiveLock:Redis:HashSetNotifier:payments",
            ]
            .iter()
            .map(|a| a.as_bytes().to_vec())
            .collect::<Vec<_>>()
        };
        let valid_for = Duration::from_secs(10);
        let busy = InstanceStatus::busy(Some("b-7".into()), 42, valid_for);
        let busy = publish_command("0123abcd", "payments", "api-1", &busy);
        let seq = "00000000000000000042";
        assert_eq!(args(&busy), expected(seq, "1", "62135596810", "0", ";b-7"));
        // Sub-second validity: the microseconds apart, for the script to carry.
        let odd = InstanceStatus::busy(None, 42, Duration::from_micros(2_500_001));
        let odd = publish_command("0123abcd", "payments", "api-1", &odd);
        assert_eq!(args(&odd), expected(seq, "1", "62135596802", "500001", ""));
        // Idle: validUntil stamped here (on this host's clock), never judged.
        let before = StoreTime::now_system().saturating_add(valid_for);
        let idle = InstanceStatus::idle(u64::MAX, valid_for);
        let idle = publish_command("0123abcd", "payments", "api-1", &idle);
        let after = StoreTime::now_system().saturating_add(valid_for);
        let ticks: u64 = std::str::from_utf8(&args(&idle)[8])
            .unwrap()
            .parse()
            .unwrap();
        assert!((before.to_dotnet_ticks()..=after.to_dotnet_ticks()).contains(&ticks));
        let mut idle = args(&idle);
        idle[8] = b"ticks".to_vec();
        assert_eq!(
            idle,
            expected("18446744073709551615", "0", "ticks", "0", "")
        );
        // The names the rest of the backend uses (reads, subscriptions) are the same.
        assert_eq!(args(&busy)[3], hash_name("payments").into_bytes());
        assert_eq!(args(&busy)[4], seq_hash_name("payments").into_bytes());
        assert_eq!(args(&busy)[11], channel_name("payments").into_bytes());
    }

    #[test]
    fn sequences_compare_as_strings_in_numeric_order() {
        assert_eq!(&seq_digits(0), b"00000000000000000000");
        let seqs = [0, 9, 10, 1_764_570_000_000_000_001, u64::MAX - 1, u64::MAX];
        for pair in seqs.windows(2) {
            assert!(seq_digits(pair[0]) < seq_digits(pair[1]), "{pair:?}");
        }
    }

    #[test]
    fn parses_dotnet_values() {
        let t = StoreTime::from_unix_nanos(1_700_000_000_123_456_700);
        let ticks = t.to_dotnet_ticks();
        assert_eq!(
            parse_value(format!("1;{ticks};x;y").as_bytes()),
            Ok((true, t, Some("x;y".into())))
        );
        assert_eq!(
            parse_value(format!("0;{ticks}").as_bytes()),
            Ok((false, t, None))
        );
        assert!(parse_value(b"2;1").is_err());
        assert!(parse_value(b"1").is_err());
        assert!(parse_value(b"1;abc").is_err());
        assert!(parse_value(b"1;5").is_err(), "ticks before the Unix epoch");
        assert!(parse_value(&[0xff, 0xfe]).is_err());
        assert!(parse_value(format!("1;{}", u64::MAX).as_bytes()).is_err());
    }

    #[test]
    fn parses_payloads() {
        let now = StoreTime::from_unix_nanos(1_700_000_000_123_456_000);
        let v2 = format!(
            "RLv2\ni-1\n42\n1700000000\n123456\n1;{};data\nwith newline",
            now.to_dotnet_ticks() + 1
        );
        // Earlier versions' payloads: the clock in .NET ticks.
        let v1 = format!(
            "RLv1\ni-1\n42\n{}\n1;{};data\nwith newline",
            now.to_dotnet_ticks(),
            now.to_dotnet_ticks() + 1
        );
        for p in [v2, v1] {
            assert_parses_as_ours(&p, now);
        }
        assert!(matches!(
            parse_payload(b"1;638000000000000000;x"),
            Payload::Foreign
        ));
        assert!(matches!(
            parse_payload(b"RLv3\ni\n1\n1\n1\n1;1"),
            Payload::Foreign
        ));
        for malformed in [
            &b"RLv1\ni"[..],
            b"RLv1\ni\nx\n1\n1;1",
            b"RLv2\ni\n1\n1700000000\n1;1",
            b"RLv2\ni\n1\n1700000000\n1000000\n1;1",
            b"RLv2\ni\n1\nnow\n0\n1;1",
            b"RLv2\ni\n1\n18446744073709551615\n0\n1;1",
            b"RLv2\ni\n1\n1700000000\n5",
        ] {
            assert!(
                matches!(parse_payload(malformed), Payload::Malformed(_)),
                "{}",
                String::from_utf8_lossy(malformed)
            );
        }
    }

    fn assert_parses_as_ours(p: &str, now: StoreTime) {
        match parse_payload(p.as_bytes()) {
            Payload::Ours {
                instance,
                seq,
                store_now,
                busy,
                data,
                ..
            } => {
                assert_eq!(
                    (instance.as_str(), seq, store_now, busy),
                    ("i-1", 42, now, true)
                );
                assert_eq!(data.as_deref(), Some("data\nwith newline"));
            }
            _ => panic!("expected our payload: {p:?}"),
        }
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("redis://user:secret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact("redis://:secret@host"), "redis://@host");
        assert_eq!(redact("redis://host:1"), "redis://host:1");
    }
}
