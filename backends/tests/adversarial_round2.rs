//! From a second adversarial run: the hub's monotone replacing statuses, the hub forgetting
//! departed instances, and the Redis read script over `MAX_ENTRIES_PER_KEY`.
//! Every wait is bounded; nothing asserts on wall-clock durations.
#![cfg(all(feature = "grpc-server", feature = "redis"))]

use std::time::Duration;

use futures_lite::future::block_on;
use reactive_lock::{Backend, ReactiveLock, StoreTime, TrackerConfig, TrackerState};
use reactive_lock_backends::conformance::eventually;
use reactive_lock_backends::grpc::GrpcBackend;
use reactive_lock_backends::grpc::proto::reactive_lock_grpc_client::ReactiveLockGrpcClient;
use reactive_lock_backends::grpc::proto::{LockStatusNotification, LockStatusRequest};
use reactive_lock_backends::grpc::server::{Hub, HubLimits};
use reactive_lock_backends::redis::{MAX_ENTRIES_PER_KEY, RedisBackend, hash_name};
use reactive_lock_backends::testing::tokio_runtime as rt;
use reactive_lock_backends::testing::{HubServer, RedisServer, valid_for};

const KEY: &str = "payments";

fn status(
    instance: &str,
    busy: bool,
    valid_until: Option<prost_types::Timestamp>,
) -> LockStatusRequest {
    LockStatusRequest {
        lock_key: KEY.into(),
        instance_id: instance.into(),
        is_busy: busy,
        lock_data: busy.then(|| "batch".to_string()),
        valid_until,
    }
}

/// Sends `statuses` in order with the pause before each, each acknowledged.
fn send(url: &str, statuses: Vec<(LockStatusRequest, Duration)>) {
    rt().block_on(async {
        let mut client = ReactiveLockGrpcClient::connect(url.to_string())
            .await
            .unwrap();
        for (s, pause_before) in statuses {
            tokio::time::sleep(pause_before).await;
            client.set_status(s).await.unwrap();
        }
    });
}

/// Whether the hub reports `KEY` blocked, read through a fresh client (no held state).
fn hub_says_blocked(url: &str) -> bool {
    block_on(async {
        let backend = GrpcBackend::connect([url.to_string()]).await.unwrap();
        backend.snapshot(KEY).await.unwrap().is_blocked()
    })
}

/// The hub's current state of `KEY` as a raw (.NET-style) subscriber gets it first.
fn raw_current(url: &str) -> LockStatusNotification {
    rt().block_on(async {
        let mut client = ReactiveLockGrpcClient::connect(url.to_string())
            .await
            .unwrap();
        let first = status(
            "dotnet-reader",
            false,
            Some(valid_for(Duration::from_secs(1))),
        );
        let requests = futures_lite::stream::once(first).chain(futures_lite::stream::pending());
        let mut stream = client
            .subscribe_lock_status(requests)
            .await
            .unwrap()
            .into_inner();
        tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the current state within 10 s")
            .unwrap()
            .unwrap()
    })
}

use futures_lite::StreamExt as _;

async fn grpc_registry(urls: &[&str], instance: &str) -> ReactiveLock {
    ReactiveLock::builder()
        .instance_name(instance)
        .tracker(KEY, TrackerConfig::new())
        .build(
            GrpcBackend::connect(urls.iter().map(|u| u.to_string()))
                .await
                .unwrap(),
        )
        .await
        .unwrap()
}

async fn settle(state: &TrackerState, what: &str, check: impl Fn(&TrackerState) -> bool) {
    eventually(state, Duration::from_secs(10), what, check).await;
}

/// Whether `wait_if_blocked_consistent` returns within `limit` (it must not while blocked).
async fn consistent_wait_returns_within(state: &TrackerState, limit: Duration) -> bool {
    futures_lite::future::or(
        async {
            let _ = state.wait_if_blocked_consistent().await;
            true
        },
        async {
            async_io::Timer::after(limit).await;
            false
        },
    )
    .await
}

/// A hub whose departed-instance grace is short (the claim says: set it small in tests).
fn hub_forgetting_after(grace: Duration) -> HubServer {
    let mut limits = HubLimits::default();
    limits.forget_idle_keys_after = grace;
    HubServer::start_with(Hub::new(limits), None, None)
}

/// Drives the hub to forget `peer`'s idle entry, after a live reader took it, with no
/// notification in between; returns once the hub no longer holds `peer`.
fn peer_idle_then_forgotten(hub: &HubServer, state: &TrackerState, idle_valid: Duration) {
    // Busy, then idle with a long validity (the peer's earlier process had a longer
    // expiration, or its clock ran ahead): the reader holds peer idle, valid until +idle_valid.
    send(
        &hub.url,
        vec![(
            status("peer", true, Some(valid_for(idle_valid))),
            Duration::ZERO,
        )],
    );
    block_on(settle(state, "reader sees peer busy", |s| s.is_blocked()));
    send(
        &hub.url,
        vec![(
            status(
                "peer",
                false,
                Some(valid_for(idle_valid + Duration::from_secs(1))),
            ),
            Duration::ZERO,
        )],
    );
    block_on(settle(state, "reader sees peer idle", |s| !s.is_blocked()));
    // Not heard from for the grace, but its validity has not passed: the hub keeps the idle
    // entry (forgetting it silently would leave the reader ordering the peer's next status
    // against a validUntil the hub no longer knows).
    // Past the reorder window too, so the peer's return is its newest word.
    std::thread::sleep(Duration::from_millis(2500));
    hub.hub.forget_idle_keys_now();
    let current = raw_current(&hub.url);
    assert!(
        current.instances_status.contains_key("peer"),
        "an idle entry still valid is kept: {current:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Claim 2: forgetting departed instances never changes any reader's blocked answer
// ---------------------------------------------------------------------------------------

/// A departed instance's idle entry (valid until +120 s as its sender gave it) stays on the
/// hub while a reader may hold it; the instance comes back busy with an ordinary validity
/// (10 s, restarted with a shorter expiration): the hub stores it after the held entry, so
/// the live reader takes it as newer and reads the key blocked.
#[test]
fn a_departed_instances_next_busy_status_reaches_a_live_subscriber() {
    let hub = hub_forgetting_after(Duration::from_millis(300));
    let reader = block_on(grpc_registry(&[&hub.url], "reader"));
    let state = reader.state(KEY).unwrap();
    block_on(settle(&state, "connected", |s| !s.is_blocked()));
    peer_idle_then_forgotten(&hub, &state, Duration::from_secs(120));
    // Back, truly busy, with ordinary validities (renewed twice).
    for _ in 0..3 {
        send(
            &hub.url,
            vec![(
                status("peer", true, Some(valid_for(Duration::from_secs(10)))),
                Duration::from_millis(300),
            )],
        );
    }
    assert!(hub_says_blocked(&hub.url), "the hub holds peer busy");
    block_on(settle(&state, "the live reader sees the busy peer", |s| {
        s.is_blocked()
    }));
    block_on(reader.shutdown());
}

/// The same through a read-through: `wait_if_blocked_consistent` reads the hub (busy) and
/// must not pass.
#[test]
fn a_consistent_wait_does_not_pass_a_departed_instance_back_busy() {
    let hub = hub_forgetting_after(Duration::from_millis(300));
    let reader = block_on(grpc_registry(&[&hub.url], "reader"));
    let state = reader.state(KEY).unwrap();
    block_on(settle(&state, "connected", |s| !s.is_blocked()));
    peer_idle_then_forgotten(&hub, &state, Duration::from_secs(120));
    send(
        &hub.url,
        vec![(
            status("peer", true, Some(valid_for(Duration::from_secs(30)))),
            Duration::ZERO,
        )],
    );
    assert!(hub_says_blocked(&hub.url), "the hub holds peer busy");
    let passed = block_on(consistent_wait_returns_within(
        &state,
        Duration::from_secs(2),
    ));
    assert!(
        !passed,
        "wait_if_blocked_consistent passed although the hub holds peer busy"
    );
    block_on(reader.shutdown());
}

/// The capped form: the peer's idle status was capped (clock far ahead), stored valid for
/// max_validity (5 min); back busy with an ordinary validity past the reorder window, the
/// live reader reads it busy.
#[test]
fn a_busy_status_after_a_forgotten_capped_idle_one_reaches_a_live_subscriber() {
    let hub = hub_forgetting_after(Duration::from_millis(300));
    let reader = block_on(grpc_registry(&[&hub.url], "reader"));
    let state = reader.state(KEY).unwrap();
    block_on(settle(&state, "connected", |s| !s.is_blocked()));
    let year_10000 = prost_types::Timestamp {
        seconds: 253_402_300_800,
        nanos: 0,
    };
    send(
        &hub.url,
        vec![(status("peer", false, Some(year_10000)), Duration::ZERO)],
    );
    // Past the reorder window: the busy status, dated before the capped idle one's
    // year 10000, is the peer's newest word.
    std::thread::sleep(Duration::from_millis(2500));
    hub.hub.forget_idle_keys_now();
    assert!(
        raw_current(&hub.url).instances_status.contains_key("peer"),
        "a capped idle entry, still valid, is kept"
    );
    send(
        &hub.url,
        vec![(
            status("peer", true, Some(valid_for(Duration::from_secs(60)))),
            Duration::ZERO,
        )],
    );
    assert!(hub_says_blocked(&hub.url), "the hub holds peer busy");
    block_on(settle(&state, "the live reader sees the busy peer", |s| {
        s.is_blocked()
    }));
    block_on(reader.shutdown());
}

/// Forgetting through `max_instances_per_key` notifies (the new instance's
/// status is broadcast without the departed entry), so a reader drops the departed entry
/// and then takes its later, earlier-dated busy status.
#[test]
fn forgetting_on_max_instances_notifies_and_readers_follow() {
    let mut limits = HubLimits::default();
    limits.forget_idle_keys_after = Duration::from_millis(300);
    limits.max_instances_per_key = 3;
    let hub = HubServer::start_with(Hub::new(limits), None, None);
    let reader = block_on(grpc_registry(&[&hub.url], "reader"));
    let state = reader.state(KEY).unwrap();
    block_on(settle(&state, "connected", |s| !s.is_blocked()));
    // peer and a leave: their idle entries' validities pass, then the grace.
    send(
        &hub.url,
        vec![
            (
                status("peer", false, Some(valid_for(Duration::from_millis(200)))),
                Duration::ZERO,
            ),
            (
                status("a", false, Some(valid_for(Duration::from_millis(200)))),
                Duration::ZERO,
            ),
        ],
    );
    // The key is full (reader, peer, a): b's busy status makes room by forgetting the
    // departed ones, and is broadcast.
    send(
        &hub.url,
        vec![(
            status("b", true, Some(valid_for(Duration::from_secs(10)))),
            Duration::from_millis(700),
        )],
    );
    assert!(hub_says_blocked(&hub.url), "the hub holds b busy");
    block_on(settle(&state, "the live reader sees b busy", |s| {
        s.is_blocked()
    }));
    // b leaves; then peer, forgotten by every reader too, comes back busy.
    send(
        &hub.url,
        vec![(
            status("b", false, Some(valid_for(Duration::from_secs(10)))),
            Duration::ZERO,
        )],
    );
    block_on(settle(&state, "the live reader sees b idle", |s| {
        !s.is_blocked()
    }));
    send(
        &hub.url,
        vec![(
            status("peer", true, Some(valid_for(Duration::from_secs(10)))),
            Duration::ZERO,
        )],
    );
    assert!(hub_says_blocked(&hub.url), "the hub holds peer busy");
    block_on(settle(&state, "the live reader sees the busy peer", |s| {
        s.is_blocked()
    }));
    block_on(reader.shutdown());
}

// ---------------------------------------------------------------------------------------
// Claim 1: replacing statuses stay monotone
// ---------------------------------------------------------------------------------------

/// capped busy → normal idle → capped busy → normal busy → normal idle,
/// mixing in-window and out-of-window arrivals; a reader subscribed before and one
/// subscribed after agree with the hub at each step.
#[test]
fn capped_normal_capped_sequence_readers_before_and_after_agree() {
    let hub = HubServer::start();
    let early = block_on(grpc_registry(&[&hub.url], "early"));
    let early_state = early.state(KEY).unwrap();
    block_on(settle(&early_state, "connected", |s| !s.is_blocked()));
    let far = |secs: i64| prost_types::Timestamp {
        seconds: 253_402_300_800 + secs,
        nanos: 0,
    };
    let steps: Vec<(LockStatusRequest, Duration, bool)> = vec![
        (status("peer", true, Some(far(0))), Duration::ZERO, true),
        // Earlier-dated idle, in window: ordered against what the sender gave (year 10000),
        // an older message still in transit; dropped.
        (
            status("peer", false, Some(valid_for(Duration::from_secs(10)))),
            Duration::from_millis(100),
            true,
        ),
        // Capped busy again, in window.
        (
            status("peer", true, Some(far(1))),
            Duration::from_millis(100),
            true,
        ),
        // Ordinary busy, out of window.
        (
            status("peer", true, Some(valid_for(Duration::from_secs(20)))),
            Duration::from_millis(2200),
            true,
        ),
        // Earlier-dated idle, out of window: releases.
        (
            status("peer", false, Some(valid_for(Duration::from_secs(5)))),
            Duration::from_millis(2200),
            false,
        ),
        // Later busy in window.
        (
            status("peer", true, Some(valid_for(Duration::from_secs(30)))),
            Duration::from_millis(100),
            true,
        ),
        // Older idle in window (dated before the busy): dropped.
        (
            status("peer", false, Some(valid_for(Duration::from_secs(25)))),
            Duration::from_millis(100),
            true,
        ),
    ];
    for (i, (s, pause, blocked)) in steps.into_iter().enumerate() {
        send(&hub.url, vec![(s, pause)]);
        assert_eq!(hub_says_blocked(&hub.url), blocked, "step {i}: hub");
        block_on(settle(
            &early_state,
            &format!("step {i}: early reader"),
            |s| s.is_blocked() == blocked,
        ));
        let late = block_on(grpc_registry(&[&hub.url], &format!("late-{i}")));
        let late_state = late.state(KEY).unwrap();
        block_on(settle(
            &late_state,
            &format!("step {i}: late reader"),
            |s| s.is_blocked() == blocked,
        ));
        block_on(late.shutdown());
    }
    block_on(early.shutdown());
}

/// A client whose clock runs over max_validity ahead has every status capped; ordered by the
/// validUntil it sent, its idle status overtaken in flight by its newer busy one is still
/// dropped within the reorder window, so the busy instance never reads idle.
#[test]
fn a_clock_ahead_clients_stale_idle_overtaken_in_flight_is_dropped() {
    let hub = HubServer::start();
    let ahead = |ms: i64| {
        let mut t = valid_for(Duration::from_secs(3600));
        t.nanos = 0;
        t.seconds += ms / 1000;
        t
    };
    // Sent: idle (ahead+0), then busy (ahead+1 s). Arrive: busy, then the stale idle
    // 100 ms later (well inside the 2 s reorder window).
    send(
        &hub.url,
        vec![
            (status("peer", true, Some(ahead(1000))), Duration::ZERO),
            (
                status("peer", false, Some(ahead(0))),
                Duration::from_millis(100),
            ),
        ],
    );
    assert!(
        hub_says_blocked(&hub.url),
        "the stale idle status (dated before the held busy one, arriving within the \
         reorder window) replaced the busy one: a busy instance reads idle"
    );
}

/// A busy status without `validUntil` (a hostile or buggy .NET-protocol peer) would never
/// expire on the hub (raw .NET-style subscribers would read it busy for good) while Rust
/// readers read it valid until the Unix epoch: it is refused, and nobody reads it busy.
#[test]
fn a_busy_status_without_valid_until_is_refused() {
    let hub = HubServer::start();
    let refused = rt().block_on(async {
        let mut client = ReactiveLockGrpcClient::connect(hub.url.clone())
            .await
            .unwrap();
        client.set_status(status("peer", true, None)).await
    });
    assert_eq!(refused.unwrap_err().code(), tonic::Code::InvalidArgument);
    let current = raw_current(&hub.url);
    assert!(
        current
            .instances_status
            .get("peer")
            .is_none_or(|e| !e.is_busy),
        "{:?}",
        current.instances_status.get("peer")
    );
    assert!(!hub_says_blocked(&hub.url));
}

/// Two hubs, the same statuses in a different order (one hub gets the
/// older idle after the window): a reader on both agrees with a fresh merged read.
#[test]
fn two_hubs_different_order_reader_matches_merged_read() {
    let (a, b) = (HubServer::start(), HubServer::start());
    let reader = block_on(grpc_registry(&[&a.url, &b.url], "reader"));
    let state = reader.state(KEY).unwrap();
    block_on(settle(&state, "connected", |s| !s.is_blocked()));
    let busy = status("peer", true, Some(valid_for(Duration::from_secs(60))));
    let idle = status("peer", false, Some(valid_for(Duration::from_secs(10))));
    send(&a.url, vec![(busy.clone(), Duration::ZERO)]);
    send(&b.url, vec![(idle.clone(), Duration::ZERO)]);
    send(&b.url, vec![(busy, Duration::from_millis(2200))]);
    send(&a.url, vec![(idle, Duration::ZERO)]);
    let merged = block_on(async {
        let backend = GrpcBackend::connect([a.url.clone(), b.url.clone()])
            .await
            .unwrap();
        backend.snapshot(KEY).await.unwrap().is_blocked()
    });
    block_on(settle(&state, "reader agrees with the merged read", |s| {
        s.is_blocked() == merged
    }));
    block_on(reader.shutdown());
}

// ---------------------------------------------------------------------------------------
// Claim 3: Redis over-limit reads
// ---------------------------------------------------------------------------------------

const JUNK: usize = 2 * MAX_ENTRIES_PER_KEY;

/// Field and value pairs, as `HSCAN` returns them.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn dotnet_ticks_in(d: Duration) -> u64 {
    StoreTime::now_system().saturating_add(d).to_dotnet_ticks()
}

fn expired_ticks() -> u64 {
    StoreTime::now_system().to_dotnet_ticks() - 3_600 * 10_000_000
}

/// Fills the key's hash with `JUNK` fields made by `junk`, then adds one live busy entry
/// (valid 10 min) under a name the read script's `HSCAN` reaches after `MAX_ENTRIES_PER_KEY`
/// of the junk (`HSCAN` order is fixed for a given table), and returns whether a fresh
/// reader finds the key blocked, and the live entry's scan position.
fn live_entry_read_among(junk: impl Fn(usize) -> (Vec<u8>, Vec<u8>)) -> (bool, usize) {
    let live_value = format!("1;{};live", dotnet_ticks_in(Duration::from_secs(600)));
    entry_read_among(junk, &live_value)
}

/// As [`live_entry_read_among`], with `live_value` as the entry's value.
fn entry_read_among(junk: impl Fn(usize) -> (Vec<u8>, Vec<u8>), live_value: &str) -> (bool, usize) {
    let server = RedisServer::start();
    let mut raw = server.client();
    let hash = hash_name(KEY);
    for chunk in 0..JUNK / 1_000 {
        let mut pipe = redis::pipe();
        for i in chunk * 1_000..(chunk + 1) * 1_000 {
            let (field, value) = junk(i);
            pipe.cmd("HSET").arg(&hash).arg(field).arg(value).ignore();
        }
        pipe.query::<()>(&mut raw).unwrap();
    }
    let mut chosen = None;
    for n in 0..64 {
        let name = format!("live-{n}");
        redis::cmd("HSET")
            .arg(&hash)
            .arg(&name)
            .arg(live_value)
            .query::<()>(&mut raw)
            .unwrap();
        // Every junk field looks like an unexpired busy entry to the script: find the live
        // entry's position in the scan.
        let mut cursor = 0u64;
        let mut position = None;
        let mut seen = 0usize;
        loop {
            let (next, items): (u64, Fields) = redis::cmd("HSCAN")
                .arg(&hash)
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query(&mut raw)
                .unwrap();
            for (field, _) in items {
                if field == name.as_bytes() {
                    position = Some(seen);
                }
                seen += 1;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let position = position.expect("the live field is scanned");
        if position >= MAX_ENTRIES_PER_KEY + 100 {
            chosen = Some(position);
            break;
        }
        redis::cmd("HDEL")
            .arg(&hash)
            .arg(&name)
            .query::<()>(&mut raw)
            .unwrap();
    }
    let position = chosen.expect("a name scanned late among 64 tries");
    let blocked = block_on(async {
        let backend = RedisBackend::connect(&server.url()).await.unwrap();
        backend.snapshot(KEY).await.unwrap().is_blocked()
    });
    (blocked, position)
}

fn assert_live_read(what: &str, junk: impl Fn(usize) -> (Vec<u8>, Vec<u8>)) {
    let (blocked, position) = live_entry_read_among(junk);
    assert!(
        blocked,
        "{what}: the one live busy entry (scanned at position {position} of {}) was not \
         read: the key reads unblocked",
        JUNK + 1
    );
}

/// Expired busy entries written with a leading zero (`1;0{ticks}`, 19 digits): the script
/// strips the zeros before comparing, as the client's parser reads the number.
#[test]
fn redis_expired_ticks_with_a_leading_zero_never_crowd_out_a_live_busy_entry() {
    let old = expired_ticks();
    assert_live_read("expired ticks with a leading zero", |i| {
        (
            format!("junk-{i}").into_bytes(),
            format!("1;0{old}").into_bytes(),
        )
    });
}

/// 20-digit ticks (past u64 and DateTime): the far future to the script and to the client
/// alike, so they are busy entries, and the live one is read among them.
#[test]
fn redis_twenty_digit_ticks_never_crowd_out_a_live_busy_entry() {
    assert_live_read("20-digit ticks", |i| {
        (
            format!("junk-{i}").into_bytes(),
            b"1;99999999999999999999".to_vec(),
        )
    });
}

/// 18-digit ticks in the year ~3000 (beyond what a `StoreTime` holds, ~2554): the far
/// future to the script and to the client alike.
#[test]
fn redis_far_future_ticks_never_crowd_out_a_live_busy_entry() {
    assert_live_read("year-3000 ticks", |i| {
        (
            format!("junk-{i}").into_bytes(),
            b"1;946000000000000000".to_vec(),
        )
    });
}

/// Malformed values that start like a busy entry (`1;{future ticks}x`): malformed to the
/// script and to the client alike.
#[test]
fn redis_malformed_busy_looking_values_never_crowd_out_a_live_busy_entry() {
    let future = dotnet_ticks_in(Duration::from_secs(600));
    assert_live_read("`1;{ticks}x` values", |i| {
        (
            format!("junk-{i}").into_bytes(),
            format!("1;{future}x").into_bytes(),
        )
    });
}

/// Non-UTF-8 field names with unexpired busy values, which the client ignores: the script
/// ranks busy entries under ASCII names first.
#[test]
fn redis_non_utf8_fields_never_crowd_out_a_live_busy_entry() {
    let future = dotnet_ticks_in(Duration::from_secs(600));
    assert_live_read("non-UTF-8 fields", |i| {
        let mut field = format!("junk-{i}").into_bytes();
        field.push(0xff);
        (field, format!("1;{future}").into_bytes())
    });
}

/// Junk that the script ranks as "others": idle, expired busy of equal length, `1;abc`,
/// `2;...`, empty, and ticks one below now.
#[test]
fn redis_other_junk_never_crowds_out_a_live_busy_entry() {
    let old = expired_ticks();
    assert_live_read("idle / expired / malformed junk", |i| {
        let value = match i % 5 {
            0 => format!("0;{old}"),
            1 => format!("1;{old};old"),
            2 => "1;abc".to_string(),
            3 => "2;1".to_string(),
            _ => String::new(),
        };
        (format!("junk-{i}").into_bytes(), value.into_bytes())
    });
}

/// A busy-looking value with a signed validity (`1;+{ticks}`) must read the same whether
/// the hash is under the limit or over it (here behind 20,000 idle entries, scanned after
/// the first 10,000): the client's parser and the read script share one rule.
#[test]
fn redis_a_plus_signed_busy_entry_reads_the_same_under_and_over_the_limit() {
    let future = dotnet_ticks_in(Duration::from_secs(600));
    let value = format!("1;+{future}");
    // Under the limit: read, and blocks.
    let server = RedisServer::start();
    let mut raw = server.client();
    redis::cmd("HSET")
        .arg(hash_name(KEY))
        .arg("plus")
        .arg(&value)
        .query::<()>(&mut raw)
        .unwrap();
    let under = block_on(async {
        let backend = RedisBackend::connect(&server.url()).await.unwrap();
        backend.snapshot(KEY).await.unwrap().is_blocked()
    });
    // Signs are not digits: malformed to the client, as to the script.
    assert!(!under, "`1;+ticks` is malformed, not busy");
    let old = expired_ticks();
    let (over, position) = entry_read_among(
        |i| {
            (
                format!("idle-{i}").into_bytes(),
                format!("0;{old}").into_bytes(),
            )
        },
        &value,
    );
    assert_eq!(
        over,
        under,
        "the same `1;+ticks` entry reads the same under the limit and over it (scanned at \
         position {position} of {})",
        JUNK + 1
    );
}
