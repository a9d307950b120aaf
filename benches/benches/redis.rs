//! Redis: each reactive-lock operation beside the raw redis-crate floor, same run, same
//! server (a private `redis-server` the bench starts on a free port).
//!
//! `taskset -c 0 cargo bench -p reactive-lock-benches --bench redis` (the server inherits
//! the CPU mask).

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use futures_lite::StreamExt;
use futures_lite::future::block_on;
use reactive_lock::{ReactiveLock, TrackerConfig};
use reactive_lock_backends::redis::RedisBackend;
use reactive_lock_backends::testing::RedisServer;
use reactive_lock_benches::{
    LUA_HSET_PUBLISH, RAW_CHANNEL, RAW_HASH, load_publish_script, lua_pair, own_subscription,
    propagation_pair, publish_script_pair, transition_ack_pair,
};

const KEY: &str = "bench";

async fn instance(url: &str, name: &str) -> ReactiveLock {
    ReactiveLock::builder()
        .instance_name(name)
        .tracker(KEY, TrackerConfig::new())
        .build(RedisBackend::connect(url).await.expect("connect"))
        .await
        .expect("build")
}

fn redis_benches(c: &mut Criterion) {
    let server = RedisServer::start();
    let url = server.url();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut raw = block_on(client.get_multiplexed_async_connection()).unwrap();
    let (hash, channel) = (RAW_HASH, RAW_CHANNEL);

    let mut group = c.benchmark_group("redis");
    group.bench_function("raw_hset_publish_pair", |b| {
        b.iter(|| {
            block_on(async {
                for value in ["1;638000000000000000;x", "0;638000000000000000"] {
                    let _: (i64,) = redis::pipe()
                        .hset(hash, "raw", value)
                        .ignore()
                        .publish(channel, value)
                        .query_async(&mut raw)
                        .await
                        .unwrap();
                }
            })
        })
    });

    let script = redis::Script::new(LUA_HSET_PUBLISH);
    group.bench_function("lua_hset_publish_pair", |b| {
        b.iter(|| block_on(lua_pair(&script, hash, channel, &mut raw)))
    });

    // The same on a RESP3 connection that is itself subscribed to the channel: the echo
    // comes back on the connection that sent the script, beside its reply.
    let mut own = block_on(own_subscription(&client, channel));
    group.bench_function("lua_hset_publish_pair_own_subscription", |b| {
        b.iter(|| block_on(lua_pair(&script, hash, channel, &mut own)))
    });

    // The library's own publish script, invoked bare on that connection as the backend
    // sends it (sequence check, `TIME`, .NET ticks, both `HSET`s, the self-describing
    // `PUBLISH` and its echo): the server and redis-crate work an acknowledged transition
    // needs, without the library's code around it (BENCHMARKS.md).
    let publish_script = block_on(load_publish_script(&mut own));
    let mut seq = 0;
    group.bench_function("publish_script_pair_own_subscription", |b| {
        b.iter(|| block_on(publish_script_pair(&publish_script, &mut own, &mut seq)))
    });
    block_on(own.unsubscribe(channel)).unwrap();

    // The same with one, then two subscribers draining the channel: an instance's own
    // subscription receives its own publishes (Redis cannot exclude the publisher), and the
    // two-instance benches below have both instances subscribed (each subscriber's
    // connection task and reader share the pinned CPU with the caller).
    let drain = || {
        let mut pubsub = block_on(client.get_async_pubsub()).unwrap();
        block_on(pubsub.subscribe(channel)).unwrap();
        let mut messages = pubsub.into_on_message();
        std::thread::spawn(move || block_on(async { while messages.next().await.is_some() {} }))
    };
    let mut drains = vec![drain()];
    group.bench_function("lua_hset_publish_pair_1_subscriber", |b| {
        b.iter(|| block_on(lua_pair(&script, hash, channel, &mut raw)))
    });
    drains.push(drain());
    group.bench_function("lua_hset_publish_pair_2_subscribers", |b| {
        b.iter(|| block_on(lua_pair(&script, hash, channel, &mut raw)))
    });
    drop(drains); // detached: they end with the process

    // One instance, as in the baselines nobody else listens: its own subscription is the
    // only one, on the connection its publishes take (see
    // `lua_hset_publish_pair_own_subscription`).
    let solo = block_on(instance(&url, "solo"));
    let ctrl = solo.controller(KEY).unwrap();
    group.bench_function("transition_ack_pair", |b| {
        b.iter(|| block_on(transition_ack_pair(&ctrl)))
    });
    block_on(solo.shutdown());
    drop(solo);

    let (a, b_lock) = block_on(async { (instance(&url, "a").await, instance(&url, "b").await) });
    let ctrl = a.controller(KEY).unwrap();
    group.bench_function("transition_ack_pair_2_instances", |b| {
        b.iter(|| block_on(transition_ack_pair(&ctrl)))
    });

    group.bench_function("hgetall_time_roundtrip", |b| {
        b.iter(|| {
            block_on(async {
                let _: (Vec<(String, String)>, (u64, u64)) = redis::pipe()
                    .hgetall(hash)
                    .cmd("TIME")
                    .query_async(&mut raw)
                    .await
                    .unwrap();
            })
        })
    });

    let state_a = a.state(KEY).unwrap();
    group.bench_function("consistent_wait", |b| {
        b.iter(|| block_on(async { assert!(!state_a.wait_if_blocked_consistent().await.unwrap()) }))
    });

    let mut pubsub = block_on(client.get_async_pubsub()).unwrap();
    block_on(pubsub.subscribe("bench:pubsub")).unwrap();
    let mut messages = pubsub.into_on_message();
    group.bench_function("raw_pubsub_pair", |b| {
        b.iter(|| {
            block_on(async {
                for payload in ["busy", "idle"] {
                    let _: i64 = redis::cmd("PUBLISH")
                        .arg("bench:pubsub")
                        .arg(payload)
                        .query_async(&mut raw)
                        .await
                        .unwrap();
                    messages.next().await.expect("delivery");
                }
            })
        })
    });

    let state_b = b_lock.state(KEY).unwrap();
    let mut changes = state_b.changes();
    group.bench_function("propagation_pair", |b| {
        b.iter(|| block_on(propagation_pair(&ctrl, &state_b, &mut changes)))
    });
    group.finish();
    block_on(async {
        a.shutdown().await;
        b_lock.shutdown().await;
    });

    // Throughput at 64 concurrent tasks, 10,000 operations per iteration: what users pick
    // instead (a per-operation Redis lock, redsync/rslock style) against reactive-lock.
    let mut group = c.benchmark_group("redis");
    group
        .sample_size(10)
        .throughput(criterion::Throughput::Elements(
            (OPS / TASKS * TASKS) as u64,
        ));
    group.bench_function("per_op_lock_64_tasks", |b| {
        b.iter(|| per_op_locks(&client, |_| "lock:one".to_string()))
    });
    group.bench_function("per_op_lock_64_keys", |b| {
        b.iter(|| per_op_locks(&client, |t| format!("lock:{t}")))
    });
    let lock = block_on(instance(&url, "reactive"));
    let ctrl = lock.controller(KEY).unwrap();
    let mut raw_check = client.get_connection().unwrap();
    group.bench_function("reactive_64_tasks", |b| {
        b.iter(|| {
            let ex = smol::LocalExecutor::new();
            let tasks: Vec<_> = (0..TASKS)
                .map(|_| {
                    let ctrl = ctrl.clone();
                    ex.spawn(async move {
                        for _ in 0..OPS / TASKS {
                            let guard = ctrl.enter(None);
                            futures_lite::future::yield_now().await;
                            drop(guard);
                        }
                    })
                })
                .collect();
            block_on(ex.run(async {
                for task in tasks {
                    task.await;
                }
            }));
            // The operations count only once the final idle status is in Redis.
            loop {
                let value: Option<String> = redis::Commands::hget(
                    &mut raw_check,
                    "ReactiveLock:Redis:HashSet:bench",
                    "reactive",
                )
                .unwrap();
                if value.is_some_and(|v| v.starts_with("0;")) {
                    break;
                }
                std::thread::yield_now();
            }
        })
    });
    group.finish();
    block_on(lock.shutdown());
}

const TASKS: usize = 64;
const OPS: usize = 10_000;

const UNLOCK: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// 64 tasks, 10,000 lock/unlock cycles in all: `SET key token NX PX 10000`, retried until it
/// succeeds, then a compare-and-`DEL` script — one Redis lock per operation.
fn per_op_locks(client: &redis::Client, key_of: impl Fn(usize) -> String) {
    let connection = block_on(client.get_multiplexed_async_connection()).unwrap();
    let unlock = redis::Script::new(UNLOCK);
    let ex = smol::LocalExecutor::new();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let mut con = connection.clone();
            let key = key_of(t);
            let unlock = unlock.clone();
            ex.spawn(async move {
                for op in 0..OPS / TASKS {
                    let token = format!("{t}-{op}");
                    loop {
                        let got: Option<String> = redis::cmd("SET")
                            .arg(&key)
                            .arg(&token)
                            .arg("NX")
                            .arg("PX")
                            .arg(10_000)
                            .query_async(&mut con)
                            .await
                            .unwrap();
                        if got.is_some() {
                            break;
                        }
                    }
                    let _: i64 = unlock
                        .key(&key)
                        .arg(&token)
                        .invoke_async(&mut con)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    block_on(ex.run(async {
        for task in tasks {
            task.await;
        }
    }));
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = redis_benches
}
criterion_main!(benches);
