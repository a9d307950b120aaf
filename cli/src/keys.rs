//! The subcommands that look at keys (`watch`, `inspect`, `wait`) and hold one (`hold`).
//!
//! `watch`, `inspect` and `wait` only read: they subscribe and read snapshots through the
//! backend directly, judging expiry on the store's clock as a registry does, and write
//! nothing into the store. `hold` is a registry instance like any other.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::{Stream, StreamExt};
use reactive_lock::{
    Backend, BackendError, BackendEvent, Entry, InstanceStatus, ReactiveLock, Snapshot, StoreTime,
    TrackerConfig,
};
use reactive_lock_backends::grpc::GrpcBackend;
use reactive_lock_backends::redis::RedisBackend;

/// Where the keys live: `--redis` or `--grpc`, with what those backends need.
#[derive(clap::Args, Debug)]
pub(crate) struct BackendArgs {
    /// Redis URL (`redis://` or `rediss://`); give it several times for a cluster's seed
    /// nodes.
    #[arg(
        long,
        value_name = "URL",
        required_unless_present = "grpc",
        conflicts_with = "grpc"
    )]
    redis: Vec<String>,
    /// Hub URL (`http://` or `https://`); give it several times for several hubs.
    #[arg(long, value_name = "URL")]
    grpc: Vec<String>,
    /// Bearer token for the hubs (`--grpc`).
    #[arg(
        long,
        env = "REACTIVE_LOCK_HUB_TOKEN",
        hide_env_values = true,
        requires = "grpc"
    )]
    token: Option<String>,
    /// PEM root certificate to trust for `rediss://` or `https://` (a private CA).
    #[arg(long, value_name = "FILE")]
    tls_root_cert: Option<PathBuf>,
}

impl BackendArgs {
    pub(crate) async fn connect(&self) -> Result<AnyBackend, String> {
        let root = match &self.tls_root_cert {
            None => None,
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| format!("--tls-root-cert {}: {e}", path.display()))?,
            ),
        };
        if !self.grpc.is_empty() {
            let mut builder = GrpcBackend::builder(self.grpc.iter().cloned());
            if let Some(token) = &self.token {
                builder = builder.token(token.clone());
            }
            if let Some(root) = root {
                builder = builder.tls_root_cert(root);
            }
            return builder
                .connect()
                .await
                .map(AnyBackend::Grpc)
                .map_err(one_line);
        }
        let backend = match self.redis.as_slice() {
            [url] => {
                let mut builder = RedisBackend::builder(url);
                if let Some(root) = root {
                    builder = builder.tls_root_cert(root);
                }
                builder.connect().await
            }
            seeds => RedisBackend::connect_cluster(seeds.iter().cloned()).await,
        };
        backend.map(AnyBackend::Redis).map_err(one_line)
    }
}

fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string().replace('\n', " ")
}

/// The backend the command line was given.
#[derive(Clone, Debug)]
pub(crate) enum AnyBackend {
    Redis(RedisBackend),
    Grpc(GrpcBackend),
}

impl Backend for AnyBackend {
    type Events = Pin<Box<dyn Stream<Item = BackendEvent> + Send>>;

    async fn publish(
        &self,
        key: &str,
        instance: &str,
        status: &InstanceStatus,
    ) -> Result<(), BackendError> {
        match self {
            AnyBackend::Redis(b) => b.publish(key, instance, status).await,
            AnyBackend::Grpc(b) => b.publish(key, instance, status).await,
        }
    }

    async fn snapshot(&self, key: &str) -> Result<Snapshot, BackendError> {
        match self {
            AnyBackend::Redis(b) => b.snapshot(key).await,
            AnyBackend::Grpc(b) => b.snapshot(key).await,
        }
    }

    async fn subscribe(
        &self,
        instance: &str,
        keys: &[String],
    ) -> Result<Self::Events, BackendError> {
        Ok(match self {
            AnyBackend::Redis(b) => Box::pin(b.subscribe(instance, keys).await?),
            AnyBackend::Grpc(b) => Box::pin(b.subscribe(instance, keys).await?),
        })
    }

    fn spawn_driver(&self, driver: reactive_lock::Driver) -> Option<reactive_lock::Driver> {
        match self {
            AnyBackend::Redis(b) => b.spawn_driver(driver),
            AnyBackend::Grpc(b) => b.spawn_driver(driver),
        }
    }

    fn runs_io_on_this_thread(&self) -> bool {
        match self {
            AnyBackend::Redis(b) => b.runs_io_on_this_thread(),
            AnyBackend::Grpc(b) => b.runs_io_on_this_thread(),
        }
    }
}

/// A key's status as the command line reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Unblocked,
    Blocked,
    Unknown,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Unblocked => "unblocked",
            Status::Blocked => "blocked",
            Status::Unknown => "unknown",
        }
    }
}

/// One key as last read, with the local instant its store clock was true at, so expiry is
/// judged on the store's clock advanced by local time (as a registry judges it).
struct KeyView {
    snapshot: Option<Snapshot>,
    read_at: Instant,
    /// The subscription to this key (or the whole backend) is down.
    lost: bool,
}

impl KeyView {
    fn store_now(&self, now: Instant) -> Option<StoreTime> {
        let snapshot = self.snapshot.as_ref()?;
        Some(
            snapshot
                .store_now
                .saturating_add(now.saturating_duration_since(self.read_at)),
        )
    }

    fn status(&self, now: Instant) -> Status {
        match (self.lost, self.store_now(now), &self.snapshot) {
            (false, Some(store_now), Some(snapshot)) => {
                if snapshot.entries.iter().any(|e| e.is_busy_at(store_now)) {
                    Status::Blocked
                } else {
                    Status::Unblocked
                }
            }
            _ => Status::Unknown,
        }
    }

    /// Busy, unexpired entries, by instance name.
    fn busy(&self, now: Instant) -> Vec<&Entry> {
        let (Some(store_now), Some(snapshot)) = (self.store_now(now), &self.snapshot) else {
            return Vec::new();
        };
        let mut busy: Vec<&Entry> = snapshot
            .entries
            .iter()
            .filter(|e| e.is_busy_at(store_now))
            .collect();
        busy.sort_by(|a, b| a.instance.cmp(&b.instance));
        busy
    }

    /// When the earliest entry busy at `now` expires, on the local clock. Judged on the
    /// store clock advanced to `now`, as `status` judges: an entry already expired stays in
    /// the snapshot (a killed holder's, until something writes the key), and an instant
    /// of its expiry, in the past, would wake the caller at once, again and again.
    fn next_expiry(&self, now: Instant) -> Option<Instant> {
        let store_now = self.store_now(now)?;
        self.snapshot
            .as_ref()?
            .entries
            .iter()
            .filter(|e| e.is_busy_at(store_now))
            .map(|e| e.valid_until.duration_since(store_now))
            .min()
            .and_then(|left| now.checked_add(left))
    }

    fn apply_update(&mut self, entry: Entry, store_now: StoreTime) {
        let now = Instant::now();
        let Some(snapshot) = &mut self.snapshot else {
            return;
        };
        // Entries are judged against the newest clock: bring the read's forward first.
        snapshot.store_now = store_now;
        self.read_at = now;
        match snapshot
            .entries
            .iter_mut()
            .find(|e| e.instance == entry.instance)
        {
            Some(held) if entry.seq != 0 && held.seq > entry.seq => {}
            Some(held) => *held = entry,
            None => snapshot.entries.push(entry),
        }
    }
}

/// What `watch`, `inspect` and `wait` print.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    pub(crate) json: bool,
}

impl Output {
    fn print(&self, key: &str, view: &KeyView) {
        let now = Instant::now();
        let status = view.status(now);
        let busy = view.busy(now);
        let at = humantime::format_rfc3339_millis(SystemTime::now());
        if self.json {
            let instances: Vec<serde_json::Value> = busy
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "instance": e.instance,
                        "busy": true,
                        "lock_data": e.lock_data,
                        "valid_until": rfc3339(e.valid_until),
                    })
                })
                .collect();
            let line = serde_json::json!({
                "at": at.to_string(),
                "key": key,
                "status": status.as_str(),
                "instances": instances,
            });
            println!("{line}");
        } else {
            let mut line = format!("{at} {key} {}", status.as_str());
            for e in busy {
                line.push_str(&format!(
                    "; {} busy until {}",
                    e.instance,
                    rfc3339(e.valid_until)
                ));
                if let Some(data) = &e.lock_data {
                    line.push_str(&format!(" ({data})"));
                }
            }
            println!("{line}");
        }
    }
}

fn rfc3339(t: StoreTime) -> String {
    let at = UNIX_EPOCH + Duration::from_nanos(t.as_unix_nanos());
    humantime::format_rfc3339_millis(at).to_string()
}

/// The keys, read once and then followed through a subscription.
struct Keys {
    backend: AnyBackend,
    /// The name it subscribes under, again after a lost subscription.
    observer: String,
    names: Vec<String>,
    views: HashMap<String, KeyView>,
    events: Option<<AnyBackend as Backend>::Events>,
}

/// The instance name the read-only commands subscribe under; own echoes are what a
/// subscriber may skip, and nothing is ever published under it.
fn observer_name(what: &str) -> String {
    format!("reactive-lock-{what}-{}", std::process::id())
}

impl Keys {
    async fn open(backend: AnyBackend, names: Vec<String>, what: &str) -> Result<Self, String> {
        let observer = observer_name(what);
        let events = backend
            .subscribe(&observer, &names)
            .await
            .map_err(one_line)?;
        let mut keys = Keys {
            backend,
            observer,
            names,
            views: HashMap::new(),
            events: Some(events),
        };
        keys.read_all().await.map_err(one_line)?;
        Ok(keys)
    }

    async fn read_all(&mut self) -> Result<(), BackendError> {
        for name in &self.names {
            let snapshot = self.backend.snapshot(name).await?;
            self.views.insert(
                name.clone(),
                KeyView {
                    snapshot: Some(snapshot),
                    read_at: Instant::now(),
                    lost: false,
                },
            );
        }
        Ok(())
    }

    fn all_unblocked(&self) -> bool {
        let now = Instant::now();
        self.views
            .values()
            .all(|v| v.status(now) == Status::Unblocked)
    }

    fn next_expiry(&self) -> Option<Instant> {
        let now = Instant::now();
        self.views.values().filter_map(|v| v.next_expiry(now)).min()
    }

    /// Waits for the next event or expiry; returns the keys that may have changed.
    async fn next_change(&mut self) -> Vec<String> {
        let expiry = self.next_expiry();
        let event = {
            let events = &mut self.events;
            futures_lite::future::or(
                async {
                    match events {
                        Some(events) => Some(events.next().await),
                        None => futures_lite::future::pending().await,
                    }
                },
                async {
                    match expiry {
                        // Just past the expiry, so the entry is judged expired.
                        Some(at) => {
                            async_io::Timer::at(at + Duration::from_millis(1)).await;
                        }
                        None => futures_lite::future::pending::<()>().await,
                    }
                    None
                },
            )
            .await
        };
        match event {
            None => self.names.clone(),
            Some(None) => {
                // The stream ended: subscribe again, keys Unknown meanwhile.
                for view in self.views.values_mut() {
                    view.lost = true;
                }
                self.events = None;
                self.resubscribe().await;
                self.names.clone()
            }
            Some(Some(event)) => self.apply(event).await,
        }
    }

    async fn resubscribe(&mut self) {
        let mut delay = Duration::from_millis(100);
        loop {
            if let Ok(events) = self.backend.subscribe(&self.observer, &self.names).await
                && self.read_all().await.is_ok()
            {
                self.events = Some(events);
                return;
            }
            async_io::Timer::after(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn apply(&mut self, event: BackendEvent) -> Vec<String> {
        match event {
            BackendEvent::Snapshot(snapshot) => {
                let key = snapshot.key.clone();
                self.views.insert(
                    key.clone(),
                    KeyView {
                        snapshot: Some(snapshot),
                        read_at: Instant::now(),
                        lost: false,
                    },
                );
                vec![key]
            }
            BackendEvent::Update {
                key,
                entry,
                store_now,
            } => {
                if let Some(view) = self.views.get_mut(&key) {
                    view.apply_update(entry, store_now);
                }
                vec![key]
            }
            BackendEvent::Disconnected => {
                for view in self.views.values_mut() {
                    view.lost = true;
                }
                self.names.clone()
            }
            BackendEvent::KeyDisconnected(key) => {
                if let Some(view) = self.views.get_mut(&key) {
                    view.lost = true;
                }
                vec![key]
            }
            BackendEvent::Reconnected => {
                if self.read_all().await.is_err() {
                    return Vec::new();
                }
                self.names.clone()
            }
            // An event this version does not know: read everything again.
            _ => {
                let _ = self.read_all().await;
                self.names.clone()
            }
        }
    }
}

/// `watch`: the current state, then every change, until SIGINT/SIGTERM.
pub(crate) async fn watch(
    backend: AnyBackend,
    names: Vec<String>,
    output: Output,
) -> Result<ExitCode, String> {
    let stop = crate::shutdown_signal()?;
    let mut keys = Keys::open(backend, names, "watch").await?;
    // What was printed last per key: a line only when status or busy instances change.
    let mut shown: HashMap<String, String> = HashMap::new();
    let mut show = |keys: &Keys, which: &[String]| {
        let now = Instant::now();
        for key in which {
            let Some(view) = keys.views.get(key) else {
                continue;
            };
            let seen = format!(
                "{:?} {:?}",
                view.status(now),
                view.busy(now)
                    .iter()
                    .map(|e| (&e.instance, &e.lock_data, e.valid_until))
                    .collect::<Vec<_>>()
            );
            if shown.get(key) != Some(&seen) {
                output.print(key, view);
                shown.insert(key.clone(), seen);
            }
        }
    };
    let all = keys.names.clone();
    show(&keys, &all);
    let mut stop = std::pin::pin!(stop);
    loop {
        let changed = futures_lite::future::or(async { Some(keys.next_change().await) }, async {
            (&mut stop).await;
            None
        })
        .await;
        match changed {
            Some(changed) => show(&keys, &changed),
            None => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// `inspect`: one read of every key, printed; the exit code says the worst status.
pub(crate) async fn inspect(
    backend: AnyBackend,
    names: Vec<String>,
    output: Output,
) -> Result<ExitCode, String> {
    let mut worst = Status::Unblocked;
    for name in &names {
        let view = match backend.snapshot(name).await {
            Ok(snapshot) => KeyView {
                snapshot: Some(snapshot),
                read_at: Instant::now(),
                lost: false,
            },
            Err(e) => {
                eprintln!("reactive-lock: {name}: {}", one_line(e));
                KeyView {
                    snapshot: None,
                    read_at: Instant::now(),
                    lost: true,
                }
            }
        };
        output.print(name, &view);
        worst = match (worst, view.status(Instant::now())) {
            (_, Status::Unknown) | (Status::Unknown, _) => Status::Unknown,
            (_, Status::Blocked) | (Status::Blocked, _) => Status::Blocked,
            _ => Status::Unblocked,
        };
    }
    Ok(ExitCode::from(match worst {
        Status::Unblocked => 0,
        Status::Blocked => 1,
        Status::Unknown => 2,
    }))
}

/// `wait`: returns once every key is unblocked everywhere (0), or after the timeout (1).
pub(crate) async fn wait(
    backend: AnyBackend,
    names: Vec<String>,
    timeout: Option<Duration>,
) -> Result<ExitCode, String> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let mut keys = Keys::open(backend, names, "wait").await?;
    loop {
        if keys.all_unblocked() {
            return Ok(ExitCode::SUCCESS);
        }
        let in_time = futures_lite::future::or(
            async {
                keys.next_change().await;
                true
            },
            async {
                match deadline {
                    Some(at) => async_io::Timer::at(at).await,
                    None => futures_lite::future::pending().await,
                };
                false
            },
        )
        .await;
        if !in_time {
            let blocked: Vec<&str> = keys
                .names
                .iter()
                .filter(|k| keys.views[*k].status(Instant::now()) != Status::Unblocked)
                .map(String::as_str)
                .collect();
            eprintln!(
                "reactive-lock: still blocked after {}: {}",
                humantime::format_duration(timeout.unwrap_or_default()),
                blocked.join(", ")
            );
            return Ok(ExitCode::from(1));
        }
    }
}

/// What `hold` holds, and how.
pub(crate) struct Hold {
    pub(crate) key: String,
    pub(crate) data: Option<String>,
    pub(crate) instance: Option<String>,
    pub(crate) duration: Option<Duration>,
    pub(crate) renewal: Duration,
    pub(crate) expiration: Duration,
}

/// `hold`: busy for `key` (renewed) until `duration` passes or SIGINT/SIGTERM, then idle.
pub(crate) async fn hold(backend: AnyBackend, hold: Hold) -> Result<ExitCode, String> {
    let Hold {
        key,
        data,
        instance,
        duration,
        renewal,
        expiration,
    } = hold;
    let stop = crate::shutdown_signal()?;
    let mut builder = ReactiveLock::builder()
        .renewal(renewal)
        .expiration(expiration)
        .tracker(key.clone(), TrackerConfig::new());
    if let Some(instance) = instance {
        builder = builder.instance_name(instance);
    }
    let lock = builder.build(backend).await.map_err(one_line)?;
    lock.controller(&key)
        .map_err(one_line)?
        .increment(data.as_deref())
        .await
        .map_err(one_line)?;
    println!("holding {key} as {}", lock.instance_name());
    futures_lite::future::or(stop, async {
        match duration {
            Some(d) => {
                async_io::Timer::after(d).await;
            }
            None => futures_lite::future::pending().await,
        }
    })
    .await;
    lock.shutdown().await;
    println!("released {key}");
    Ok(ExitCode::SUCCESS)
}
