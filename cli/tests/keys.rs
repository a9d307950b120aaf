//! `watch`, `inspect`, `wait` and `hold` as real processes against a real redis-server and
//! a real hub: JSON output parsed, exit codes, one process seeing another's hold, a wait
//! released by the end of a hold, a SIGKILLed hold expiring.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use reactive_lock_backends::testing::{HubServer, RedisServer};

const KEY: &str = "payments";
/// Longest a test waits for an outcome: beyond the default 10 s expiry of a killed hold.
const LIMIT: Duration = Duration::from_secs(20);

fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_reactive-lock"))
}

fn run(args: &[&str]) -> Output {
    cli().args(args).output().expect("run reactive-lock")
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A process whose stdout lines arrive on a channel, so reads are bounded in time.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(args: &[&str]) -> Self {
        let mut child = cli()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn reactive-lock");
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running { child, lines }
    }

    /// The next stdout line, within [`LIMIT`].
    fn line(&self, what: &str) -> String {
        self.lines
            .recv_timeout(LIMIT)
            .unwrap_or_else(|_| panic!("no line within {LIMIT:?}: {what}"))
    }

    /// The next `watch --json` line, parsed.
    fn json(&self, what: &str) -> serde_json::Value {
        let line = self.line(what);
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    fn exit_code(&mut self) -> Option<i32> {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "the process did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_watch_line(line: &serde_json::Value, status: &str, instances: &[(&str, Option<&str>)]) {
    assert_eq!(line["key"], KEY, "{line}");
    assert_eq!(line["status"], status, "{line}");
    assert!(
        humantime::parse_rfc3339(line["at"].as_str().unwrap()).is_ok(),
        "{line}"
    );
    let listed = line["instances"].as_array().unwrap();
    assert_eq!(listed.len(), instances.len(), "{line}");
    for (entry, (name, data)) in listed.iter().zip(instances) {
        assert_eq!(entry["instance"], *name, "{line}");
        assert_eq!(entry["busy"], true, "{line}");
        assert_eq!(entry["lock_data"].as_str(), *data, "{line}");
        assert!(
            humantime::parse_rfc3339(entry["valid_until"].as_str().unwrap()).is_ok(),
            "{line}"
        );
    }
}

/// `watch` in one process sees a `hold` in another start and end; `inspect` and `wait`
/// agree meanwhile; `wait` is released by the end of the hold.
fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn hold_seen_everywhere(backend: &[&str]) {
    let with = |args: &[&str]| -> Vec<String> {
        args.iter()
            .chain(backend)
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };

    let watch_args = with(&["watch", "--json", KEY]);
    let watch = Running::start(&args(&watch_args));
    assert_watch_line(&watch.json("the initial state"), "unblocked", &[]);

    let inspect_args = with(&["inspect", "--json", KEY]);
    let out = run(&args(&inspect_args));
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));

    let hold_args = with(&["hold", "--instance", "api-1", "--data", "batch-7", KEY]);
    let hold = Running::start(&args(&hold_args));
    assert_eq!(
        hold.line("hold's first line"),
        format!("holding {KEY} as api-1")
    );
    assert_watch_line(
        &watch.json("the hold"),
        "blocked",
        &[("api-1", Some("batch-7"))],
    );
    let out = run(&args(&inspect_args));
    assert_eq!(out.status.code(), Some(1), "inspect exits 1 while blocked");
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_watch_line(&printed, "blocked", &[("api-1", Some("batch-7"))]);

    let out = run(&args(&with(&["wait", "--timeout", "200ms", KEY])));
    assert_eq!(out.status.code(), Some(1), "wait times out while blocked");
    assert!(
        stderr_of(&out).contains("still blocked"),
        "{}",
        stderr_of(&out)
    );

    let wait_args = with(&["wait", "--timeout", "20s", KEY]);
    let mut wait = Running::start(&args(&wait_args));
    std::thread::sleep(Duration::from_millis(200));
    assert!(wait.child.try_wait().unwrap().is_none(), "wait waits");
    hold.signal("TERM");
    assert_watch_line(&watch.json("the end of the hold"), "unblocked", &[]);
    assert_eq!(
        wait.exit_code(),
        Some(0),
        "the end of the hold releases wait"
    );
    watch.signal("INT");
    let mut watch = watch;
    assert_eq!(watch.exit_code(), Some(0), "watch ends on SIGINT with 0");
}

#[test]
fn hold_is_seen_by_watch_inspect_and_wait_on_redis() {
    let redis = RedisServer::start();
    hold_seen_everywhere(&["--redis", &redis.url()]);
}

#[test]
fn hold_is_seen_by_watch_inspect_and_wait_on_a_hub() {
    let hub = HubServer::start();
    hold_seen_everywhere(&["--grpc", &hub.url]);
}

#[test]
fn a_killed_hold_expires_in_watch() {
    let redis = RedisServer::start();
    let url = redis.url();
    let watch = Running::start(&["watch", "--json", "--redis", &url, KEY]);
    assert_watch_line(&watch.json("the initial state"), "unblocked", &[]);
    let hold = Running::start(&["hold", "--redis", &url, "--instance", "doomed", KEY]);
    hold.line("holding");
    assert_watch_line(&watch.json("the hold"), "blocked", &[("doomed", None)]);
    hold.signal("KILL");
    // No goodbye: the key stays blocked after the kill ...
    let out = run(&["inspect", "--redis", &url, KEY]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "still blocked right after the kill"
    );
    // ... until the entry expires at its valid-until (10 s after its last renewal).
    assert_watch_line(&watch.json("the expiry"), "unblocked", &[]);
    // The expired entry is still in the store: watch neither spins on it nor stops
    // answering signals.
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    watch.signal("INT");
    let mut watch = watch;
    assert_eq!(watch.exit_code(), Some(0), "watch ends on SIGINT with 0");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "watch took {:?} to end",
        started.elapsed()
    );
}

#[test]
fn errors_are_one_line_and_exit_2() {
    for (args, says) in [
        (
            vec!["inspect", "--redis", "redis://127.0.0.1:1/", KEY],
            "127.0.0.1:1",
        ),
        (vec!["inspect", "--redis", "not a url", KEY], "not a url"),
        (
            vec![
                "wait",
                "--redis",
                "redis://127.0.0.1:1/",
                "--timeout",
                "soon",
                KEY,
            ],
            "soon",
        ),
        (vec!["inspect", KEY], "--redis"),
        (
            vec![
                "hold",
                "--redis",
                "redis://127.0.0.1:1/",
                "--expiration",
                "a while",
                KEY,
            ],
            "a while",
        ),
    ] {
        let out = run(&args);
        let stderr = stderr_of(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn bench_reports_its_figures_as_json() {
    let redis = RedisServer::start();
    let out = run(&[
        "bench",
        "--redis",
        &redis.url(),
        "--instances",
        "2",
        "--tasks",
        "2",
        "--keys",
        "2",
        "--duration",
        "1s",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert!(report["transitions"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report["transitions_per_second"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    for figures in ["acknowledged_transition", "propagation"] {
        let f = &report[figures];
        assert!(f["count"].as_u64().unwrap() > 0, "{figures}: {report}");
        let (p50, p99, max) = (
            f["p50_us"].as_u64().unwrap(),
            f["p99_us"].as_u64().unwrap(),
            f["max_us"].as_u64().unwrap(),
        );
        assert!(p50 <= p99 && p99 <= max, "{figures}: {report}");
    }
    let out = run(&["bench", "--redis", &redis.url(), "--instances", "1"]);
    assert_eq!(out.status.code(), Some(2), "one instance is refused");
}
