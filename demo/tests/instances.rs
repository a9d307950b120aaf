//! Two payments instances sharing a real Redis (locks and store), a real processor and real
//! sockets: a summary on one instance waits for a payment the other has in flight.

mod common;

use std::time::Duration;

use common::{request, serve};
use reactive_lock::{ReactiveLock, TrackerConfig};
use reactive_lock_backends::redis::RedisBackend;
use reactive_lock_backends::testing::RedisServer;
use reactive_lock_demo::processor::Processor;
use reactive_lock_demo::service::{Config, LockBackend, Service};
use reactive_lock_demo::timestamp::{format_ms, now_ms};
use serde_json::json;

struct Setup {
    api1: String,
    api2: String,
    default: String,
    _redis: RedisServer,
}

async fn setup(no_lock: bool, summary_wait: Duration) -> Setup {
    let redis = RedisServer::start();
    let default = serve(Processor::new(0.05).router()).await;
    let fallback = serve(Processor::new(0.15).router()).await;
    let mut urls = Vec::new();
    for name in ["api-1", "api-2"] {
        let service = Service::start(Config {
            instance: name.into(),
            backend: LockBackend::Redis(redis.url()),
            processor_default: default.clone(),
            processor_fallback: fallback.clone(),
            workers: 4,
            summary_wait,
            no_lock,
        })
        .await
        .unwrap();
        urls.push(serve(service.router()).await);
    }
    let api2 = urls.pop().unwrap();
    Setup {
        api1: urls.pop().unwrap(),
        api2,
        default,
        _redis: redis,
    }
}

/// Posts one payment to `api` while the default processor holds every payment 400 ms, and
/// returns the summary `other` gives while that call is still in flight: (status, count).
async fn summary_during_call(s: &Setup) -> (u16, u64) {
    let started = now_ms();
    let (status, _) = request(
        "PUT",
        &format!("{}/admin/configurations/delay", s.default),
        Some("123"),
        json!({ "delay": 400 }),
    )
    .await;
    assert_eq!(status, 200);
    let payment = json!({ "correlationId": uuid::Uuid::new_v4(), "amount": 19.90 });
    assert_eq!(
        request("POST", &format!("{}/payments", s.api2), None, payment)
            .await
            .0,
        202
    );
    // Let api-2's worker send it: its requestedAt is then inside the window asked below.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let url = format!(
        "{}/payments-summary?from={}&to={}",
        s.api1,
        format_ms(started - 1000),
        format_ms(now_ms())
    );
    let (status, body) = request("GET", &url, None, json!(null)).await;
    let count = body["default"]["totalRequests"].as_u64().unwrap_or(0)
        + body["fallback"]["totalRequests"].as_u64().unwrap_or(0);
    (status, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_on_one_instance_waits_for_the_others_call_in_flight() {
    let s = setup(false, Duration::from_secs(10)).await;
    assert_eq!(summary_during_call(&s).await, (200, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_lock_it_misses_the_others_call() {
    let s = setup(true, Duration::from_secs(10)).await;
    assert_eq!(summary_during_call(&s).await, (200, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_never_acknowledges_makes_the_summary_503_not_a_guess() {
    let s = setup(false, Duration::from_millis(300)).await;
    // A third instance is present but runs no watcher (as if hung): it never acknowledges.
    let ghost = ReactiveLock::builder()
        .instance_name("ghost")
        .tracker("instances", TrackerConfig::new())
        .build(RedisBackend::connect(&s._redis.url()).await.unwrap())
        .await
        .unwrap();
    ghost
        .controller("instances")
        .unwrap()
        .increment(Some("ghost"))
        .await
        .unwrap();
    let url = format!("{}/payments-summary", s.api1);
    let (status, body) = request("GET", &url, None, json!(null)).await;
    assert_eq!(status, 503, "{body}");
    // Once it leaves cleanly, summaries answer again.
    ghost.shutdown().await;
    let (status, body) = request("GET", &url, None, json!(null)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["default"]["totalRequests"], 0);
}
