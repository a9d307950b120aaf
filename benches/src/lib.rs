//! criterion benchmarks of reactive-lock live in `benches/`; see `BENCHMARKS.md`. This
//! library holds what several of them measure the same way.

use std::future::Future;

use futures_lite::StreamExt;
use reactive_lock::{
    Backend, Driver, ReactiveLock, StatusChanges, TrackerConfig, TrackerController, TrackerState,
};

/// Two instances named `names` tracking `key`, each on a backend from `connect`, with its
/// driver handed to `spawn` (the executor under test) instead of a thread of its own.
pub async fn pair_with_drivers<B: Backend, F: Future<Output = B>>(
    names: [&str; 2],
    key: &str,
    connect: impl Fn() -> F,
    spawn: impl Fn(Driver),
) -> (ReactiveLock, ReactiveLock) {
    let mut locks = Vec::with_capacity(2);
    for name in names {
        let (lock, driver) = ReactiveLock::builder()
            .instance_name(name)
            .tracker(key, TrackerConfig::new())
            .build_with_driver(connect().await)
            .await
            .expect("build");
        spawn(driver);
        locks.push(lock);
    }
    let b = locks.pop().expect("two instances");
    (locks.pop().expect("two instances"), b)
}

/// Two acknowledged transitions: busy (threshold 1) and back to idle.
pub async fn transition_ack_pair(ctrl: &TrackerController) {
    ctrl.increment(Some("x"))
        .await
        .expect("busy transition acknowledged");
    ctrl.decrement(1)
        .await
        .expect("idle transition acknowledged");
}

/// `ctrl`'s instance turns busy until `observer` (another instance's state) sees it
/// blocked, then idle until it sees it unblocked; `changes` is `observer.changes()`.
pub async fn propagation_pair(
    ctrl: &TrackerController,
    observer: &TrackerState,
    changes: &mut StatusChanges,
) {
    ctrl.increment(Some("x"))
        .await
        .expect("busy transition acknowledged");
    while !observer.is_blocked() {
        changes.next().await;
    }
    ctrl.decrement(1)
        .await
        .expect("idle transition acknowledged");
    while observer.is_blocked() {
        changes.next().await;
    }
}

/// The script of the `redis/lua_*` baselines: TIME + HSET + PUBLISH, the floor for a write
/// stamped with the server's clock.
pub const LUA_HSET_PUBLISH: &str = r"
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], ARGV[1], '1;' .. t[1] .. t[2] .. ';x')
redis.call('PUBLISH', ARGV[2], 'payload')
return 1
";

/// Two EVALSHA of [`LUA_HSET_PUBLISH`] (`script`) to `hash` and `channel`: the baseline pair.
pub async fn lua_pair(
    script: &redis::Script,
    hash: &str,
    channel: &str,
    raw: &mut redis::aio::MultiplexedConnection,
) {
    for _ in 0..2 {
        let _: i64 = script
            .key(hash)
            .arg("lua")
            .arg(channel)
            .invoke_async(raw)
            .await
            .unwrap();
    }
}

/// The key the Redis baselines write (`raw`), and its hash and channel as the Redis backend
/// names them.
pub const RAW_KEY: &str = "raw";
/// See [`RAW_KEY`].
pub const RAW_HASH: &str = "ReactiveLock:Redis:HashSet:raw";
/// See [`RAW_KEY`].
pub const RAW_CHANNEL: &str = "ReactiveLock:Redis:HashSetNotifier:raw";

/// A RESP3 connection to `client`'s server subscribed to `channel` (pushes dropped): the
/// echo of what it publishes there comes back on it, beside the reply, as on an instance's
/// own subscription.
pub async fn own_subscription(
    client: &redis::Client,
    channel: &str,
) -> redis::aio::MultiplexedConnection {
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    let resp3 = redis::Client::open(info.set_redis_settings(settings)).expect("client");
    let config = redis::AsyncConnectionConfig::new()
        .set_push_sender(|_: redis::PushInfo| Ok::<(), redis::aio::SendError>(()));
    let mut own = resp3
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect");
    own.subscribe(channel).await.expect("subscribe");
    own
}

/// The Redis backend's publish script, loaded on `conn` (for [`publish_script_pair`]).
pub async fn load_publish_script(conn: &mut redis::aio::MultiplexedConnection) -> redis::Script {
    let script = reactive_lock_backends::testing::publish_script();
    let _: String = script
        .prepare_invoke()
        .load_async(conn)
        .await
        .expect("SCRIPT LOAD");
    script
}

/// The Redis backend's publish script (loaded on `conn` beforehand), invoked bare as the
/// backend sends it: busy then idle for instance `floor` of [`RAW_KEY`], under the next two
/// sequences after `seq`.
pub async fn publish_script_pair(
    script: &redis::Script,
    conn: &mut redis::aio::MultiplexedConnection,
    seq: &mut u64,
) {
    for busy in [true, false] {
        *seq += 1;
        let valid_for = std::time::Duration::from_secs(10);
        let command = reactive_lock_backends::testing::publish_script_command(
            script,
            RAW_KEY,
            "floor",
            *seq,
            busy,
            valid_for,
            Some("x"),
        );
        let applied: i64 = command.query_async(conn).await.expect("EVALSHA");
        assert_eq!(applied, 1, "a newer sequence is applied");
    }
}

/// The value after `name` on the command line, or `default` (for the binaries).
pub fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.into())
}
