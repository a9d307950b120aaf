//! One payments instance (local backend) against two real processors over real sockets.

mod common;

use std::time::Duration;

use common::{BOUND, request, serve};
use reactive_lock_demo::processor::Processor;
use reactive_lock_demo::service::{Config, LockBackend, Service};
use reactive_lock_demo::timestamp::{format_ms, now_ms};
use serde_json::json;

async fn start(no_lock: bool) -> (String, String, String) {
    let default = serve(Processor::new(0.05).router()).await;
    let fallback = serve(Processor::new(0.15).router()).await;
    let service = Service::start(Config {
        instance: "api-1".into(),
        backend: LockBackend::Local,
        processor_default: default.clone(),
        processor_fallback: fallback.clone(),
        workers: 4,
        summary_wait: Duration::from_secs(10),
        no_lock,
    })
    .await
    .unwrap();
    (serve(service.router()).await, default, fallback)
}

async fn pay(base: &str) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    let (status, _) = request(
        "POST",
        &format!("{base}/payments"),
        None,
        json!({ "correlationId": id, "amount": 19.90 }),
    )
    .await;
    assert_eq!(status, 202);
    id
}

/// The summary's count of default payments in [from, to].
async fn summary_count(base: &str, from: i64, to: i64) -> u64 {
    let url = format!(
        "{base}/payments-summary?from={}&to={}",
        format_ms(from),
        format_ms(to)
    );
    let (status, s) = request("GET", &url, None, json!(null)).await;
    assert_eq!(status, 200, "{s}");
    s["default"]["totalRequests"].as_u64().unwrap()
        + s["fallback"]["totalRequests"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_includes_a_payment_the_processor_is_still_delaying() {
    let (base, default, _) = start(false).await;
    let started = now_ms();
    // Every payment takes 400 ms at the processor, which stores it only then.
    let (status, _) = request(
        "PUT",
        &format!("{default}/admin/configurations/delay"),
        Some("123"),
        json!({ "delay": 400 }),
    )
    .await;
    assert_eq!(status, 200);
    pay(&base).await;
    // Let a worker send it: its requestedAt is then before the summary's end.
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The summary waits for the call in flight and for the batch to be persisted: nothing the
    // processor accepts inside the window may be missing from the answer.
    let counted = summary_count(&base, started - 1000, now_ms()).await;
    assert_eq!(counted, 1);
    let (_, admin) = request(
        "GET",
        &format!(
            "{default}/admin/payments-summary?from={}&to={}",
            format_ms(started - 1000),
            format_ms(now_ms())
        ),
        Some("123"),
        json!(null),
    )
    .await;
    assert_eq!(admin["totalRequests"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_lock_the_same_summary_misses_it() {
    let (base, default, _) = start(true).await;
    let started = now_ms();
    let (status, _) = request(
        "PUT",
        &format!("{default}/admin/configurations/delay"),
        Some("123"),
        json!({ "delay": 400 }),
    )
    .await;
    assert_eq!(status, 200);
    pay(&base).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(summary_count(&base, started - 1000, now_ms()).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_default_goes_to_fallback_and_totals_match_the_processors() {
    let (base, default, fallback) = start(false).await;
    let started = now_ms();
    let (status, _) = request(
        "PUT",
        &format!("{default}/admin/configurations/failure"),
        Some("123"),
        json!({ "failure": true }),
    )
    .await;
    assert_eq!(status, 200);
    for _ in 0..20 {
        pay(&base).await;
    }
    // Bounded wait until all twenty are through (each summary is exact at its moment).
    tokio::time::timeout(BOUND, async {
        while summary_count(&base, started - 1000, now_ms()).await < 20 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("payments never all processed");
    let to = now_ms();
    let url = format!(
        "{base}/payments-summary?from={}&to={}",
        format_ms(started - 1000),
        format_ms(to)
    );
    let (_, ours) = request("GET", &url, None, json!(null)).await;
    assert_eq!(ours["default"]["totalRequests"], 0);
    assert_eq!(ours["fallback"]["totalRequests"], 20);
    assert_eq!(ours["fallback"]["totalAmount"], 398.0);
    let (_, theirs) = request(
        "GET",
        &format!(
            "{fallback}/admin/payments-summary?from={}&to={}",
            format_ms(started - 1000),
            format_ms(to)
        ),
        Some("123"),
        json!(null),
    )
    .await;
    assert_eq!(theirs["totalAmount"], 398.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_400() {
    let (base, _, _) = start(false).await;
    let (status, body) = request(
        "POST",
        &format!("{base}/payments"),
        None,
        json!({ "correlationId": "nope", "amount": 1 }),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("invalid payment")
    );
    let (status, _) = request(
        "POST",
        &format!("{base}/payments"),
        None,
        json!({ "correlationId": uuid::Uuid::new_v4(), "amount": 1.001 }),
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = request(
        "GET",
        &format!("{base}/payments-summary?from=soon"),
        None,
        json!(null),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("soon"));
    assert_eq!(
        request("POST", &format!("{base}/purge-payments"), None, json!(null))
            .await
            .0,
        200
    );
}
