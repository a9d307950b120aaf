//! The one guarantee, against a real redis-server: an instance never answers "unblocked"
//! while another instance is busy, and a busy status always reaches the store. Each test is
//! a scenario that broke it: a read-through racing the subscription, a previous run's newer
//! sequence, an `Ack` polled once and kept, a crashed run's busy entry, empty lock data, one
//! refused renewal, a dead command connection, a restore from a persisted snapshot, and
//! transient server states reported as refusals.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::future::block_on;
use reactive_lock::{
    Backend, BackendError, BackendErrorKind, InstanceStatus, ReactiveLock, Snapshot, Status,
    TrackerConfig,
};
use reactive_lock_backends::conformance::{PROPAGATION_LIMIT, eventually};
use reactive_lock_backends::redis::{RedisBackend, hash_name};
use reactive_lock_backends::testing::RedisServer;
use redis::Commands;

const KEY: &str = "safety";

async fn backend(url: &str) -> RedisBackend {
    RedisBackend::connect(url).await.expect("connect")
}

fn config() -> TrackerConfig {
    TrackerConfig::new()
}

async fn instance_on<B: Backend>(backend: B, name: &str) -> ReactiveLock {
    ReactiveLock::builder()
        .instance_name(name)
        .tracker(KEY, config())
        .build(backend)
        .await
        .expect("build")
}

async fn instance(url: &str, name: &str) -> ReactiveLock {
    instance_on(backend(url).await, name).await
}

async fn sleep(d: Duration) {
    async_io::Timer::after(d).await;
}

/// Counts `on_unblocked` calls of `lock`'s key: a reader released while another instance
/// is busy shows as one.
fn count_unblocks(lock: &ReactiveLock) -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    lock.state(KEY).unwrap().on_unblocked(move || {
        c.fetch_add(1, Ordering::SeqCst);
    });
    count
}

/// A Redis backend whose next snapshot, once armed, is read and then held until released:
/// the reply of a read-through arriving after changes the subscription delivered meanwhile.
struct HeldRead {
    inner: RedisBackend,
    armed: Arc<AtomicBool>,
    taken: async_channel::Sender<()>,
    release: async_channel::Receiver<()>,
}

impl Backend for HeldRead {
    type Events = <RedisBackend as Backend>::Events;

    async fn publish(
        &self,
        key: &str,
        instance: &str,
        status: &InstanceStatus,
    ) -> Result<(), BackendError> {
        self.inner.publish(key, instance, status).await
    }

    async fn snapshot(&self, key: &str) -> Result<Snapshot, BackendError> {
        let snapshot = self.inner.snapshot(key).await?;
        if self.armed.swap(false, Ordering::SeqCst) {
            let _ = self.taken.send(()).await;
            let _ = self.release.recv().await;
        }
        Ok(snapshot)
    }

    async fn subscribe(
        &self,
        instance: &str,
        keys: &[String],
    ) -> Result<Self::Events, BackendError> {
        self.inner.subscribe(instance, keys).await
    }
}

#[test]
fn a_read_through_never_forgets_an_instance_that_turned_busy_meanwhile() {
    let server = RedisServer::start();
    block_on(async {
        let armed = Arc::new(AtomicBool::new(false));
        let (taken_tx, taken_rx) = async_channel::bounded(1);
        let (release_tx, release_rx) = async_channel::bounded(1);
        let b = instance_on(
            HeldRead {
                inner: backend(&server.url()).await,
                armed: armed.clone(),
                taken: taken_tx,
                release: release_rx,
            },
            "b",
        )
        .await;
        let state = b.state(KEY).unwrap();

        // B's read-through is served before A exists, and its reply is held back.
        armed.store(true, Ordering::SeqCst);
        let reader = {
            let state = state.clone();
            std::thread::spawn(move || block_on(state.refresh()))
        };
        taken_rx.recv().await.unwrap();

        // Meanwhile A (a new name: its field is not in the store yet) turns busy, and B's
        // subscription delivers it.
        let a = instance(&server.url(), "a").await;
        a.controller(KEY)
            .unwrap()
            .increment(Some("batch"))
            .await
            .unwrap();
        eventually(&state, PROPAGATION_LIMIT, "B sees A busy", |s| {
            s.is_blocked()
        })
        .await;

        // The old reply arrives: it must not drop A.
        release_tx.send(()).await.unwrap();
        reader.join().unwrap().expect("the read-through succeeds");
        assert!(
            state.is_blocked(),
            "B answers unblocked after a stale read-through while A is busy"
        );
        assert_eq!(state.lock_data().as_deref(), Some("batch"));
        a.shutdown().await;
        b.shutdown().await;
    });
}

/// `CONFIG SET name value` on the test's own connection to the server.
fn config_set(raw: &mut redis::Connection, name: &str, value: &str) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query(raw)
        .unwrap_or_else(|e| panic!("CONFIG SET {name} {value}: {e}"));
}

fn padded(seq: u64) -> String {
    format!("{seq:020}")
}

#[test]
fn an_instance_supersedes_its_previous_run_whatever_its_clock() {
    let server = RedisServer::start();
    let mut raw = server.client();
    // A previous run of "a" whose clock ran a minute ahead left a higher sequence.
    let ahead = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        + 60_000_000_000;
    let seqs = format!("{{{}}}:seq", hash_name(KEY));
    let _: () = raw.hset(&seqs, "a", padded(ahead)).unwrap();
    let _: () = raw.hset(hash_name(KEY), "a", "0;0").unwrap();
    block_on(async {
        let b = instance(&server.url(), "b").await;
        let a = instance(&server.url(), "a").await;
        a.controller(KEY)
            .unwrap()
            .increment(Some("after restart"))
            .await
            .expect("the busy status is written");
        let stored: String = raw.hget(hash_name(KEY), "a").unwrap();
        assert!(stored.starts_with("1;"), "the store holds A busy: {stored}");
        let seq: String = raw.hget(&seqs, "a").unwrap();
        assert!(
            seq > padded(ahead),
            "A continued above its previous run: {seq}"
        );
        eventually(
            &b.state(KEY).unwrap(),
            PROPAGATION_LIMIT,
            "B sees A busy",
            |s| s.is_blocked(),
        )
        .await;
        a.shutdown().await;
        b.shutdown().await;
    });
}

#[test]
fn a_publish_the_store_refuses_as_older_is_not_acknowledged() {
    let server = RedisServer::start();
    let mut raw = server.client();
    block_on(async {
        let backend = backend(&server.url()).await;
        let valid = Duration::from_secs(10);
        backend
            .publish(KEY, "a", &InstanceStatus::busy(None, 10, valid))
            .await
            .unwrap();
        let older = backend
            .publish(KEY, "a", &InstanceStatus::idle(9, valid))
            .await;
        let error = older.expect_err("an older status is not acknowledged as written");
        assert_eq!(error.kind(), BackendErrorKind::Superseded, "{error}");
        assert_eq!(error.held_seq(), Some(10));
        let stored: String = raw.hget(hash_name(KEY), "a").unwrap();
        assert!(stored.starts_with("1;"), "{stored}");
        // The same sequence again (a retried publish) is written.
        backend
            .publish(KEY, "a", &InstanceStatus::idle(10, valid))
            .await
            .unwrap();
    });
}

#[test]
fn an_ack_polled_once_and_kept_still_reaches_the_store_and_renews() {
    let server = RedisServer::start();
    block_on(async {
        let b = instance(&server.url(), "b").await;
        let unblocks = count_unblocks(&b);
        let state = b.state(KEY).unwrap();
        let a = ReactiveLock::builder()
            .instance_name("a")
            .renewal(Duration::from_millis(300))
            .expiration(Duration::from_secs(1))
            .tracker(KEY, config())
            .build(backend(&server.url()).await)
            .await
            .unwrap();
        let ctrl = a.controller(KEY).unwrap();
        let mut ack = ctrl.increment(Some("batch"));
        // One poll (what a `select!` that took another branch does), then kept unpolled.
        let first = futures_lite::future::poll_once(&mut ack).await;
        eventually(&state, PROPAGATION_LIMIT, "B sees A busy", |s| {
            s.is_blocked()
        })
        .await;
        // Renewals continue: B stays blocked across several validities.
        sleep(Duration::from_secs(3)).await;
        assert!(state.is_blocked(), "A's entry expired while A is busy");
        assert_eq!(
            unblocks.load(Ordering::SeqCst),
            0,
            "B was released meanwhile"
        );
        // A later transition is not held up by the kept Ack.
        let idle = futures_lite::future::or(async { Some(ctrl.decrement(1).await) }, async {
            sleep(Duration::from_secs(5)).await;
            None
        })
        .await;
        assert!(
            matches!(idle, Some(Ok(()))),
            "the idle transition completes: {idle:?}"
        );
        eventually(&state, PROPAGATION_LIMIT, "B sees A idle", |s| {
            !s.is_blocked()
        })
        .await;
        // Awaited late, the kept Ack resolves (its status was superseded by a newer one).
        if first.is_none() {
            ack.await.unwrap();
        }
        a.shutdown().await;
        b.shutdown().await;
    });
}

#[test]
fn a_restarted_instance_replaces_its_crashed_runs_busy_entry_at_once() {
    let server = RedisServer::start();
    block_on(async {
        let b = instance(&server.url(), "b").await;
        let state = b.state(KEY).unwrap();
        let a = instance(&server.url(), "a").await;
        a.controller(KEY).unwrap().increment(None).await.unwrap();
        eventually(&state, PROPAGATION_LIMIT, "B sees A busy", |s| {
            s.is_blocked()
        })
        .await;
        // A crashes (no goodbye: its entry stays busy for the validity, 10 s) and restarts
        // under the same name, idle.
        drop(a);
        let restarted = Instant::now();
        let a = instance(&server.url(), "a").await;
        eventually(
            &state,
            Duration::from_secs(3),
            "B released by the restarted A's idle status, before the old entry expires",
            |s| !s.is_blocked(),
        )
        .await;
        assert!(restarted.elapsed() < Duration::from_secs(5));
        a.shutdown().await;
        b.shutdown().await;
    });
}

#[test]
fn empty_lock_data_reads_as_none_on_the_instance_and_on_the_others() {
    let server = RedisServer::start();
    block_on(async {
        let b = instance(&server.url(), "b").await;
        let a = instance(&server.url(), "a").await;
        a.controller(KEY)
            .unwrap()
            .increment(Some(""))
            .await
            .unwrap();
        let own = a.state(KEY).unwrap();
        assert!(own.is_blocked());
        assert_eq!(own.lock_data(), None, "on the instance itself");
        assert!(own.lock_data_entries().is_empty());
        let other = b.state(KEY).unwrap();
        eventually(&other, PROPAGATION_LIMIT, "B sees A busy", |s| {
            s.is_blocked()
        })
        .await;
        assert_eq!(other.lock_data(), None, "on another instance");
        assert!(other.lock_data_entries().is_empty());
        // A .NET writer's empty lock data (`1;{ticks};`) reads the same.
        let snapshot = backend(&server.url()).await.snapshot(KEY).await.unwrap();
        assert!(snapshot.lock_data_entries().is_empty());
        a.shutdown().await;
        b.shutdown().await;
    });
}

#[test]
fn one_refused_renewal_does_not_release_the_others() {
    let server = RedisServer::start();
    let mut raw = server.client();
    block_on(async {
        let b = instance(&server.url(), "b").await;
        let unblocks = count_unblocks(&b);
        let state = b.state(KEY).unwrap();
        // Validity 1.8 renewals: a renewal lost for good leaves the entry to expire 0.2 s
        // before the next one.
        let renewal = Duration::from_secs(1);
        let a = ReactiveLock::builder()
            .instance_name("a")
            .renewal(renewal)
            .expiration(renewal * 18 / 10)
            .tracker(KEY, config())
            .build(backend(&server.url()).await)
            .await
            .unwrap();
        a.controller(KEY).unwrap().increment(None).await.unwrap();
        eventually(&state, PROPAGATION_LIMIT, "B sees A busy", |s| {
            s.is_blocked()
        })
        .await;
        // Find the phase of A's renewal rounds, then refuse writes around the next one.
        let rounds = a.metrics().renewals;
        let deadline = Instant::now() + Duration::from_secs(5);
        while a.metrics().renewals == rounds {
            assert!(Instant::now() < deadline, "no renewal round");
            sleep(Duration::from_millis(5)).await;
        }
        let round = Instant::now();
        sleep(renewal - Duration::from_millis(150)).await;
        config_set(&mut raw, "maxmemory", "1");
        let refusing = Instant::now();
        sleep(Duration::from_millis(450)).await;
        config_set(&mut raw, "maxmemory", "0");
        assert!(
            round.elapsed() > renewal && refusing.elapsed() >= Duration::from_millis(450),
            "the refusal covered the renewal round"
        );
        assert!(a.metrics().publish_failures > 0, "the renewal was refused");
        sleep(renewal * 2).await;
        assert_eq!(
            unblocks.load(Ordering::SeqCst),
            0,
            "B was released while A is busy"
        );
        assert!(state.is_blocked());
        a.shutdown().await;
        b.shutdown().await;
    });
}

#[test]
fn a_dead_command_connection_is_replaced_before_any_error_reaches_a_caller() {
    let server = RedisServer::start();
    let mut raw = server.client();
    block_on(async {
        let b = instance(&server.url(), "b").await;
        let state = b.state(KEY).unwrap();
        state.refresh().await.unwrap();
        let _: () = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .query(&mut raw)
            .unwrap_or(());
        for i in 0..3 {
            state
                .refresh()
                .await
                .unwrap_or_else(|e| panic!("read-through {i} after CLIENT KILL: {e}"));
        }
        // The server's idle timeout closes the command connection too.
        let mut raw = server.client();
        config_set(&mut raw, "timeout", "1");
        sleep(Duration::from_millis(2500)).await;
        state
            .refresh()
            .await
            .expect("read-through after the idle timeout");
        b.shutdown().await;
    });
}

#[test]
fn a_restore_from_a_persisted_snapshot_does_not_bring_back_a_live_idle_instance_as_busy() {
    let mut server = RedisServer::start();
    let mut raw = server.client();
    block_on(async {
        let b = instance(&server.url(), "b").await;
        let a = instance(&server.url(), "a").await;
        let ctrl = a.controller(KEY).unwrap();
        ctrl.increment(None).await.unwrap();
        eventually(
            &b.state(KEY).unwrap(),
            PROPAGATION_LIMIT,
            "B sees A busy",
            |s| s.is_blocked(),
        )
        .await;
        let _: () = redis::cmd("SAVE").query(&mut raw).unwrap();
        ctrl.decrement(1).await.unwrap();
        eventually(
            &b.state(KEY).unwrap(),
            PROPAGATION_LIMIT,
            "B sees A idle",
            |s| !s.is_blocked(),
        )
        .await;
        // Redis restarts from the save: the hash says A is busy (valid for ~10 s more).
        server.restart();
        let restarted = Instant::now();
        let c = instance(&server.url(), "c").await;
        for (name, lock) in [
            ("a fresh instance", &c),
            ("an instance that lived through it", &b),
        ] {
            eventually(
                &lock.state(KEY).unwrap(),
                Duration::from_secs(4),
                &format!("{name} sees A idle before the restored entry expires"),
                |s| s.status() == Status::Unblocked,
            )
            .await;
        }
        assert!(restarted.elapsed() < Duration::from_secs(8));
        c.shutdown().await;
        a.shutdown().await;
        b.shutdown().await;
    });
}

#[test]
fn temporary_server_states_are_unavailable_not_rejected() {
    let server = RedisServer::start();
    let mut raw = server.client();
    block_on(async {
        let backend = backend(&server.url()).await;
        let valid = Duration::from_secs(10);
        let mut seq = 0;
        let mut publish = async || {
            seq += 1;
            backend
                .publish(KEY, "a", &InstanceStatus::busy(None, seq, valid))
                .await
        };
        publish().await.unwrap();

        // OOM: out of memory under `noeviction`.
        config_set(&mut raw, "maxmemory", "1");
        let error = publish().await.expect_err("OOM refuses the write");
        assert_eq!(error.kind(), BackendErrorKind::Unavailable, "OOM: {error}");
        config_set(&mut raw, "maxmemory", "0");

        // BUSY: a script runs past the busy threshold.
        config_set(&mut raw, "busy-reply-threshold", "10");
        let mut spinner = server.client();
        let spin = std::thread::spawn(move || {
            let _: redis::RedisResult<()> = redis::cmd("EVAL")
                .arg("while true do end")
                .arg(0)
                .query(&mut spinner);
        });
        sleep(Duration::from_millis(100)).await;
        let error = publish().await.expect_err("BUSY refuses the call");
        assert_eq!(error.kind(), BackendErrorKind::Unavailable, "BUSY: {error}");
        let mut killer = server.client();
        let _: () = redis::cmd("SCRIPT").arg("KILL").query(&mut killer).unwrap();
        spin.join().unwrap();

        // READONLY: the server became a replica (of a second server).
        let primary = RedisServer::start();
        let _: () = redis::cmd("REPLICAOF")
            .arg("127.0.0.1")
            .arg(
                primary
                    .url()
                    .trim_end_matches('/')
                    .rsplit(':')
                    .next()
                    .unwrap(),
            )
            .query(&mut killer)
            .unwrap();
        let error = publish().await.expect_err("a replica refuses writes");
        assert_eq!(
            error.kind(),
            BackendErrorKind::Unavailable,
            "READONLY: {error}"
        );
    });
}

#[test]
fn a_read_takes_the_entries_and_their_sequences_in_one_atomic_step() {
    let server = RedisServer::start();
    block_on(async {
        let backend = backend(&server.url()).await;
        let scripts = || server.command_calls("evalsha") + server.command_calls("eval");
        // The first read loads the script (NOSCRIPT, SCRIPT LOAD, EVALSHA again).
        backend.snapshot(KEY).await.unwrap();
        let (before, reads) = (scripts(), server.command_calls("hgetall"));
        backend.snapshot(KEY).await.unwrap();
        // A script runs atomically: its HGETALL, HMGET and TIME see one state.
        assert_eq!(scripts(), before + 1, "one read script per snapshot");
        assert_eq!(
            server.command_calls("hgetall"),
            reads + 1,
            "the entries are read inside the script"
        );
    });
}
