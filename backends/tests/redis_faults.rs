//! Fault injection against real redis-server processes: killed and restarted empty,
//! paused with SIGSTOP, an instance process SIGKILLed while busy, random flapping.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_lite::future::block_on;
use reactive_lock::{ReactiveLock, Status, TrackerConfig};
use reactive_lock_backends::conformance::{eventually, eventually_all, settles_to};
use reactive_lock_backends::redis::{RedisBackend, hash_name};
use reactive_lock_backends::testing::RedisServer;
use redis::Commands;

const KEY: &str = "payments";
const LIMIT: Duration = Duration::from_secs(15);

async fn backend(url: &str) -> RedisBackend {
    RedisBackend::builder(url)
        .health_check_interval(Duration::from_millis(200))
        .response_timeout(Duration::from_millis(400))
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .expect("connect")
}

async fn instance(url: &str, name: &str) -> ReactiveLock {
    ReactiveLock::builder()
        .instance_name(name)
        .renewal(Duration::from_millis(300))
        .expiration(Duration::from_millis(1500))
        .recovery(Duration::from_secs(5))
        .tracker(KEY, TrackerConfig::new())
        .build(backend(url).await)
        .await
        .expect("build")
}

#[test]
fn server_killed_and_restarted_empty_while_busy() {
    let mut server = RedisServer::start();
    block_on(async {
        let a = instance(&server.url(), "a").await;
        let b = instance(&server.url(), "b").await;
        let c = instance(&server.url(), "c").await;
        let ctrl = a.controller(KEY).unwrap();
        ctrl.increment(Some("batch")).await.unwrap();
        eventually_all([&b, &c], KEY, LIMIT, "others see a busy", |s| {
            s.is_blocked()
        })
        .await;
        let released = Arc::new(AtomicUsize::new(0));
        let waiters: Vec<_> = [&b, &c]
            .iter()
            .map(|l| {
                let state = l.state(KEY).unwrap();
                let released = released.clone();
                std::thread::spawn(move || {
                    state.wait_if_blocked_blocking();
                    released.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();

        let killed = Instant::now();
        server.restart(); // empty: Redis here keeps nothing on disk
        let mut raw = server.client();
        settles_to(
            LIMIT,
            "a's busy status restored in the empty server",
            true,
            || {
                let value: Option<String> = raw.hget(hash_name(KEY), "a").unwrap();
                value.is_some_and(|v| v.starts_with("1;"))
            },
        )
        .await;
        eventually_all(
            [&b, &c],
            KEY,
            LIMIT,
            "others see a busy again after recovery",
            |s| s.status() == Status::Blocked && s.lock_data().as_deref() == Some("batch"),
        )
        .await;
        eprintln!("recovery after restart: {:?}", killed.elapsed());
        assert_eq!(
            released.load(Ordering::SeqCst),
            0,
            "nobody released while a is busy"
        );

        ctrl.decrement(1).await.unwrap();
        eventually_all(
            [&a, &b, &c],
            KEY,
            LIMIT,
            "all unblocked after a idles",
            |s| !s.is_blocked(),
        )
        .await;
        for w in waiters {
            w.join().unwrap();
        }
        assert_eq!(released.load(Ordering::SeqCst), 2, "no waiter left hanging");
        for l in [a, b, c] {
            l.shutdown().await;
        }
    });
}

#[test]
fn server_paused_gives_unknown_then_converges() {
    let server = RedisServer::start();
    block_on(async {
        let a = instance(&server.url(), "a").await;
        let b = instance(&server.url(), "b").await;
        let ctrl = a.controller(KEY).unwrap();
        ctrl.increment(Some("before")).await.unwrap();
        let b_state = b.state(KEY).unwrap();
        eventually(&b_state, LIMIT, "b sees a", |s| s.is_blocked()).await;

        server.pause();
        eventually(
            &b_state,
            LIMIT,
            "Unknown while the server does not answer",
            |s| s.status() == Status::Unknown,
        )
        .await;
        assert!(b_state.is_blocked(), "KeepLast keeps the last known answer");
        // Activity during the pause: the transition applies locally; its ack fails.
        let ack = ctrl.decrement(1);
        assert!(!a.state(KEY).unwrap().is_blocked());
        assert!(
            ack.await.is_err(),
            "no acknowledgement from a paused server"
        );
        async_io::Timer::after(Duration::from_secs(2)).await;
        server.resume();

        eventually(&b_state, LIMIT, "converges after SIGCONT", |s| {
            s.status() == Status::Unblocked
        })
        .await;
        eventually(&a.state(KEY).unwrap(), LIMIT, "a reconnected", |s| {
            s.status() == Status::Unblocked
        })
        .await;
        a.shutdown().await;
        b.shutdown().await;
    });
}

#[test]
fn random_flapping_across_three_instances_ends_in_the_truth() {
    let server = RedisServer::start();
    block_on(async {
        let mut locks = Vec::new();
        for name in ["a", "b", "c"] {
            locks.push(instance(&server.url(), name).await);
        }
        let stop = Instant::now() + Duration::from_secs(3);
        let threads: Vec<_> = locks
            .iter()
            .enumerate()
            .map(|(i, lock)| {
                let ctrl = lock.controller(KEY).unwrap();
                std::thread::spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(i as u64);
                    let mut flips = 0u64;
                    while Instant::now() < stop {
                        let guard = ctrl.enter(Some("flap"));
                        if rng.bool() {
                            std::thread::sleep(Duration::from_micros(rng.u64(0..500)));
                        }
                        drop(guard);
                        flips += 1;
                    }
                    flips
                })
            })
            .collect();
        let flips: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        eprintln!("{flips} enter/drop pairs across 3 instances");
        // Truth: only b is busy, with its data.
        locks[1]
            .controller(KEY)
            .unwrap()
            .increment(Some("truth"))
            .await
            .unwrap();
        eventually_all(
            &locks,
            KEY,
            LIMIT,
            "every instance ends in the truth",
            |s| s.is_blocked() && s.lock_data_entries() == ["truth"],
        )
        .await;
        locks[1]
            .controller(KEY)
            .unwrap()
            .decrement(1)
            .await
            .unwrap();
        eventually_all(&locks, KEY, LIMIT, "and unblocked at the end", |s| {
            !s.is_blocked()
        })
        .await;
        for lock in locks {
            lock.shutdown().await;
        }
    });
}

/// `CLIENT LIST`, one map of fields per connection.
fn clients(raw: &mut redis::Connection) -> Vec<std::collections::HashMap<String, String>> {
    let list: String = redis::cmd("CLIENT").arg("LIST").query(raw).unwrap();
    list.lines()
        .map(|line| {
            line.split(' ')
                .filter_map(|field| field.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// The ids of the connections holding subscriptions, and which of them ran the script last.
fn subscribed(raw: &mut redis::Connection) -> (Vec<String>, Vec<String>) {
    let subscribed: Vec<_> = clients(raw)
        .into_iter()
        .filter(|c| c.get("sub").is_some_and(|n| n != "0"))
        .collect();
    let ids = subscribed.iter().map(|c| c["id"].clone()).collect();
    let scripted = subscribed
        .iter()
        .filter(|c| c.get("cmd").is_some_and(|cmd| cmd == "evalsha"))
        .map(|c| c["id"].clone())
        .collect();
    (ids, scripted)
}

#[test]
fn publishes_ride_the_subscription_connection_and_survive_its_loss() {
    let server = RedisServer::start();
    let mut raw = server.client();
    block_on(async {
        // Health checks far apart: the subscription's connection runs nothing but what the
        // instance sends through it.
        let backend = RedisBackend::builder(&server.url())
            .health_check_interval(Duration::from_secs(60))
            .response_timeout(Duration::from_millis(400))
            .connect()
            .await
            .unwrap();
        let a = ReactiveLock::builder()
            .instance_name("a")
            .tracker(KEY, TrackerConfig::new())
            .build(backend)
            .await
            .unwrap();
        let ctrl = a.controller(KEY).unwrap();
        ctrl.increment(Some("first")).await.unwrap();
        let (ids, scripted) = subscribed(&mut raw);
        assert_eq!(ids.len(), 1, "one subscription connection");
        assert_eq!(
            scripted, ids,
            "the publish went through the subscription's connection"
        );

        // Its connection dies: transitions still reach Redis (through the command connection
        // until the driver has resubscribed, then through the new subscription).
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(&ids[0])
            .query(&mut raw)
            .unwrap();
        assert_eq!(killed, 1);
        let deadline = Instant::now() + LIMIT;
        let mut busy = true;
        loop {
            // A publish racing the loss may fail (the driver retries it); later ones succeed.
            let acked = if busy {
                ctrl.decrement(1).await
            } else {
                ctrl.increment(Some("after")).await
            };
            busy = !busy;
            let (now_ids, now_scripted) = subscribed(&mut raw);
            if acked.is_ok()
                && now_ids.len() == 1
                && now_ids[0] != ids[0]
                && now_scripted == now_ids
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no publish through a new subscription connection: {acked:?}, {now_ids:?}, {now_scripted:?}"
            );
            async_io::Timer::after(Duration::from_millis(20)).await;
        }
        let value: String = raw.hget(hash_name(KEY), "a").unwrap();
        assert_eq!(
            value.starts_with("1;"),
            busy,
            "Redis holds the last acknowledged transition: {value}"
        );
        a.shutdown().await;
    });
}
