//! Chaos soak: instances flap keys at random on a real redis-server and on a gRPC hub, while
//! Redis is killed and restarted empty and the hub is restarted; after every round's quiet
//! period each instance must agree with the true state, every waiter must be released, and
//! the process's RSS must stay flat.
//!
//! ```text
//! cargo run --release -p reactive-lock-backends --all-features --example chaos_soak -- \
//!     --seconds 1800
//! ```
//!
//! Options: `--seconds N` (default 120), `--instances N` (default 3 per backend), `--keys N`
//! (default 20). The first fault comes in round 1, whatever the length: Redis killed, down
//! for a second and restarted empty in rounds 1, 5, 9, ..., the hub restarted in rounds 3,
//! 7, 11, ...; each a second before the flapping stops.
//! Exit code 0 when every check held, 1 with the failed check on stderr otherwise.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_lite::future::block_on;
use reactive_lock::{ReactiveLock, Status, TrackerConfig, TrackerController, TrackerState};
use reactive_lock_backends::grpc::GrpcBackend;
use reactive_lock_backends::grpc::server::Hub;
use reactive_lock_backends::redis::RedisBackend;
use reactive_lock_backends::testing::{HubServer, RedisServer};

/// A round: flapping with a fault in its middle, then the quiet checks.
const FLAP: Duration = Duration::from_secs(6);
/// How long instances may take to agree after a quiet period begins: a restarted store
/// needs a reconnect (backoff) and every instance's statuses published again.
const CONVERGE: Duration = Duration::from_secs(20);
const RENEWAL: Duration = Duration::from_millis(300);
const EXPIRATION: Duration = Duration::from_secs(2);

struct Options {
    seconds: u64,
    instances: usize,
    keys: usize,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        seconds: 120,
        instances: 3,
        keys: 20,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number: u64 = value
            .parse()
            .map_err(|_| format!("{flag}: not a whole number: {value}"))?;
        match flag.as_str() {
            "--seconds" => options.seconds = number,
            "--instances" if number > 0 => options.instances = number as usize,
            "--keys" if number > 0 => options.keys = number as usize,
            _ => return Err(format!("unknown or invalid option {flag} {value}")),
        }
    }
    Ok(options)
}

/// A registry builder for instance `name` tracking every key.
fn tracking(name: String, keys: &[String]) -> reactive_lock::ReactiveLockBuilder {
    keys.iter().fold(
        ReactiveLock::builder().instance_name(name),
        |builder, key| builder.tracker(key, TrackerConfig::new()),
    )
}

/// Whether an instance's `status` of a key agrees with the truth: blocked exactly when some
/// instance is busy, and known.
fn agrees(status: Status, truly_busy: bool) -> bool {
    match status {
        Status::Blocked => truly_busy,
        Status::Unblocked => !truly_busy,
        Status::Unknown => false,
    }
}

/// One backend's instances, each with a controller and a state per key.
struct Group {
    name: &'static str,
    locks: Vec<ReactiveLock>,
    controllers: Vec<Vec<TrackerController>>,
    states: Vec<Vec<TrackerState>>,
    keys: Vec<String>,
}

impl Group {
    async fn new<B, F, Fut>(name: &'static str, options: &Options, connect: F) -> Group
    where
        B: reactive_lock::Backend,
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = B>,
    {
        let keys: Vec<String> = (0..options.keys).map(|k| format!("chaos-{k}")).collect();
        let mut group = Group {
            name,
            locks: Vec::new(),
            controllers: Vec::new(),
            states: Vec::new(),
            keys: keys.clone(),
        };
        for i in 0..options.instances {
            let lock = tracking(format!("{name}-{i}"), &keys)
                .renewal(RENEWAL)
                .expiration(EXPIRATION)
                .build(connect().await)
                .await
                .expect("build");
            group
                .controllers
                .push(keys.iter().map(|k| lock.controller(k).unwrap()).collect());
            group
                .states
                .push(keys.iter().map(|k| lock.state(k).unwrap()).collect());
            group.locks.push(lock);
        }
        group
    }

    /// Whether any instance counts key `k` busy: the truth every instance must see.
    fn truly_busy(&self, k: usize) -> bool {
        self.controllers.iter().any(|c| c[k].is_busy())
    }

    /// The first disagreement with the truth, if any.
    fn disagreement(&self) -> Option<String> {
        for (k, key) in self.keys.iter().enumerate() {
            let truth = self.truly_busy(k);
            for (i, states) in self.states.iter().enumerate() {
                let status = states[k].status();
                if !agrees(status, truth) {
                    return Some(format!(
                        "{}-{i} sees {key} {status:?}, truly busy: {truth}",
                        self.name
                    ));
                }
            }
        }
        None
    }

    /// Until every instance agrees with the truth, or the last disagreement after `limit`.
    fn converge(&self, limit: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            match self.disagreement() {
                None => return Ok(start.elapsed()),
                Some(what) if start.elapsed() > limit => {
                    return Err(format!("no agreement after {limit:?}: {what}"));
                }
                Some(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// A new instance, which knows only what it reads from the store, must agree with the
    /// truth too: the instances published their statuses again into the restarted store.
    async fn observer_agrees<B: reactive_lock::Backend>(
        &self,
        round: usize,
        backend: B,
    ) -> Result<Duration, String> {
        let observer = tracking(format!("{}-observer-{round}", self.name), &self.keys)
            .build(backend)
            .await
            .map_err(|e| e.to_string())?;
        let states: Vec<TrackerState> = self
            .keys
            .iter()
            .map(|k| observer.state(k).unwrap())
            .collect();
        let start = Instant::now();
        let result = loop {
            let wrong =
                (0..self.keys.len()).find(|&k| !agrees(states[k].status(), self.truly_busy(k)));
            match wrong {
                None => break Ok(start.elapsed()),
                Some(k) if start.elapsed() > CONVERGE => {
                    break Err(format!(
                        "a new observer sees {} {:?}, truly busy: {}",
                        self.keys[k],
                        states[k].status(),
                        self.truly_busy(k)
                    ));
                }
                Some(_) => {
                    async_io::Timer::after(Duration::from_millis(20)).await;
                }
            }
        };
        observer.shutdown().await;
        result
    }

    /// Every count back to 0.
    fn all_idle(&self) {
        for controllers in &self.controllers {
            for c in controllers {
                // The count changes at the call; the acknowledgement may fail in an outage
                // (the driver publishes the status again).
                let _ = block_on(c.decrement(c.count()));
            }
        }
    }
}

/// Flaps every instance's keys at random until `stop`: one thread per instance, each
/// holding at most 3 operations per key.
fn flap(group: &Group, stop: &AtomicBool) -> usize {
    std::thread::scope(|scope| {
        let workers: Vec<_> = group
            .controllers
            .iter()
            .map(|controllers| {
                scope.spawn(move || {
                    let mut rng = fastrand::Rng::new();
                    let mut transitions = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let c = &controllers[rng.usize(..controllers.len())];
                        // About half the keys busy at any time: idle keys turn busy at even
                        // odds, busy ones lean back towards idle.
                        let up = match c.count() {
                            0 => rng.bool(),
                            1 | 2 => rng.u8(..10) < 3,
                            _ => false,
                        };
                        let ack = if up {
                            c.increment(Some("chaos"))
                        } else {
                            c.decrement(1)
                        };
                        // Bounded: an acknowledgement waits for the store, which may be down.
                        block_on(futures_lite::future::or(
                            async {
                                let _ = ack.await;
                            },
                            async {
                                async_io::Timer::after(Duration::from_millis(200)).await;
                            },
                        ));
                        transitions += 1;
                        std::thread::sleep(Duration::from_millis(rng.u64(1..20)));
                    }
                    transitions
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    })
}

/// Waiters on every blocked key of every instance, then all idle: each must be released.
/// Tasks on one executor (not threads, whose stacks and allocator arenas would blur the
/// RSS reading).
fn waiters_released(group: &Group) -> Result<usize, String> {
    let executor = smol::LocalExecutor::new();
    let waiters: Vec<_> = group
        .states
        .iter()
        .flatten()
        .filter(|s| s.is_blocked())
        .map(|state| executor.spawn(state.wait_if_blocked_timeout(CONVERGE)))
        .collect();
    // Every waiter registered before the keys go idle.
    while executor.try_tick() {}
    let count = waiters.len();
    group.all_idle();
    block_on(executor.run(async {
        for waiter in waiters {
            if let Err(timeout) = waiter.await {
                return Err(format!(
                    "{}: a waiter still blocked after {:?} of all idle",
                    group.name,
                    timeout.waited()
                ));
            }
        }
        Ok(count)
    }))
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("chaos_soak: {message}");
            return ExitCode::from(2);
        }
    };
    match soak(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("chaos_soak: FAILED: {message}");
            ExitCode::from(1)
        }
    }
}

fn soak(options: &Options) -> Result<(), String> {
    let mut redis = RedisServer::start();
    let mut hub = HubServer::start();
    let redis_url = redis.url();
    let hub_url = hub.url.clone();
    let groups = block_on(async {
        [
            Group::new("redis", options, || async {
                RedisBackend::connect(&redis_url).await.expect("connect")
            })
            .await,
            Group::new("grpc", options, || async {
                GrpcBackend::connect([hub_url.clone()])
                    .await
                    .expect("connect")
            })
            .await,
        ]
    });
    let deadline = Instant::now() + Duration::from_secs(options.seconds);
    let mut rss = Vec::new();
    let mut round = 0;
    while round < 3 || Instant::now() < deadline {
        round += 1;
        let stop = AtomicBool::new(false);
        let fault = match round % 4 {
            1 => "redis killed and restarted empty",
            3 => "hub restarted",
            _ => "none",
        };
        let transitions = std::thread::scope(|scope| {
            let flappers: Vec<_> = groups
                .iter()
                .map(|group| scope.spawn(|| flap(group, &stop)))
                .collect();
            // The fault comes late, so the quiet check begins while the instances still
            // recover from it: Redis down for a second, then empty; the hub's state gone.
            std::thread::sleep(FLAP - Duration::from_secs(2));
            match round % 4 {
                1 => {
                    redis.kill();
                    std::thread::sleep(Duration::from_secs(1));
                    redis.restart();
                }
                3 => hub.restart(Hub::default()),
                _ => {}
            }
            std::thread::sleep(Duration::from_secs(1));
            stop.store(true, Ordering::Relaxed);
            flappers
                .into_iter()
                .map(|f| f.join().unwrap())
                .sum::<usize>()
        });
        // Quiet: some keys left busy, every instance must agree; then all idle.
        let mut line = format!("round {round} (fault: {fault}): {transitions} transitions;");
        for group in &groups {
            let busy = (0..group.keys.len())
                .filter(|&k| group.truly_busy(k))
                .count();
            let agreed = group
                .converge(CONVERGE)
                .map_err(|e| format!("round {round}, {}: {e}", group.name))?;
            let observed = block_on(async {
                if group.name == "redis" {
                    let backend = RedisBackend::connect(&redis.url()).await;
                    group
                        .observer_agrees(round, backend.map_err(|e| e.to_string())?)
                        .await
                } else {
                    let backend = GrpcBackend::connect([hub.url.clone()]).await;
                    group
                        .observer_agrees(round, backend.map_err(|e| e.to_string())?)
                        .await
                }
            })
            .map_err(|e| format!("round {round}, {}: {e}", group.name))?;
            let released = waiters_released(group)?;
            let idle = group
                .converge(CONVERGE)
                .map_err(|e| format!("round {round}, {} all idle: {e}", group.name))?;
            line += &format!(
                " {}: {busy} keys busy, agreed in {} ms, a new observer in {} ms, {released} waiters released, idle agreed in {} ms;",
                group.name,
                agreed.as_millis(),
                observed.as_millis(),
                idle.as_millis()
            );
        }
        let now = rss_kib();
        rss.push(now);
        println!("{line} RSS {now} KiB");
    }
    for group in groups {
        for lock in group.locks {
            block_on(lock.shutdown());
        }
    }
    // Flat: the last round within 8 MiB or a quarter of the most the first third of the
    // rounds took (by then connections, buffers and the allocator's pools exist, and every
    // kind of fault has happened once in a run of 3 rounds or more).
    let warm = rss[..rss.len().div_ceil(3)].iter().copied().max().unwrap();
    let last = *rss.last().unwrap();
    let limit = warm + (warm / 4).max(8 * 1024);
    println!(
        "chaos_soak: {round} rounds, every check held; RSS after round 1 {} KiB, first third's most {warm} KiB, last {last} KiB, max {} KiB",
        rss[0],
        rss.iter().max().unwrap()
    );
    if last > limit {
        return Err(format!(
            "RSS grew: at most {warm} KiB in the first third of the rounds, {last} KiB after round {round}"
        ));
    }
    Ok(())
}
