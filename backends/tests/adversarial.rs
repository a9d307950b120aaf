//! Adversarial tests against a real `redis-server` (own server per test, free port).
//! Run: cargo test -p reactive-lock-backends --all-features --test adversarial
#![cfg(feature = "redis")]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::future::block_on;
use reactive_lock::{Driver, ReactiveLock, Status, TrackerConfig, TrackerState, UnknownPolicy};
use reactive_lock_backends::conformance::eventually;
use reactive_lock_backends::redis::{RedisBackend, channel_name, hash_name};
use reactive_lock_backends::testing::RedisServer;
use redis::Commands;

const KEY: &str = "attack";
const LIMIT: Duration = Duration::from_secs(10);

async fn backend(url: &str) -> RedisBackend {
    RedisBackend::connect(url).await.expect("connect")
}

async fn instance(url: &str, name: &str, config: TrackerConfig) -> ReactiveLock {
    ReactiveLock::builder()
        .instance_name(name)
        .tracker(KEY, config)
        .build(backend(url).await)
        .await
        .expect("build")
}

async fn sleep(d: Duration) {
    async_io::Timer::after(d).await;
}

fn count_unblocks(state: &TrackerState) -> Arc<AtomicUsize> {
    let n = Arc::new(AtomicUsize::new(0));
    let c = n.clone();
    state.on_unblocked(move || {
        c.fetch_add(1, Ordering::SeqCst);
    });
    n
}

/// A gate around a driver: while closed the driver is not polled (its process is slow).
#[derive(Default)]
struct Gate {
    closed: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Gate {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }
    fn open(&self) {
        self.closed.store(false, Ordering::SeqCst);
        if let Some(w) = self.waker.lock().unwrap().take() {
            w.wake();
        }
    }
}

struct Gated {
    driver: Driver,
    gate: Arc<Gate>,
}

impl Future for Gated {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.gate.closed.load(Ordering::SeqCst) {
            *self.gate.waker.lock().unwrap() = Some(cx.waker().clone());
            if self.gate.closed.load(Ordering::SeqCst) {
                return Poll::Pending;
            }
        }
        Pin::new(&mut self.driver).poll(cx)
    }
}

fn spawn_gated(driver: Driver) -> Arc<Gate> {
    let gate = Arc::new(Gate::default());
    let g = gate.clone();
    std::thread::spawn(move || block_on(Gated { driver, gate: g }));
    gate
}

const DOTNET_UNIX_EPOCH_TICKS: u64 = 621_355_968_000_000_000;

/// Whether `instance`'s entry in the store is busy and unexpired on the server's clock.
fn busy_in_store(raw: &mut redis::Connection, instance: &str) -> bool {
    let value: Option<String> = raw.hget(hash_name(KEY), instance).unwrap();
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(raw).unwrap();
    let now_ticks = DOTNET_UNIX_EPOCH_TICKS + secs * 10_000_000 + micros * 10;
    match value {
        Some(v) => {
            let mut parts = v.splitn(3, ';');
            let busy = parts.next() == Some("1");
            let until: u64 = parts.next().unwrap().parse().unwrap();
            busy && until > now_ticks
        }
        None => false,
    }
}

/// Builds a registry whose driver runs behind a gate on a thread of its own.
async fn gated_instance(url: &str, name: &str) -> (ReactiveLock, Arc<Gate>) {
    let (lock, driver) = ReactiveLock::builder()
        .instance_name(name)
        .tracker(KEY, TrackerConfig::new())
        .build_with_driver(backend(url).await)
        .await
        .expect("build");
    (lock, spawn_gated(driver))
}

async fn wait_resynced(lock: &ReactiveLock, before: u64, what: &str) {
    let deadline = Instant::now() + LIMIT;
    while lock.metrics().resyncs == before {
        assert!(Instant::now() < deadline, "{what} never recovered");
        sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------

/// Found by attack, fixed: README: "Busy entries a restarted server forgot keep blocking until their own
/// expiry unless their owner says otherwise"; "read-throughs never forget". A real Redis
/// restart (no persistence); B recovers and keeps A's busy entry; A — alive, busy, its
/// entry valid for 10 s — has not re-published yet (its process is slow). B's
/// `wait_if_blocked_consistent` reads through, drops A's entry and returns at once.
#[test]
fn read_through_after_redis_restart_keeps_a_live_busy_instance() {
    block_on(async {
        let mut server = RedisServer::start();
        let url = server.url();
        let (a, gate) = gated_instance(&url, "a").await;
        let b = instance(&url, "b", TrackerConfig::new()).await;
        let b_state = b.state(KEY).unwrap();
        let a_ctrl = a.controller(KEY).unwrap();
        a_ctrl
            .increment(Some("a-work"))
            .await
            .expect("acknowledged");
        eventually(&b_state, LIMIT, "B sees A", |s| {
            s.status() == Status::Blocked
        })
        .await;

        gate.close();
        let before = b.metrics().resyncs;
        server.restart();
        wait_resynced(&b, before, "B").await;
        assert_eq!(
            b_state.status(),
            Status::Blocked,
            "B's recovery keeps A's unexpired busy entry (documented)"
        );
        let waited = futures_lite::future::or(
            async { Some(b_state.wait_if_blocked_consistent().await) },
            async {
                sleep(Duration::from_millis(500)).await;
                None
            },
        )
        .await;
        let status = b_state.status();
        gate.open();
        a_ctrl.decrement(1).await.ok();
        assert!(
            waited.is_none(),
            "B's wait_if_blocked_consistent returned {waited:?} (B status {status:?}) while A \
             is busy, alive and its entry valid"
        );
        a.shutdown().await;
        b.shutdown().await;
    });
}

/// Found by attack, fixed: After the restart and B's recovery (A's entry
/// kept), a .NET instance writes its idle status and publishes its bare notification, as
/// the .NET ReactiveLock does. B re-reads the key and applies it with `apply_snapshot`
/// (not the recovery variant): A's entry, missing from the re-read, is dropped.
#[test]
fn a_dotnet_notification_after_redis_restart_keeps_a_live_busy_instance() {
    block_on(async {
        let mut server = RedisServer::start();
        let url = server.url();
        let (a, gate) = gated_instance(&url, "a").await;
        let b = instance(&url, "b", TrackerConfig::new()).await;
        let b_state = b.state(KEY).unwrap();
        let unblocks = count_unblocks(&b_state);
        let a_ctrl = a.controller(KEY).unwrap();
        a_ctrl
            .increment(Some("a-work"))
            .await
            .expect("acknowledged");
        eventually(&b_state, LIMIT, "B sees A", |s| {
            s.status() == Status::Blocked
        })
        .await;

        gate.close();
        let before = b.metrics().resyncs;
        server.restart();
        wait_resynced(&b, before, "B").await;
        assert_eq!(b_state.status(), Status::Blocked, "recovery keeps A");

        // A .NET instance goes idle: HSET its value, PUBLISH a bare notification.
        let applied = b.metrics().snapshots_applied;
        let mut raw = server.client();
        let (secs, _): (u64, u64) = redis::cmd("TIME").query(&mut raw).unwrap();
        let ticks = DOTNET_UNIX_EPOCH_TICKS + (secs + 10) * 10_000_000;
        let _: () = raw
            .hset(hash_name(KEY), "dotnet-1", format!("0;{ticks}"))
            .unwrap();
        let _: () = raw
            .publish(channel_name(KEY), format!("0;{ticks}"))
            .unwrap();
        let deadline = Instant::now() + LIMIT;
        while b.metrics().snapshots_applied == applied {
            assert!(Instant::now() < deadline, "B never re-read");
            sleep(Duration::from_millis(10)).await;
        }
        let status = b_state.status();
        let n = unblocks.load(Ordering::SeqCst);
        gate.open();
        a_ctrl.decrement(1).await.ok();
        assert!(
            status != Status::Unblocked && n == 0,
            "B answered {status:?} ({n} on_unblocked calls) after a .NET instance's bare \
             notification, while A is busy, alive and its entry valid"
        );
        a.shutdown().await;
        b.shutdown().await;
    });
}

/// Found by attack, fixed: "User code never runs on a driver or on a backend's I/O
/// executor, so a handler that blocks delays later handlers, not the propagation of
/// statuses or the renewals." Dropping a registry closes its handler thread right after
/// telling its driver (on smol's executor) to stop; when the driver ends after the close,
/// its end (Unknown; with UnknownPolicy::Blocked a change of the blocked flag) runs
/// `on_blocked` inline on the smol thread. A handler that blocks there stalls all Redis
/// I/O of the process: another registry A, busy, stops renewing and its busy status
/// expires in the store while A is busy and alive.
#[test]
fn a_dropped_registrys_handlers_never_run_on_smol_or_stall_renewals() {
    let server = RedisServer::start();
    let url = server.url();
    let a = block_on(async {
        ReactiveLock::builder()
            .instance_name("a")
            .renewal(Duration::from_millis(100))
            .expiration(Duration::from_millis(800))
            .tracker(KEY, TrackerConfig::new())
            .build(backend(&url).await)
            .await
            .unwrap()
    });
    let a_ctrl = a.controller(KEY).unwrap();
    block_on(a_ctrl.increment(None)).expect("acknowledged");
    let mut raw = server.client();
    assert!(busy_in_store(&mut raw, "a"));
    let mut all_names = Vec::new();
    let mut expired = false;
    for round in 0..30 {
        let threads = Arc::new(Mutex::new(Vec::<String>::new()));
        let dropping = Arc::new(AtomicBool::new(false));
        let (t, d) = (threads.clone(), dropping.clone());
        let x_config = TrackerConfig::new()
            .unknown_policy(UnknownPolicy::Blocked)
            .on_blocked(move || {
                if !d.load(Ordering::SeqCst) {
                    return; // the Unknown-at-build call
                }
                let name = std::thread::current().name().unwrap_or("?").to_string();
                let on_smol = name.starts_with("smol-");
                t.lock().unwrap().push(name);
                if on_smol {
                    std::thread::sleep(Duration::from_millis(2500)); // a slow handler
                }
            });
        // X tracks a key nobody is busy for (so its end flips the blocked flag).
        let x = block_on(async {
            ReactiveLock::builder()
                .instance_name(format!("x{round}"))
                .tracker("x-key", x_config)
                .build(backend(&url).await)
                .await
                .unwrap()
        });
        dropping.store(true, Ordering::SeqCst);
        drop(x);
        let started = Instant::now();
        while threads.lock().unwrap().is_empty() && started.elapsed() < LIMIT {
            std::thread::sleep(Duration::from_millis(5));
        }
        let names = threads.lock().unwrap().clone();
        let on_smol = names.iter().any(|n| n.starts_with("smol-"));
        all_names.extend(names);
        if on_smol {
            while started.elapsed() < Duration::from_secs(2) {
                if !busy_in_store(&mut raw, "a") {
                    expired = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(800));
            break;
        }
    }
    eprintln!("handler threads: {all_names:?}, A expired in store: {expired}");
    block_on(a_ctrl.decrement(1)).ok();
    block_on(a.shutdown());
    assert!(
        !expired && all_names.iter().all(|n| !n.starts_with("smol-")),
        "a dropped registry's on_blocked ran on {all_names:?}; A's busy status expired in \
         the store while A was busy and alive: {expired}"
    );
}

/// Found by attack, fixed: Ack docs: "Kept without being polled (a select! that took another branch and
/// awaits it later), it holds the key's publishing role for at most 200 ms: then the driver
/// publishes the newest status itself". An Ack that a biased select never polled is not
/// known to the driver at all: A's busy transition does not reach the store (nor B) until
/// the next renewal (5 s by default), while A's own state says busy and A works.
#[test]
fn an_ack_a_select_never_polled_still_gets_its_status_to_the_store() {
    block_on(async {
        let server = RedisServer::start();
        let url = server.url();
        let a = instance(&url, "a", TrackerConfig::new()).await;
        let b = instance(&url, "b", TrackerConfig::new()).await;
        let b_state = b.state(KEY).unwrap();
        let a_ctrl = a.controller(KEY).unwrap();
        let mut ack = a_ctrl.increment(Some("work"));
        // A select that took the other branch first: the Ack is not polled.
        let took_other = futures_lite::future::or(async { true }, async {
            let _ = (&mut ack).await;
            false
        })
        .await;
        assert!(took_other);
        assert!(a.state(KEY).unwrap().is_blocked(), "A is busy locally");
        // Well past the 200 ms lease: the status should be in the store by now.
        sleep(Duration::from_millis(1500)).await;
        let mut raw = server.client();
        let in_store = busy_in_store(&mut raw, "a");
        let b_status = b_state.status();
        let _ = ack.await;
        a_ctrl.decrement(1).await.ok();
        assert!(
            in_store && b_status == Status::Blocked,
            "1.5 s after A's busy transition (Ack kept unpolled) the store holds it busy: \
             {in_store}; B answers {b_status:?}"
        );
        a.shutdown().await;
        b.shutdown().await;
    });
}

/// A blocking wait on smol's executor panics naming the key (also the
/// timeout variant) instead of stalling Redis I/O; the registry keeps working.
#[test]
fn blocking_waits_on_smol_threads_panic_with_a_clear_message() {
    block_on(async {
        let server = RedisServer::start();
        let url = server.url();
        let a = instance(&url, "a", TrackerConfig::new()).await;
        let b = instance(&url, "b", TrackerConfig::new()).await;
        let a_ctrl = a.controller(KEY).unwrap();
        a_ctrl.increment(None).await.unwrap();
        let b_state = b.state(KEY).unwrap();
        eventually(&b_state, LIMIT, "B sees A", |s| s.is_blocked()).await;
        for timed in [false, true] {
            let st = b_state.clone();
            let task = smol::spawn(async move {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    if timed {
                        let _ = st.wait_if_blocked_blocking_timeout(Duration::from_secs(30));
                    } else {
                        st.wait_if_blocked_blocking();
                    }
                }))
            });
            let r = futures_lite::future::or(async { Some(task.await) }, async {
                sleep(LIMIT).await;
                None
            })
            .await
            .expect("the blocking wait on smol's executor deadlocked");
            let panic = r.expect_err("must panic");
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            assert!(msg.contains(KEY), "{msg}");
        }
        a_ctrl.decrement(1).await.unwrap();
        eventually(&b_state, LIMIT, "B free", |s| {
            s.status() == Status::Unblocked
        })
        .await;
        a.shutdown().await;
        b.shutdown().await;
    });
}

/// Extreme Redis options are refused naming the option.
#[test]
fn extreme_redis_options_are_refused_naming_the_option() {
    block_on(async {
        for (field, d) in [
            ("connect_timeout", Duration::MAX),
            ("response_timeout", Duration::ZERO),
            ("health_check_interval", Duration::from_secs(2 * 24 * 3600)),
        ] {
            let b = RedisBackend::builder("redis://127.0.0.1:1/");
            let b = match field {
                "connect_timeout" => b.connect_timeout(d),
                "response_timeout" => b.response_timeout(d),
                _ => b.health_check_interval(d),
            };
            let err = b.connect().await.expect_err("refused");
            assert!(err.to_string().contains(field), "{err}");
        }
    });
}

/// SIGSTOP of the server while A is busy, during transitions of C: B goes
/// Unknown (KeepLast: blocked), never Unblocked; after SIGCONT everything recovers.
#[test]
fn sigstop_during_transitions_never_answers_unblocked() {
    block_on(async {
        let server = RedisServer::start();
        let url = server.url();
        let a = instance(&url, "a", TrackerConfig::new()).await;
        let b = instance(&url, "b", TrackerConfig::new()).await;
        let c = instance(&url, "c", TrackerConfig::new()).await;
        let b_state = b.state(KEY).unwrap();
        let unblocks = count_unblocks(&b_state);
        let a_ctrl = a.controller(KEY).unwrap();
        a_ctrl.increment(None).await.unwrap();
        eventually(&b_state, LIMIT, "B sees A", |s| {
            s.status() == Status::Blocked
        })
        .await;
        let c_ctrl = c.controller(KEY).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, cc) = (stop.clone(), c_ctrl.clone());
        let flapper = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                drop(cc.enter(None));
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        sleep(Duration::from_millis(200)).await;
        server.pause();
        eventually(&b_state, LIMIT, "B Unknown", |s| {
            s.status() == Status::Unknown
        })
        .await;
        server.resume();
        eventually(&b_state, LIMIT, "B back", |s| s.status() == Status::Blocked).await;
        sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        flapper.join().unwrap();
        assert_eq!(
            unblocks.load(Ordering::SeqCst),
            0,
            "B unblocked while A busy"
        );
        a_ctrl.decrement(1).await.unwrap();
        eventually(&b_state, LIMIT, "B free", |s| {
            s.status() == Status::Unblocked
        })
        .await;
        a.shutdown().await;
        b.shutdown().await;
        c.shutdown().await;
    });
}

/// Threshold 2 with hysteresis on Redis's asynchronous publish path under
/// concurrency: awaited Acks, Acks polled once then dropped (PublishingGuard hands over to
/// the driver), Acks polled once then kept and awaited late (lease), guards. At quiescence
/// the store and B must agree with A's count, and an acknowledged busy must be in the store.
#[test]
fn threshold_two_with_mixed_acks_ends_consistent_in_the_store() {
    let server = RedisServer::start();
    let url = server.url();
    let (a, b) = block_on(async {
        let a = instance(&url, "a", TrackerConfig::new().busy_threshold(2)).await;
        let b = instance(&url, "b", TrackerConfig::new()).await;
        (a, b)
    });
    let a_ctrl = a.controller(KEY).unwrap();
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut threads = Vec::new();
    for i in 0..3usize {
        let (ctrl, errs) = (a_ctrl.clone(), errors.clone());
        threads.push(std::thread::spawn(move || {
            for j in 0..120usize {
                match (i + j) % 4 {
                    0 => {
                        if let Err(e) = block_on(ctrl.increment(None)) {
                            errs.lock().unwrap().push(format!("inc: {e}"));
                        }
                        if let Err(e) = block_on(ctrl.decrement(1)) {
                            errs.lock().unwrap().push(format!("dec: {e}"));
                        }
                    }
                    1 => {
                        let mut ack = ctrl.increment(Some("x"));
                        let _ = block_on(futures_lite::future::poll_once(&mut ack));
                        drop(ack);
                        let mut ack = ctrl.decrement(1);
                        let _ = block_on(futures_lite::future::poll_once(&mut ack));
                        drop(ack);
                    }
                    2 => drop(ctrl.enter(None)),
                    _ => {
                        let mut ack = ctrl.increment(None);
                        let _ = block_on(futures_lite::future::poll_once(&mut ack));
                        std::thread::sleep(Duration::from_millis(1));
                        if let Err(e) = block_on(ack) {
                            errs.lock().unwrap().push(format!("late inc: {e}"));
                        }
                        drop(ctrl.decrement(1));
                    }
                }
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(a_ctrl.count(), 0);
    let mut raw = server.client();
    let b_state = b.state(KEY).unwrap();
    block_on(eventually(&b_state, LIMIT, "B free at the end", |s| {
        s.status() == Status::Unblocked
    }));
    let deadline = Instant::now() + LIMIT;
    while busy_in_store(&mut raw, "a") {
        assert!(
            Instant::now() < deadline,
            "A idle (count 0) but busy in the store"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Now busy, acknowledged: must be in the store at once.
    block_on(a_ctrl.increment(None)).unwrap();
    block_on(a_ctrl.increment(None)).unwrap();
    assert!(
        busy_in_store(&mut raw, "a"),
        "acknowledged busy not in the store"
    );
    block_on(eventually(&b_state, LIMIT, "B sees A", |s| {
        s.status() == Status::Blocked
    }));
    block_on(a_ctrl.decrement(2)).unwrap();
    eprintln!("errors from Acks: {:?}", errors.lock().unwrap());
    block_on(a.shutdown());
    block_on(b.shutdown());
}

/// CLIENT KILL of every pub/sub connection (A publishes through its own
/// subscription's connection) while A is busy with a short lease (renewal 100 ms,
/// expiration 1 s), repeated: A's busy status never lapses in the store, B never unblocks.
#[test]
fn killing_subscription_connections_never_lets_a_busy_status_lapse() {
    let server = RedisServer::start();
    let url = server.url();
    let build = |name: &'static str| {
        let url = url.clone();
        async move {
            ReactiveLock::builder()
                .instance_name(name)
                .renewal(Duration::from_millis(100))
                .expiration(Duration::from_millis(1000))
                .tracker(KEY, TrackerConfig::new())
                .build(backend(&url).await)
                .await
                .unwrap()
        }
    };
    let (a, b) = block_on(async { (build("a").await, build("b").await) });
    let b_state = b.state(KEY).unwrap();
    let unblocks = count_unblocks(&b_state);
    let a_ctrl = a.controller(KEY).unwrap();
    block_on(a_ctrl.increment(None)).unwrap();
    block_on(eventually(&b_state, LIMIT, "B sees A", |s| {
        s.status() == Status::Blocked
    }));
    let mut raw = server.client();
    let mut lapsed = 0;
    for _ in 0..5 {
        let _: redis::Value = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query(&mut raw)
            .unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(600) {
            if !busy_in_store(&mut raw, "a") {
                lapsed += 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    block_on(eventually(&b_state, LIMIT, "B back", |s| {
        s.status() == Status::Blocked
    }));
    let n = unblocks.load(Ordering::SeqCst);
    block_on(a_ctrl.decrement(1)).unwrap();
    block_on(a.shutdown());
    block_on(b.shutdown());
    assert!(
        lapsed == 0 && n == 0,
        "A's busy lapsed in the store {lapsed} times; B unblocked {n} times"
    );
}

// ---------------------------------------------------------------------------------------
// gRPC hub (run with --all-features)
// ---------------------------------------------------------------------------------------

#[cfg(feature = "grpc-server")]
mod grpc {
    use super::*;
    use reactive_lock_backends::grpc::GrpcBackend;
    use reactive_lock_backends::grpc::server::Hub;
    use reactive_lock_backends::testing::free_port;

    /// A hub on a fixed port (so it can come back there, empty, after a "restart").
    struct FixedHub {
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl FixedHub {
        fn start(port: u16) -> Self {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let thread = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let listener = loop {
                        match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                            Ok(l) => break l,
                            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                        }
                    };
                    ready_tx.send(()).unwrap();
                    Hub::default()
                        .serve_listener(listener, None, None, async {
                            let _ = stopped.await;
                        })
                        .await
                        .expect("hub serves");
                });
            });
            ready_rx.recv().expect("hub started");
            FixedHub {
                stop: Some(stop),
                thread: Some(thread),
            }
        }
    }

    impl Drop for FixedHub {
        fn drop(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    async fn grpc_backend(url: &str) -> GrpcBackend {
        GrpcBackend::connect(vec![url.to_string()])
            .await
            .expect("connect")
    }

    /// Found by attack, fixed: The hub restarts empty. B's client, on the stream's
    /// return, sends `Reconnected` and then the hub's full state for the key (grpc/mod.rs
    /// ~1141..1184) as a plain `BackendEvent::Snapshot`; B's recovery keeps A's entry, but
    /// the plain snapshot (driver.rs:370-372 -> `apply_snapshot`) drops it: B unblocks while
    /// A is busy, alive and its entry valid. No third instance is needed on gRPC.
    #[test]
    fn hub_restart_with_two_instances_keeps_a_live_busy_instance() {
        block_on(async {
            let port = free_port();
            let url = format!("http://127.0.0.1:{port}");
            let hub = FixedHub::start(port);
            let (a, a_driver) = ReactiveLock::builder()
                .instance_name("a")
                .tracker(KEY, TrackerConfig::new())
                .build_with_driver(grpc_backend(&url).await)
                .await
                .unwrap();
            let gate = spawn_gated(a_driver);
            let b = ReactiveLock::builder()
                .instance_name("b")
                .tracker(KEY, TrackerConfig::new())
                .build(grpc_backend(&url).await)
                .await
                .unwrap();
            let b_state = b.state(KEY).unwrap();
            let unblocks = count_unblocks(&b_state);
            let a_ctrl = a.controller(KEY).unwrap();
            a_ctrl
                .increment(Some("a-work"))
                .await
                .expect("acknowledged");
            eventually(&b_state, LIMIT, "B sees A", |s| {
                s.status() == Status::Blocked
            })
            .await;
            gate.close();
            let rb = b.metrics().resyncs;
            drop(hub);
            let hub = FixedHub::start(port);
            wait_resynced(&b, rb, "B").await;
            sleep(Duration::from_millis(500)).await;
            let status = b_state.status();
            let n = unblocks.load(Ordering::SeqCst);
            gate.open();
            a_ctrl.decrement(1).await.ok();
            assert!(
                status != Status::Unblocked && n == 0,
                "after the hub's restart and B's recovery, B answers {status:?} ({n} \
                 on_unblocked calls) while A is busy, alive and its entry valid"
            );
            a.shutdown().await;
            b.shutdown().await;
            drop(hub);
        });
    }

    /// Found by attack, fixed: The hub restarts empty; B recovers keeping A's busy,
    /// unexpired entry, but the hub then broadcasts the key's full state whenever C
    /// re-sends its status (its recovery); B applies it as a plain snapshot and drops A:
    /// B unblocks while A is busy, alive and its entry valid.
    #[test]
    fn hub_restart_then_a_third_instances_resend_keeps_a_live_busy_instance() {
        block_on(async {
            let port = free_port();
            let url = format!("http://127.0.0.1:{port}");
            let hub = FixedHub::start(port);
            let (a, a_driver) = ReactiveLock::builder()
                .instance_name("a")
                .tracker(KEY, TrackerConfig::new())
                .build_with_driver(grpc_backend(&url).await)
                .await
                .unwrap();
            let gate = spawn_gated(a_driver);
            let b = ReactiveLock::builder()
                .instance_name("b")
                .tracker(KEY, TrackerConfig::new())
                .build(grpc_backend(&url).await)
                .await
                .unwrap();
            let c = ReactiveLock::builder()
                .instance_name("c")
                .tracker(KEY, TrackerConfig::new())
                .build(grpc_backend(&url).await)
                .await
                .unwrap();
            let b_state = b.state(KEY).unwrap();
            let unblocks = count_unblocks(&b_state);
            let a_ctrl = a.controller(KEY).unwrap();
            a_ctrl
                .increment(Some("a-work"))
                .await
                .expect("acknowledged");
            eventually(&b_state, LIMIT, "B sees A", |s| {
                s.status() == Status::Blocked
            })
            .await;

            gate.close();
            let (rb, rc) = (b.metrics().resyncs, c.metrics().resyncs);
            drop(hub);
            let hub = FixedHub::start(port);
            wait_resynced(&b, rb, "B").await;
            wait_resynced(&c, rc, "C").await;
            sleep(Duration::from_millis(500)).await;
            let status = b_state.status();
            let n = unblocks.load(Ordering::SeqCst);
            gate.open();
            a_ctrl.decrement(1).await.ok();
            assert!(
                status != Status::Unblocked && n == 0,
                "after the hub's restart and the recoveries, B answers {status:?} ({n} \
                 on_unblocked calls) while A is busy, alive and its entry valid"
            );
            a.shutdown().await;
            b.shutdown().await;
            c.shutdown().await;
            drop(hub);
        });
    }
}

/// A Redis backend that, once armed, holds its first publish back before sending it (a
/// caller's publish still on its way when the driver's lease runs out) and its second
/// publish's reply after the write (the driver's, answered after the caller's).
struct SlowPublish {
    inner: RedisBackend,
    armed: Arc<AtomicBool>,
    calls: AtomicUsize,
}

impl reactive_lock::Backend for SlowPublish {
    type Events = <RedisBackend as reactive_lock::Backend>::Events;

    async fn publish(
        &self,
        key: &str,
        instance: &str,
        status: &reactive_lock::InstanceStatus,
    ) -> Result<(), reactive_lock::BackendError> {
        if !self.armed.load(Ordering::SeqCst) {
            return self.inner.publish(key, instance, status).await;
        }
        match self.calls.fetch_add(1, Ordering::SeqCst) {
            0 => {
                sleep(Duration::from_millis(600)).await;
                self.inner.publish(key, instance, status).await
            }
            1 => {
                let result = self.inner.publish(key, instance, status).await;
                sleep(Duration::from_millis(800)).await;
                result
            }
            _ => self.inner.publish(key, instance, status).await,
        }
    }

    async fn snapshot(
        &self,
        key: &str,
    ) -> Result<reactive_lock::Snapshot, reactive_lock::BackendError> {
        self.inner.snapshot(key).await
    }

    async fn subscribe(
        &self,
        instance: &str,
        keys: &[String],
    ) -> Result<Self::Events, reactive_lock::BackendError> {
        self.inner.subscribe(instance, keys).await
    }
}

/// The driver takes a transition over after its lease while the caller's own publish is
/// still on its way; the caller's publish then arrives below the driver's sequence, and its
/// refusal is answered before the driver's write is. The caller's `Ack` must resolve with
/// the status stored, not report the store's refusal of its own older copy as a failure.
#[test]
fn an_ack_whose_publish_the_driver_overtook_resolves_ok() {
    let server = RedisServer::start();
    block_on(async {
        let armed = Arc::new(AtomicBool::new(false));
        let lock = ReactiveLock::builder()
            .instance_name("slow")
            .tracker(KEY, TrackerConfig::new())
            .build(SlowPublish {
                inner: backend(&server.url()).await,
                armed: armed.clone(),
                calls: AtomicUsize::new(0),
            })
            .await
            .unwrap();
        let ctrl = lock.controller(KEY).unwrap();
        armed.store(true, Ordering::SeqCst);
        let outcome = ctrl.increment(Some("late")).await;
        assert!(outcome.is_ok(), "the caller's Ack: {outcome:?}");
        let mut raw = server.client();
        assert!(busy_in_store(&mut raw, "slow"), "the busy status is stored");
        lock.shutdown().await;
    });
}

/// An `Ack` polled once (its publish in flight over the network: it holds the key's
/// publishing role) and kept; the registry is shut down; an older transition's `Ack`
/// awaited after that resolves (Ok or `Shutdown`) rather than wait forever for a role no
/// driver is left to take over.
#[test]
fn an_ack_awaited_after_shutdown_while_a_kept_ack_holds_the_role_resolves() {
    let server = RedisServer::start();
    let url = server.url();
    let writer = block_on(instance(&url, "writer", TrackerConfig::new()));
    let ctrl = writer.controller(KEY).unwrap();

    let older = ctrl.increment(Some("one"));
    assert!(!older.is_immediate());
    let mut kept = ctrl.decrement(1);
    assert!(
        block_on(futures_lite::future::poll_once(&mut kept)).is_none(),
        "a Redis round trip does not complete within one poll"
    );
    block_on(writer.shutdown());
    let outcome = block_on(futures_lite::future::or(
        async { Some(older.await) },
        async {
            sleep(LIMIT).await;
            None
        },
    ));
    match outcome {
        Some(Ok(())) | Some(Err(reactive_lock::Error::Shutdown { .. })) => {}
        other => panic!("an Ack awaited after shutdown: {other:?}"),
    }
    drop(kept);
}
