//! Wire compatibility with the .NET ReactiveLock, malformed data, clock skew, AUTH, TLS and
//! the notification cost at scale — against real redis-servers.
#![cfg(feature = "redis")]

use std::time::Duration;

use futures_lite::future::block_on;
use reactive_lock::{BackendErrorKind, ReactiveLock, StoreTime, TrackerConfig};
use reactive_lock_backends::conformance::{
    PROPAGATION_LIMIT, eventually, eventually_all, settles_to,
};
use reactive_lock_backends::redis::{RedisBackend, channel_name, hash_name};
use reactive_lock_backends::testing::{RedisFactory, RedisServer};
use redis::Commands;

const KEY: &str = "payments";

fn server_ticks(con: &mut redis::Connection, plus: Duration, minus: Duration) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query(con).unwrap();
    let now = StoreTime::from_unix_nanos(s * 1_000_000_000 + us * 1_000);
    (now + plus).to_dotnet_ticks() - minus.as_nanos() as u64 / 100
}

async fn instance(url: &str, name: &str) -> ReactiveLock {
    ReactiveLock::builder()
        .instance_name(name)
        .tracker(KEY, TrackerConfig::new())
        .build(RedisBackend::connect(url).await.unwrap())
        .await
        .unwrap()
}

#[test]
fn dotnet_entries_block_and_ours_read_back_in_dotnet_format() {
    let server = RedisServer::start();
    let mut raw = server.client();
    block_on(async {
        let ours = instance(&server.url(), "rust-1").await;
        let state = ours.state(KEY).unwrap();

        // A .NET writer: HSET the value, PUBLISH the bare value.
        let ticks = server_ticks(&mut raw, Duration::from_secs(10), Duration::ZERO);
        let value = format!("1;{ticks};x");
        let _: () = raw.hset(hash_name(KEY), "dotnet-1", &value).unwrap();
        let _: () = raw.publish(channel_name(KEY), &value).unwrap();
        eventually(
            &state,
            PROPAGATION_LIMIT,
            "blocked by the .NET entry",
            |s| s.is_blocked() && s.lock_data().as_deref() == Some("x"),
        )
        .await;

        // Expired .NET entry (ticks in the past): does not block.
        let past = server_ticks(&mut raw, Duration::ZERO, Duration::from_secs(5));
        let value = format!("1;{past};old");
        let _: () = raw.hset(hash_name(KEY), "dotnet-1", &value).unwrap();
        let _: () = raw.publish(channel_name(KEY), &value).unwrap();
        eventually(
            &state,
            PROPAGATION_LIMIT,
            "expired .NET entry ignored",
            |s| !s.is_blocked(),
        )
        .await;

        // Ours, read back raw: exactly the .NET format, valid for 10 s on the server's clock.
        ours.controller(KEY)
            .unwrap()
            .increment(Some("batch-7"))
            .await
            .unwrap();
        let stored: String = raw.hget(hash_name(KEY), "rust-1").unwrap();
        let parts: Vec<&str> = stored.splitn(3, ';').collect();
        assert_eq!(parts.len(), 3, "{stored}");
        assert_eq!((parts[0], parts[2]), ("1", "batch-7"));
        assert_eq!(parts[1].len(), 18, "18-digit .NET ticks: {stored}");
        let ticks: u64 = parts[1].parse().unwrap();
        let expected = server_ticks(&mut raw, Duration::from_secs(10), Duration::ZERO);
        assert!(
            expected.abs_diff(ticks) < 20_000_000,
            "validUntil ≈ server now + 10 s: {ticks} vs {expected}"
        );

        ours.controller(KEY).unwrap().decrement(1).await.unwrap();
        let stored: String = raw.hget(hash_name(KEY), "rust-1").unwrap();
        assert!(
            stored.starts_with("0;") && stored.matches(';').count() == 1,
            "idle: `0;ticks`: {stored}"
        );
        ours.shutdown().await;
    });
}

/// The publish script prints .NET ticks from `TIME` with as few number conversions as it can
/// (a fast path for whole-second validities, a carry for the rest): its validUntil must be
/// exactly the notification's `TIME` plus the validity, carry or none, and an idle entry's
/// the ready value it was given.
#[test]
fn script_stamps_busy_validity_exactly_on_the_servers_clock() {
    use reactive_lock_backends::testing::{publish_script, publish_script_command};
    let server = RedisServer::start();
    let mut raw = server.client();
    let mut listener = server.client();
    let mut pubsub = listener.as_pubsub();
    pubsub.subscribe(channel_name(KEY)).unwrap();
    let script = publish_script();
    script.load(&mut raw).unwrap();
    let micros = [
        0, 1, 10, 500_000, 999_999, 1_000_000, 10_000_000, 12_999_999,
    ];
    for (seq, valid_us) in (1..).zip(micros) {
        let valid_for = Duration::from_micros(valid_us);
        let command = publish_script_command(&script, KEY, "rust-1", seq, true, valid_for, None);
        let applied: i64 = command.query(&mut raw).unwrap();
        assert_eq!(applied, 1);
        let payload: String = pubsub.get_message().unwrap().get_payload().unwrap();
        // RLv2, instance, seq, TIME's seconds and microseconds, the value.
        let fields: Vec<&str> = payload.splitn(6, '\n').collect();
        let (secs, us): (u64, u64) = (fields[3].parse().unwrap(), fields[4].parse().unwrap());
        let expected = (StoreTime::from_unix_nanos(secs * 1_000_000_000 + us * 1_000) + valid_for)
            .to_dotnet_ticks();
        assert_eq!(fields[5], format!("1;{expected}"), "validity {valid_us} µs");
        let stored: String = raw.hget(hash_name(KEY), "rust-1").unwrap();
        assert_eq!(stored, fields[5]);
    }
    let before = StoreTime::now_system().to_dotnet_ticks();
    let idle = publish_script_command(
        &script,
        KEY,
        "rust-1",
        100,
        false,
        Duration::from_secs(10),
        Some("x"),
    );
    let applied: i64 = idle.query(&mut raw).unwrap();
    assert_eq!(applied, 1);
    let stored: String = raw.hget(hash_name(KEY), "rust-1").unwrap();
    let (flag, ticks) = stored.split_once(';').unwrap();
    let ticks: u64 = ticks.parse().unwrap();
    assert_eq!(flag, "0", "{stored}");
    assert!(
        (before..=before + 11 * 10_000_000).contains(&ticks),
        "{stored}"
    );
}

#[test]
fn malformed_entries_are_ignored_counted_and_do_not_hide_good_ones() {
    let server = RedisServer::start();
    let mut raw = server.client();
    let future = server_ticks(&mut raw, Duration::from_secs(60), Duration::ZERO);
    let h = hash_name(KEY);
    let huge = format!("1;{future};{}", "z".repeat(100_000));
    let bad: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"flag".to_vec(), format!("2;{future};x").into_bytes()),
        (b"ticks".to_vec(), b"1;not-a-number;x".to_vec()),
        (b"missing".to_vec(), b"1".to_vec()),
        (b"empty".to_vec(), b"".to_vec()),
        (b"utf8".to_vec(), vec![b'1', b';', 0xff, 0xfe]),
        (
            vec![0xff, 0xfe],
            format!("1;{future};field-not-utf8").into_bytes(),
        ),
        (b"huge".to_vec(), huge.into_bytes()),
        (b"negative".to_vec(), b"1;-5;x".to_vec()),
    ];
    for (field, value) in &bad {
        let _: () = raw.hset(&h, field.as_slice(), value.as_slice()).unwrap();
    }
    let _: () = raw.hset(&h, "good", format!("1;{future};ok")).unwrap();
    block_on(async {
        let backend = RedisBackend::connect(&server.url()).await.unwrap();
        let lock = ReactiveLock::builder()
            .instance_name("reader")
            .tracker(KEY, TrackerConfig::new())
            .build(backend.clone())
            .await
            .unwrap();
        let state = lock.state(KEY).unwrap();
        assert!(state.is_blocked(), "the good entry still blocks");
        assert_eq!(state.lock_data_entries(), ["ok"]);
        assert_eq!(
            backend.stats().malformed_entries,
            bad.len() as u64,
            "each malformed entry counted"
        );

        // Malformed notifications: ignored and counted, the subscription keeps working.
        let _: () = raw.publish(channel_name(KEY), "RLv2\nbroken").unwrap();
        let _: () = raw
            .publish(channel_name(KEY), b"RLv2\n\xff".as_slice())
            .unwrap();
        // The good entry's owner goes idle, the .NET way: a bare value, then a re-read.
        let _: () = raw.hset(&h, "good", format!("0;{future}")).unwrap();
        let _: () = raw.publish(channel_name(KEY), "0;0").unwrap();
        eventually(
            &state,
            PROPAGATION_LIMIT,
            "still subscribed after malformed notifications",
            |s| !s.is_blocked(),
        )
        .await;
        assert!(backend.stats().malformed_entries >= bad.len() as u64 + 2);
        lock.shutdown().await;
    });
}

#[test]
fn oversized_lock_data_is_rejected_with_a_clear_error() {
    let server = RedisServer::start();
    block_on(async {
        let lock = instance(&server.url(), "big").await;
        let data = "d".repeat(70_000);
        let err = lock
            .controller(KEY)
            .unwrap()
            .increment(Some(&data))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
        lock.shutdown().await;
    });
}

/// Clients subscribed to anything on `raw`'s server.
fn subscribed_clients(raw: &mut redis::Connection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query(raw)
        .unwrap();
    list.lines().filter(|l| !l.trim().is_empty()).count()
}

#[test]
fn a_registry_shut_down_or_dropped_ends_its_subscription() {
    let server = RedisServer::start();
    let mut raw = server.client();
    block_on(async {
        let settles_at = |expected: usize, what: &'static str| {
            let mut raw = server.client();
            async move {
                settles_to(PROPAGATION_LIMIT, what, expected, || {
                    subscribed_clients(&mut raw)
                })
                .await
            }
        };
        let lock = instance(&server.url(), "leaving").await;
        settles_at(1, "the registry's subscription").await;
        // A controller handle outlives the registry (it keeps the backend alive): the
        // subscription still ends with the shutdown.
        let ctrl = lock.controller(KEY).unwrap();
        lock.shutdown().await;
        drop(lock);
        settles_at(0, "after shutdown, a controller alive").await;
        drop(ctrl);

        let lock = instance(&server.url(), "crashing").await;
        settles_at(1, "the second registry's subscription").await;
        drop(lock);
        settles_at(0, "after a drop without shutdown").await;
    });
    assert_eq!(subscribed_clients(&mut raw), 0);
}

#[test]
fn a_server_that_forgot_the_script_gets_it_again() {
    let server = RedisServer::start();
    let mut raw = server.client();
    block_on(async {
        let lock = instance(&server.url(), "flushed").await;
        let ctrl = lock.controller(KEY).unwrap();
        ctrl.increment(None).await.unwrap();
        // As after a restart, a failover or an operator's SCRIPT FLUSH: EVALSHA answers
        // NOSCRIPT, and the publish loads the script and runs it.
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut raw).unwrap();
        ctrl.decrement(1).await.unwrap();
        let stored: String = raw.hget(hash_name(KEY), "flushed").unwrap();
        assert!(stored.starts_with("0;"), "idle status stored: {stored}");
        ctrl.increment(Some("again")).await.unwrap();
        let stored: String = raw.hget(hash_name(KEY), "flushed").unwrap();
        assert!(
            stored.starts_with("1;") && stored.ends_with(";again"),
            "{stored}"
        );
        lock.shutdown().await;
    });
}

#[test]
fn auth_with_password_and_acl_user() {
    let server = RedisServer::start_with(&[
        "--requirepass",
        "s3cret",
        "--user",
        "alice",
        "on",
        ">alicepw",
        "~*",
        "&*",
        "+@all",
    ]);
    block_on(async {
        let port = server.port;
        let ok = RedisBackend::connect(&format!("redis://:s3cret@127.0.0.1:{port}/")).await;
        assert!(ok.is_ok(), "password auth: {ok:?}");
        let acl = RedisBackend::connect(&format!("redis://alice:alicepw@127.0.0.1:{port}/1")).await;
        assert!(acl.is_ok(), "ACL user, database 1: {acl:?}");
        let lock = ReactiveLock::builder()
            .instance_name("acl")
            .tracker(KEY, TrackerConfig::new())
            .build(acl.unwrap())
            .await
            .unwrap();
        lock.controller(KEY).unwrap().increment(None).await.unwrap();
        lock.shutdown().await;

        let err = RedisBackend::connect(&format!("redis://alice:wrong@127.0.0.1:{port}/"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), BackendErrorKind::Rejected, "{err}");
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "names the address: {err}"
        );
        assert!(
            !err.to_string().contains("wrong"),
            "never prints the password: {err}"
        );
    });
}

#[test]
fn unreachable_server_fails_fast_naming_the_address() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    block_on(async {
        let err = RedisBackend::builder(&format!("redis://127.0.0.1:{port}/"))
            .connect_timeout(Duration::from_millis(500))
            .connect()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), BackendErrorKind::Unavailable);
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
        let err = RedisBackend::connect("http://nope").await.unwrap_err();
        assert_eq!(err.kind(), BackendErrorKind::Rejected);
        let err = RedisBackend::builder("redis://127.0.0.1/")
            .response_timeout(Duration::ZERO)
            .connect()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("response_timeout"), "{err}");
    });
}

#[test]
fn fifty_instances_no_read_storm() {
    let server = RedisServer::start();
    block_on(async {
        let mut locks = Vec::new();
        for i in 0..50 {
            locks.push(instance(&server.url(), &format!("i{i}")).await);
        }
        let after_build = server.command_calls("hgetall");
        let ctrl = locks[0].controller(KEY).unwrap();
        for _ in 0..500 {
            ctrl.increment(Some("flap")).await.unwrap();
            ctrl.decrement(1).await.unwrap();
        }
        ctrl.increment(Some("final")).await.unwrap();
        eventually_all(
            &locks[1..],
            KEY,
            PROPAGATION_LIMIT,
            "every instance ends in the true state",
            |s| s.lock_data().as_deref() == Some("final"),
        )
        .await;
        let during = server.command_calls("hgetall") - after_build;
        eprintln!(
            "HGETALL calls: {after_build} for 50 initial syncs, {during} during 1,001 transitions"
        );
        // A re-read per notification would be 49 × 1,001 × 2; only resyncs may read.
        assert!(during < 50, "no HGETALL per notification: {during}");
        for lock in &locks {
            lock.shutdown().await;
        }
    });
}

#[test]
fn tls_with_a_self_signed_certificate() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert_pem = certified.cert.pem();
    let dir = std::env::temp_dir().join(format!("reactive-lock-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let (cert, key) = (
        cert.to_str().unwrap().to_string(),
        key.to_str().unwrap().to_string(),
    );
    let server = RedisServer::start_with(&[
        "--port",
        "0",
        "--tls-port",
        "{port}",
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &cert,
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("rediss://127.0.0.1:{}/", server.port);
    block_on(async {
        let untrusted = RedisBackend::builder(&url)
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await;
        assert!(
            untrusted.is_err(),
            "a self-signed certificate is not trusted by default"
        );
        let backend = RedisBackend::builder(&url)
            .tls_root_cert(cert_pem.clone())
            .connect()
            .await
            .expect("TLS connect");
        let a = ReactiveLock::builder()
            .instance_name("a")
            .tracker(KEY, TrackerConfig::new())
            .build(backend)
            .await
            .unwrap();
        let b = ReactiveLock::builder()
            .instance_name("b")
            .tracker(KEY, TrackerConfig::new())
            .build(
                RedisBackend::builder(&url)
                    .tls_root_cert(cert_pem.clone())
                    .connect()
                    .await
                    .unwrap(),
            )
            .await
            .unwrap();
        a.controller(KEY)
            .unwrap()
            .increment(Some("over-tls"))
            .await
            .unwrap();
        eventually(
            &b.state(KEY).unwrap(),
            PROPAGATION_LIMIT,
            "propagates over TLS pub/sub",
            |s| s.lock_data().as_deref() == Some("over-tls"),
        )
        .await;
        a.shutdown().await;
        b.shutdown().await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn flapping_a_hundred_thousand_times_coalesces_writes() {
    let server = RedisServer::start();
    block_on(async {
        let a = instance(&server.url(), "a").await;
        let b = instance(&server.url(), "b").await;
        let ctrl = a.controller(KEY).unwrap();
        let before = server.command_calls("evalsha") + server.command_calls("eval");
        for _ in 0..100_000 {
            drop(ctrl.enter(Some("flap")));
        }
        let _last = ctrl.enter(Some("final"));
        eventually(
            &b.state(KEY).unwrap(),
            PROPAGATION_LIMIT,
            "b ends on the newest status",
            |s| s.lock_data().as_deref() == Some("final"),
        )
        .await;
        let writes = server.command_calls("evalsha") + server.command_calls("eval") - before;
        eprintln!("{writes} script calls for 200,001 transitions");
        assert!(
            writes < 20_000,
            "latest wins must coalesce: {writes} writes for 200,001 transitions"
        );
        a.shutdown().await;
        b.shutdown().await;
    });
}

/// The suite's first scenario inside whatever runtime calls it.
async fn propagation(factory: impl reactive_lock_backends::conformance::BackendFactory) {
    reactive_lock_backends::conformance::busy_blocks_others(&factory).await;
}

#[test]
fn works_inside_tokio() {
    let server = RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(propagation(RedisFactory(server.url())));
}

#[test]
fn works_inside_tokio_current_thread() {
    let server = RedisServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(propagation(RedisFactory(server.url())));
}

#[test]
fn works_inside_async_std() {
    let server = RedisServer::start();
    async_std::task::block_on(propagation(RedisFactory(server.url())));
}

#[test]
fn works_inside_smol() {
    let server = RedisServer::start();
    smol::block_on(propagation(RedisFactory(server.url())));
}

#[test]
fn own_publishes_are_not_delivered_to_the_own_subscription() {
    let server = RedisServer::start();
    block_on(async {
        let (backend_a, backend_b) = (
            RedisBackend::connect(&server.url()).await.unwrap(),
            RedisBackend::connect(&server.url()).await.unwrap(),
        );
        let build = |name: &'static str, backend: RedisBackend| {
            ReactiveLock::builder()
                .instance_name(name)
                .tracker(KEY, TrackerConfig::new())
                .build(backend)
        };
        let a = build("a", backend_a.clone()).await.unwrap();
        let b = build("b", backend_b.clone()).await.unwrap();
        // b's initial idle status, published at its build, is a notification a applies.
        settles_to(PROPAGATION_LIMIT, "a applied b's initial status", 1, || {
            backend_a.stats().notifications_applied
        })
        .await;
        let ctrl = a.controller(KEY).unwrap();
        for _ in 0..50 {
            ctrl.increment(Some("own")).await.unwrap();
            ctrl.decrement(1).await.unwrap();
        }
        ctrl.increment(Some("last")).await.unwrap();
        eventually(
            &b.state(KEY).unwrap(),
            PROPAGATION_LIMIT,
            "b sees a's last status",
            |s| s.lock_data().as_deref() == Some("last"),
        )
        .await;
        // b applied a's notifications; a's own subscription never saw its echoes.
        assert!(backend_b.stats().notifications_applied > 0);
        assert_eq!(
            backend_a.stats().notifications_applied,
            1,
            "own echoes dropped"
        );
        a.shutdown().await;
        b.shutdown().await;
    });
}

/// Everything logged in the process, as text (this binary's only global subscriber).
#[derive(Clone, Default)]
struct Log(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A flood of distinct malformed entries is counted in full but logged at most ten times
/// a minute, with the count of the unlogged ones; an entry read again is not logged again.
#[test]
fn a_flood_of_malformed_entries_is_counted_but_its_warnings_are_rate_limited() {
    const FLOODED: &str = "malformed-flood";
    let log = Log::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .init();
    let server = RedisServer::start();
    let mut raw = server.client();
    let h = hash_name(FLOODED);
    for i in 0..50 {
        let _: () = raw.hset(&h, format!("bad-{i}"), format!("9;{i}")).unwrap();
    }
    let warnings = || {
        let text = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
        text.lines()
            .filter(|l| l.contains("ignoring a malformed Redis entry") && l.contains(FLOODED))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    block_on(async {
        let backend = RedisBackend::connect(&server.url()).await.unwrap();
        let lock = ReactiveLock::builder()
            .instance_name("reader")
            .tracker(FLOODED, TrackerConfig::new())
            .build(backend.clone())
            .await
            .unwrap();
        assert_eq!(backend.stats().malformed_entries, 50, "every one counted");
        assert_eq!(warnings().len(), 10, "ten warnings in the minute");
        // Read again: counted again, logged no more (the same entries, and the limit).
        lock.state(FLOODED).unwrap().refresh().await.unwrap();
        assert_eq!(backend.stats().malformed_entries, 100);
        assert_eq!(warnings().len(), 10);
        lock.shutdown().await;
    });
    assert!(
        warnings().iter().all(|l| l.contains("unlogged=0")),
        "no warning withheld before the first ten: {:?}",
        warnings()
    );
}
