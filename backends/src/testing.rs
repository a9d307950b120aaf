//! Test and bench helpers: a private `redis-server` per test (free port, temp dir, killable,
//! pausable, restartable) and a local Redis Cluster. They never touch a shared server.
//!
//! `redis-server` and `redis-cli` must be on `PATH`; a missing binary panics with a message
//! saying so (tests must never skip silently).

// The Redis helpers need these; a grpc-only build does not.
#![cfg_attr(not(feature = "redis"), allow(unused_imports, dead_code))]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[cfg(feature = "redis")]
/// A `redis-server` child process on a free port, without persistence; killed on drop.
pub struct RedisServer {
    /// The port it listens on.
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

/// A free port whose cluster-bus twin (port + 10000) is free too, both below Linux's
/// ephemeral range (32768+): a port from that range can be taken by any outgoing connection
/// between this check and the server's bind, and a probe `connect` to a port nobody listens
/// on can even connect to itself there. Ports handed out in this process are never handed
/// out again, so two tests starting servers at the same moment cannot pick the same one
/// between the check and the bind; another process can, which `RedisServer` detects. For
/// any test server that must come back on the same port after a restart (a hub process).
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = fastrand::u16(10_000..22_000);
        if !handed_out.contains(&port)
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            handed_out.push(port);
            return port;
        }
    }
    panic!("no free port pair found in 10000..32000");
}

#[cfg(feature = "redis")]
impl RedisServer {
    /// Starts `redis-server` (from PATH) on a free port, no persistence.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// `extra` arguments may say `{port}` for the server's port.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_with_env(extra, &[])
    }

    /// With extra environment (e.g. libfaketime to skew the server's clock).
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "reactive-lock-redis-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut server = RedisServer {
            port: free_port(),
            dir,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        server.spawn();
        server
    }

    /// The server's working directory (its RDB and AOF files).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts the server, on a new free port if another process took this one between
    /// `free_port`'s check and the bind.
    fn spawn(&mut self) {
        self.spawn_on(false);
    }

    /// `keep_port`: a restart must come back on the same port (clients reconnect there).
    fn spawn_on(&mut self, keep_port: bool) {
        for _ in 0..20 {
            if self.try_spawn() {
                return;
            }
            assert!(
                !keep_port,
                "port {} was taken by another process while the test server was down",
                self.port
            );
            self.port = free_port();
        }
        panic!("redis-server found every chosen port taken by another process");
    }

    /// Starts `redis-server` on `self.port`; false if the port belongs to another process.
    fn try_spawn(&mut self) -> bool {
        // Readiness comes from the server's own log: a probe connection could be answered
        // by another process's server that won the port (while this child exits on the failed
        // bind), and it cannot speak to TLS or password-protected servers anyway.
        let log = self.dir.join("redis.log");
        let _ = std::fs::remove_file(&log);
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&self.dir)
        .arg("--logfile")
        .arg(&log)
        .args(
            self.extra
                .iter()
                .map(|a| a.replace("{port}", &self.port.to_string())),
        )
        .envs(self.env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start `redis-server` (it must be on PATH; install Redis 7): {e}")
        });
        // Held by `self` at once, so that a panic below still kills it (on drop).
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("Address already in use") {
                    return false;
                }
                panic!(
                    "redis-server on port {} exited at start: {status}; its log:\n{text}",
                    self.port
                );
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Ready to accept connections") {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not become ready on port {} within 10 s; its log:\n{text}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL: the server and everything in it are gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a new, empty server on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn_on(true);
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("server running").id();
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {sig} {pid}");
    }

    /// Freezes the server (SIGSTOP): its sockets stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// How many times the server ran `command` (lower case), from `INFO commandstats`.
    pub fn command_calls(&self, command: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.client())
            .unwrap();
        let prefix = format!("cmdstat_{command}:");
        info.lines()
            .find(|l| l.starts_with(&prefix))
            .and_then(|l| l.split(['=', ',']).nth(1))
            .map_or(0, |n| n.parse().unwrap())
    }

    /// A raw client connection, for writing entries the way other clients do.
    pub fn client(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .expect("raw connection")
    }
}

#[cfg(feature = "redis")]
/// The Redis backend's publish script (sequence check, `TIME`, .NET ticks, both `HSET`s and
/// the self-describing `PUBLISH`), to be loaded and invoked bare with
/// [`publish_script_command`], so that benches can measure the server work a transition
/// needs apart from the code around it (`redis/publish_script_pair_own_subscription`).
///
/// # Examples
///
/// ```
/// let script = reactive_lock_backends::testing::publish_script();
/// assert_eq!(script.get_hash().len(), 40);
/// ```
pub fn publish_script() -> redis::Script {
    redis::Script::new(crate::redis::PUBLISH_SCRIPT)
}

#[cfg(feature = "redis")]
/// The `EVALSHA` of [`publish_script`] that the Redis backend sends for `instance`'s status
/// of `key`, byte for byte (the same builder).
///
/// # Examples
///
/// ```
/// use reactive_lock_backends::testing::{publish_script, publish_script_command};
/// use std::time::Duration;
///
/// let script = publish_script();
/// let command = publish_script_command(&script, "k", "api-1", 7, true, Duration::from_secs(10), Some("x"));
/// let args: Vec<&[u8]> = command
///     .args_iter()
///     .map(|a| match a {
///         redis::Arg::Simple(bytes) => bytes,
///         _ => &[][..],
///     })
///     .collect();
/// assert_eq!(args[0], b"EVALSHA");
/// assert_eq!(args[3], b"ReactiveLock:Redis:HashSet:k");
/// assert_eq!(args[10], b";x");
/// ```
pub fn publish_script_command(
    script: &redis::Script,
    key: &str,
    instance: &str,
    seq: u64,
    busy: bool,
    valid_for: Duration,
    lock_data: Option<&str>,
) -> redis::Cmd {
    let status = if busy {
        reactive_lock::InstanceStatus::busy(lock_data.map(String::from), seq, valid_for)
    } else {
        reactive_lock::InstanceStatus::idle(seq, valid_for)
    };
    crate::redis::publish_command(script.get_hash(), key, instance, &status)
}

#[cfg(feature = "redis")]
impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(feature = "redis")]
/// A local Redis Cluster of `masters` masters, no replicas, created with `redis-cli --cluster`.
pub struct RedisCluster {
    /// The masters.
    pub nodes: Vec<RedisServer>,
}

#[cfg(feature = "redis")]
impl RedisCluster {
    /// Starts `masters` servers in cluster mode and joins them into one cluster.
    pub fn start(masters: usize) -> Self {
        let nodes: Vec<RedisServer> = (0..masters)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run `redis-cli` (it must be on PATH): {e}"));
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut node.client())
                    .unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "cluster not ok within 20 s: {info}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    /// Every node's URL (seed nodes for a cluster client).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

/// A tokio runtime for tests that drive raw tonic clients or a hub's API directly: two
/// workers, I/O and timers enabled.
///
/// # Examples
///
/// ```
/// let rt = reactive_lock_backends::testing::tokio_runtime();
/// assert_eq!(rt.block_on(async { 1 + 1 }), 2);
/// ```
#[cfg(feature = "grpc-server")]
pub fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a tokio runtime")
}

/// A gRPC hub served in-process on an ephemeral port, on its own runtime thread; stopped on
/// drop.
#[cfg(feature = "grpc-server")]
pub struct HubServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The hub's state, e.g. to inspect it.
    pub hub: crate::grpc::server::Hub,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    tls: Option<crate::grpc::server::HubTls>,
    token: Option<String>,
}

#[cfg(feature = "grpc-server")]
impl HubServer {
    /// Starts a hub with default limits, no TLS, no token.
    pub fn start() -> Self {
        Self::start_with(crate::grpc::server::Hub::default(), None, None)
    }

    /// Starts `hub` with optional TLS and token.
    pub fn start_with(
        hub: crate::grpc::server::Hub,
        tls: Option<crate::grpc::server::HubTls>,
        token: Option<String>,
    ) -> Self {
        Self::start_on(hub, tls, token, 0)
    }

    /// Stops the hub (its connections close, its state is gone) and serves `hub` on the
    /// same address, with the same TLS and token: a hub process restarted.
    pub fn restart(&mut self, hub: crate::grpc::server::Hub) {
        self.stop();
        let port: u16 = self
            .url
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .expect("the hub's URL ends with its port");
        *self = Self::start_on(hub, self.tls.clone(), self.token.clone(), port);
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    fn start_on(
        hub: crate::grpc::server::Hub,
        tls: Option<crate::grpc::server::HubTls>,
        token: Option<String>,
        port: u16,
    ) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (serve_tls, serve_token) = (tls.clone(), token.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let serving = hub.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .expect("bind");
                ready_tx
                    .send(listener.local_addr().unwrap().port())
                    .unwrap();
                serving
                    .serve_listener(listener, serve_tls, serve_token, async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("hub serves");
            });
        });
        let port = ready_rx.recv().expect("hub started");
        HubServer {
            url: format!("{scheme}://127.0.0.1:{port}"),
            hub,
            stop: Some(stop),
            thread: Some(thread),
            tls,
            token,
        }
    }
}

#[cfg(feature = "grpc-server")]
impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A conformance-suite factory: a new [`RedisBackend`](crate::redis::RedisBackend)
/// connection to the server at this URL per instance.
#[cfg(feature = "redis")]
pub struct RedisFactory(pub String);

#[cfg(feature = "redis")]
impl crate::conformance::BackendFactory for RedisFactory {
    type Backend = crate::redis::RedisBackend;
    async fn connect(&self) -> crate::redis::RedisBackend {
        crate::redis::RedisBackend::connect(&self.0)
            .await
            .expect("connect to the test redis-server")
    }
}

/// A conformance-suite factory: a new [`GrpcBackend`](crate::grpc::GrpcBackend) to these hubs
/// per instance.
#[cfg(feature = "grpc-server")]
pub struct GrpcFactory(pub Vec<String>);

#[cfg(feature = "grpc-server")]
impl crate::conformance::BackendFactory for GrpcFactory {
    type Backend = crate::grpc::GrpcBackend;
    async fn connect(&self) -> crate::grpc::GrpcBackend {
        crate::grpc::GrpcBackend::connect(self.0.clone())
            .await
            .expect("connect to the test hub")
    }
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use super::*;

    /// The CI failure this guards against: a server of another test won the chosen port,
    /// and the new server must move to another port instead of reporting the other one's
    /// readiness as its own.
    #[test]
    fn a_server_whose_port_is_taken_moves_to_a_free_one() {
        let first = RedisServer::start();
        let dir =
            std::env::temp_dir().join(format!("reactive-lock-redis-taken-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let mut second = RedisServer {
            port: first.port,
            dir,
            child: None,
            extra: Vec::new(),
            env: Vec::new(),
        };
        second.spawn();
        assert_ne!(second.port, first.port);
        let pid = |server: &RedisServer| -> u32 {
            let info: String = redis::cmd("INFO")
                .arg("server")
                .query(&mut server.client())
                .unwrap();
            info.lines()
                .find_map(|l| l.strip_prefix("process_id:"))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        assert_eq!(pid(&second), second.child.as_ref().unwrap().id());
        assert_eq!(pid(&first), first.child.as_ref().unwrap().id());
    }
}

/// The wire timestamp `d` from now (capped at a century), for hand-made gRPC requests.
#[cfg(feature = "grpc-server")]
pub fn valid_for(d: std::time::Duration) -> prost_types::Timestamp {
    crate::grpc::timestamp(crate::grpc::valid_until(d))
}

/// The newest state per key that a subscription's events carried for the instance named
/// `writer`, as (sequence, busy, lock data): for burst tests that read a backend's raw
/// events.
pub type Seen = std::collections::HashMap<String, (u64, bool, Option<String>)>;

/// Folds one subscription event into `seen` (see [`Seen`]): a newer sequence replaces an
/// older one; sequence 0 (unordered) always replaces.
fn fold(seen: &mut Seen, event: reactive_lock::BackendEvent) {
    use reactive_lock::BackendEvent;
    let mut apply = |key: String, entry: &reactive_lock::Entry| {
        if entry.instance != "writer" {
            return;
        }
        let held = seen.entry(key).or_insert((0, false, None));
        if entry.seq == 0 || entry.seq >= held.0 {
            *held = (entry.seq, entry.busy, entry.lock_data.clone());
        }
    };
    match event {
        BackendEvent::Snapshot(snapshot) => {
            for entry in &snapshot.entries {
                apply(snapshot.key.clone(), entry);
            }
        }
        BackendEvent::Update { key, entry, .. } => apply(key, &entry),
        _ => {}
    }
}

/// The final state a burst leaves on its `k`-th key (see [`publish_burst`]): busy with
/// `final-k` on even keys, idle on odd ones.
pub fn burst_final_state(k: usize) -> (bool, Option<String>) {
    if k.is_multiple_of(2) {
        (true, Some(format!("final-{k}")))
    } else {
        (false, None)
    }
}

/// Publishes a burst as instance `writer` on every key: sequences 1 to `flaps`, busy on odd
/// ones and idle on even ones, the last one each key's [`burst_final_state`]; each valid
/// for a minute.
pub async fn publish_burst<B: reactive_lock::Backend>(writer: &B, keys: &[String], flaps: u64) {
    use reactive_lock::InstanceStatus;
    let validity = Duration::from_secs(60);
    for seq in 1..=flaps {
        for (k, key) in keys.iter().enumerate() {
            let status = if seq == flaps {
                match burst_final_state(k) {
                    (true, data) => InstanceStatus::busy(data, seq, validity),
                    (false, _) => InstanceStatus::idle(seq, validity),
                }
            } else if seq % 2 == 1 {
                InstanceStatus::busy(Some(format!("v{seq}")), seq, validity)
            } else {
                InstanceStatus::idle(seq, validity)
            };
            writer.publish(key, "writer", &status).await.unwrap();
        }
    }
}

/// Reads `events` until `arrived(k, state)` holds for the newest state of every `k`-th key
/// (see [`Seen`]); panics with what it has seen after 20 s.
pub async fn await_states(
    events: &mut (impl futures_lite::Stream<Item = reactive_lock::BackendEvent> + Unpin),
    keys: &[String],
    arrived: impl Fn(usize, &(u64, bool, Option<String>)) -> bool,
) {
    use futures_lite::StreamExt;
    let mut seen = Seen::new();
    let done = |seen: &Seen| {
        keys.iter()
            .enumerate()
            .all(|(k, key)| seen.get(key).is_some_and(|state| arrived(k, state)))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = futures_lite::future::or(async { events.next().await }, async {
            async_io::Timer::after(left).await;
            None
        })
        .await;
        let Some(event) = event else {
            panic!("not every key's final state arrived: {seen:?}");
        };
        fold(&mut seen, event);
    }
}

/// Reads `events` until every key's [`burst_final_state`] arrived (see [`await_states`]).
pub async fn await_burst_final_states(
    events: &mut (impl futures_lite::Stream<Item = reactive_lock::BackendEvent> + Unpin),
    keys: &[String],
) {
    await_states(events, keys, |k, (_, busy, data)| {
        (*busy, data.clone()) == burst_final_state(k)
    })
    .await;
}
