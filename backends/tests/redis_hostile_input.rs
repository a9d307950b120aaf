//! The Redis backend against hostile or unusual input: a hash someone else filled with
//! 100,000 fields, lock data with `;`, newlines and non-ASCII, a .NET writer's lock data
//! joined with the separator, lock data that holds the separator. Own `redis-server` per
//! test on a free port; every wait bounded.
#![cfg(feature = "redis")]

use std::time::Duration;

use futures_lite::future::block_on;
use reactive_lock::{Backend, Error, ReactiveLock, StoreTime, TrackerConfig};
use reactive_lock_backends::conformance::{PROPAGATION_LIMIT, eventually};
use reactive_lock_backends::redis::{MAX_ENTRIES_PER_KEY, RedisBackend, channel_name, hash_name};
use reactive_lock_backends::testing::RedisServer;
use redis::Commands;

const KEY: &str = "payments";

async fn instance(url: &str, name: &str) -> ReactiveLock {
    ReactiveLock::builder()
        .instance_name(name)
        .tracker(KEY, TrackerConfig::new())
        .build(RedisBackend::connect(url).await.expect("connect"))
        .await
        .expect("build")
}

/// Issue 21 part 2: a read of a hash with 100,000 fields returns at most
/// `MAX_ENTRIES_PER_KEY` entries and counts the rest.
#[test]
fn a_hash_of_100_000_fields_is_read_up_to_the_limit_and_the_rest_counted() {
    let server = RedisServer::start();
    let mut raw = server.client();
    let fields = 100_000;
    let ticks = StoreTime::now_system().to_dotnet_ticks();
    // Idle entries, and busy ones long expired: neither may crowd out a live busy entry.
    let (idle, expired) = (format!("0;{ticks}"), format!("1;{};old", ticks - 1));
    for chunk in 0..fields / 1_000 {
        let mut pipe = redis::pipe();
        for i in chunk * 1_000..(chunk + 1) * 1_000 {
            let value = if i % 2 == 0 { &idle } else { &expired };
            pipe.hset(hash_name(KEY), format!("junk-{i}"), value)
                .ignore();
        }
        pipe.query::<()>(&mut raw).unwrap();
    }
    block_on(async {
        let backend = RedisBackend::connect(&server.url()).await.unwrap();
        let snapshot = backend.snapshot(KEY).await.unwrap();
        assert_eq!(snapshot.entries.len(), MAX_ENTRIES_PER_KEY);
        assert!(!snapshot.is_blocked());
        assert_eq!(
            backend.stats().entries_over_limit,
            (fields - MAX_ENTRIES_PER_KEY) as u64
        );
        // A registry still builds and works on the polluted key.
        let lock = instance(&server.url(), "worker").await;
        let ctrl = lock.controller(KEY).unwrap();
        ctrl.increment(Some("batch")).await.unwrap();
        assert!(lock.state(KEY).unwrap().is_blocked());
        // Another instance's read finds the live busy entry among the 100,001, wherever
        // the hash keeps it: the unexpired busy entries come first.
        let snapshot = backend.snapshot(KEY).await.unwrap();
        assert_eq!(snapshot.entries.len(), MAX_ENTRIES_PER_KEY);
        assert!(snapshot.is_blocked(), "the worker's busy entry is read");
        assert_eq!(snapshot.lock_data_entries(), ["batch"]);
        ctrl.decrement(1).await.unwrap();
        assert!(!backend.snapshot(KEY).await.unwrap().is_blocked());
        lock.shutdown().await;
    });
}

/// Issue 21 part 8: lock data with `;`, newlines and non-ASCII reaches another instance,
/// and the store, unchanged.
#[test]
fn lock_data_with_semicolons_newlines_and_non_ascii_round_trips() {
    let server = RedisServer::start();
    let data = "a;b;;c\nline two\r\n ünïcødé — 🚀 ;";
    block_on(async {
        let writer = instance(&server.url(), "writer").await;
        let reader = instance(&server.url(), "reader").await;
        writer
            .controller(KEY)
            .unwrap()
            .increment(Some(data))
            .await
            .unwrap();
        let state = reader.state(KEY).unwrap();
        eventually(&state, PROPAGATION_LIMIT, "the reader sees the data", |s| {
            s.is_blocked()
        })
        .await;
        assert_eq!(state.lock_data_entries(), [data]);
        assert_eq!(state.lock_data().as_deref(), Some(data));
        // Read through, too (a fresh snapshot, not the notification).
        let fresh = RedisBackend::connect(&server.url()).await.unwrap();
        assert_eq!(
            fresh.snapshot(KEY).await.unwrap().lock_data_entries(),
            [data]
        );
        // The .NET value: flag, validUntil, then the data as it is.
        let stored: String = server.client().hget(hash_name(KEY), "writer").unwrap();
        assert!(
            stored.starts_with("1;") && stored.ends_with(&format!(";{data}")),
            "{stored:?}"
        );
        writer.shutdown().await;
        reader.shutdown().await;
    });
}

/// Issue 21 part 8: .NET splits the joined lock data on `#REACTIVELOCK#`; a .NET writer's
/// `data1#REACTIVELOCK#data2#REACTIVELOCK#data3` reads as three entries here too.
#[test]
fn a_dotnet_writers_joined_lock_data_reads_as_three_entries() {
    let server = RedisServer::start();
    block_on(async {
        let reader = instance(&server.url(), "reader").await;
        let until = (StoreTime::now_system() + Duration::from_secs(60)).to_dotnet_ticks();
        let value = format!("1;{until};data1#REACTIVELOCK#data2#REACTIVELOCK#data3");
        let mut raw = server.client();
        let _: () = raw.hset(hash_name(KEY), "dotnet-1", &value).unwrap();
        let _: () = raw.publish(channel_name(KEY), &value).unwrap();
        let state = reader.state(KEY).unwrap();
        eventually(&state, PROPAGATION_LIMIT, "the .NET entry is seen", |s| {
            s.is_blocked()
        })
        .await;
        assert_eq!(state.lock_data_entries(), ["data1", "data2", "data3"]);
        reader.shutdown().await;
    });
}

/// Issue 21 part 8: lock data holding the separator is refused at the API, naming the key,
/// and nothing reaches the store.
#[test]
fn lock_data_holding_the_separator_is_refused_naming_the_key() {
    let server = RedisServer::start();
    block_on(async {
        let lock = instance(&server.url(), "writer").await;
        let ctrl = lock.controller(KEY).unwrap();
        let error = ctrl
            .increment(Some("one#REACTIVELOCK#two"))
            .await
            .expect_err("refused");
        assert!(
            matches!(&error, Error::InvalidLockData { key } if key == KEY),
            "{error:?}"
        );
        assert!(error.to_string().contains(KEY), "{error}");
        assert_eq!(ctrl.count(), 0);
        assert!(!lock.state(KEY).unwrap().is_blocked());
        lock.shutdown().await;
    });
    let held: Option<String> = server.client().hget(hash_name(KEY), "writer").unwrap();
    assert!(
        held.as_deref().is_none_or(|v| v.starts_with("0;")),
        "{held:?}"
    );
}

use reactive_lock_backends::testing::{await_burst_final_states, publish_burst};

/// Issue 21 part 2: a subscriber that lags behind a burst on many keys overflows its bounded
/// buffer, never blocks the connection, and still ends with every key's final state.
#[test]
fn a_burst_past_the_subscription_buffer_still_delivers_every_keys_final_state() {
    let server = RedisServer::start();
    let keys: Vec<String> = (0..20).map(|k| format!("burst-{k}")).collect();
    block_on(async {
        let subscriber = RedisBackend::builder(&server.url())
            .subscription_buffer(4)
            .connect()
            .await
            .unwrap();
        let mut events = subscriber.subscribe("reader", &keys).await.unwrap();
        let writer = RedisBackend::connect(&server.url()).await.unwrap();
        // Not polled meanwhile: the subscriber lags by the whole burst.
        publish_burst(&writer, &keys, 50).await;
        await_burst_final_states(&mut events, &keys).await;
        assert!(
            subscriber.stats().push_overflows > 0,
            "the burst overflowed the buffer of 4: {:?}",
            subscriber.stats()
        );
    });
}
