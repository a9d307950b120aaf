//! Faults of whole processes, with `reactive-lock hold` and `inspect` as the processes: a
//! SIGKILLed holder's entry expires at the others on the store's clock alone (Redis and a
//! hub), and `inspect` judges expiry on the store's clock whatever its own clock says.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_lite::future::block_on;
use reactive_lock::{Backend, ReactiveLock, StoreTime, TrackerConfig, TrackerState};
use reactive_lock_backends::conformance::{PROPAGATION_LIMIT, eventually};
use reactive_lock_backends::grpc::GrpcBackend;
use reactive_lock_backends::redis::{RedisBackend, hash_name};
use reactive_lock_backends::testing::{HubServer, RedisServer};
use redis::Commands;

const KEY: &str = "payments";
/// The holders' expiration: short, so a killed one's entry expires within a test's time.
const EXPIRATION: &str = "1500ms";
/// Bounds how long a killed holder's entry takes to expire: liveness, not speed.
const EXPIRY_LIMIT: Duration = Duration::from_secs(5);

fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_reactive-lock"))
}

/// `reactive-lock hold` holding [`KEY`] busy as `name` with lock data `held` on `backend`
/// (`--redis URL` or `--grpc URL`), once it printed that it holds: its busy status was
/// acknowledged.
fn spawn_holder(backend: &[&str], name: &str) -> Child {
    let mut child = cli()
        .arg("hold")
        .args(backend)
        .args(["--instance", name, "--data", "held"])
        .args(["--renewal", "300ms", "--expiration", EXPIRATION, KEY])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn reactive-lock hold");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("read the holder's first line");
    assert_eq!(line.trim(), format!("holding {KEY} as {name}"));
    child
}

async fn watcher(backend: impl Backend) -> ReactiveLock {
    ReactiveLock::builder()
        .instance_name("watcher")
        .tracker(KEY, TrackerConfig::new())
        .build(backend)
        .await
        .unwrap()
}

/// The watcher sees the holder: busy, with its lock data.
async fn sees_holder(state: &TrackerState) {
    eventually(
        state,
        PROPAGATION_LIMIT,
        "the watcher sees the holder",
        |s| s.is_blocked(),
    )
    .await;
    assert_eq!(state.lock_data().as_deref(), Some("held"));
}

/// SIGKILLs the holder (no goodbye) and reaps it.
fn kill(holder: &mut Child) {
    holder.kill().expect("SIGKILL");
    holder.wait().unwrap();
}

/// Still blocked right after the kill, then unblocked by the entry's expiry alone.
async fn expires_after_kill(state: &TrackerState) {
    assert!(state.is_blocked(), "still blocked right after the kill");
    let killed = Instant::now();
    eventually(state, EXPIRY_LIMIT, "unblocked by expiry alone", |s| {
        !s.is_blocked()
    })
    .await;
    eprintln!("unblocked {:?} after SIGKILL", killed.elapsed());
}

/// SIGKILL: no goodbye. The watcher sees the holder, then sees its entry expire although
/// nothing writes the key after the kill: its own timer judged the expiry.
#[test]
fn a_sigkilled_hold_expires_on_redis_with_no_further_writes() {
    let server = RedisServer::start();
    let url = server.url();
    let mut holder = spawn_holder(&["--redis", &url], "doomed");
    block_on(async {
        let watcher = watcher(RedisBackend::connect(&url).await.unwrap()).await;
        let state = watcher.state(KEY).unwrap();
        sees_holder(&state).await;
        kill(&mut holder);
        let mut raw = server.client();
        let last_write: String = raw.hget(hash_name(KEY), "doomed").unwrap();
        expires_after_kill(&state).await;
        let now: String = raw.hget(hash_name(KEY), "doomed").unwrap();
        assert_eq!(
            now, last_write,
            "no write to the key after the kill: the timer did it"
        );
        assert!(
            now.starts_with("1;"),
            "the dead entry still says busy: {now}"
        );
        watcher.shutdown().await;
    });
}

/// The same through a hub: the hub's expiry broadcast or the watcher's own timer unblocks.
#[test]
fn a_sigkilled_hold_expires_on_a_hub() {
    let hub = HubServer::start();
    let mut holder = spawn_holder(&["--grpc", &hub.url], "doomed");
    block_on(async {
        let watcher = watcher(GrpcBackend::connect([hub.url.as_str()]).await.unwrap()).await;
        let state = watcher.state(KEY).unwrap();
        sees_holder(&state).await;
        kill(&mut holder);
        expires_after_kill(&state).await;
        watcher.shutdown().await;
    });
}

/// libfaketime, which shifts a process's wall clock (`.ci/setup.sh` installs it).
fn faketime_lib() -> std::path::PathBuf {
    const NAME: &str = "faketime/libfaketime.so.1";
    let lib_dirs = ["/usr/lib", "/usr/lib64", "/usr/local/lib", "/lib"];
    let multiarch = lib_dirs.iter().flat_map(|dir| {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
    });
    lib_dirs
        .iter()
        .map(std::path::PathBuf::from)
        .chain(multiarch)
        .map(|dir| dir.join(NAME))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "libfaketime.so.1 not found under {lib_dirs:?} (or their multiarch \
                 subdirectories): install Debian's `libfaketime` package (run .ci/setup.sh)"
            )
        })
}

/// The server's clock `plus` ahead and `minus` behind, in .NET ticks (an entry's
/// valid-until).
fn server_ticks(con: &mut redis::Connection, plus: Duration, minus: Duration) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query(con).unwrap();
    let now = StoreTime::from_unix_nanos(s * 1_000_000_000 + us * 1_000);
    (now + plus).to_dotnet_ticks() - minus.as_nanos() as u64 / 100
}

#[test]
fn inspect_judges_expiry_on_the_servers_clock_not_its_own() {
    let faketime_lib = faketime_lib();
    let server = RedisServer::start();
    let url = server.url();
    // `inspect --json` with the process's wall clock shifted by `offset` seconds: its exit
    // code and its line.
    let inspect = |offset: &str| {
        let out = cli()
            .args(["inspect", "--json", "--redis", &url, KEY])
            .env("LD_PRELOAD", &faketime_lib)
            .env("FAKETIME", offset)
            .env("DONT_FAKE_MONOTONIC", "1")
            .output()
            .expect("run reactive-lock inspect");
        let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "inspect printed no JSON ({e}): {} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code(), line)
    };

    // A live entry (a holder renewing it) would look expired to a clock an hour ahead.
    let mut holder = spawn_holder(&["--redis", &url], "alive");
    let (code, line) = inspect("+3600");
    assert_eq!(code, Some(1), "client clock +1 h sees it blocked: {line}");
    assert_eq!(line["status"], "blocked", "{line}");
    assert_eq!(line["instances"][0]["lock_data"], "held", "{line}");
    holder.kill().unwrap();
    holder.wait().unwrap();

    // An entry that expired on the server's clock 1 s ago (written raw) would look alive to
    // a clock an hour behind.
    let mut raw = server.client();
    let _: () = raw.del(hash_name(KEY)).unwrap();
    let past = server_ticks(&mut raw, Duration::ZERO, Duration::from_secs(1));
    let _: () = raw
        .hset(hash_name(KEY), "dead", format!("1;{past};dead"))
        .unwrap();
    let (code, line) = inspect("-3600");
    assert_eq!(code, Some(0), "client clock -1 h sees it unblocked: {line}");
    assert_eq!(line["status"], "unblocked", "{line}");
}
