//! The processor's API over a real socket, as the Rinha's test script and the service use it.

mod common;

use common::{request, serve};
use reactive_lock_demo::processor::Processor;
use reactive_lock_demo::timestamp::{format_ms, now_ms};
use serde_json::json;

fn payment(id: &str, requested_at_ms: i64) -> serde_json::Value {
    json!({ "correlationId": id, "amount": 19.90, "requestedAt": format_ms(requested_at_ms) })
}

const ID: &str = "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3";

#[tokio::test]
async fn payments_duplicates_summary_and_purge() {
    let base = serve(Processor::new(0.05).router()).await;
    let t = now_ms();
    assert_eq!(
        request("POST", &format!("{base}/payments"), None, payment(ID, t))
            .await
            .0,
        200
    );
    // A duplicate is refused and changes nothing.
    assert_eq!(
        request(
            "POST",
            &format!("{base}/payments"),
            None,
            payment(ID, t + 5)
        )
        .await
        .0,
        422
    );

    let (status, stored) =
        request("GET", &format!("{base}/payments/{ID}"), None, json!(null)).await;
    assert_eq!(status, 200);
    assert_eq!(stored["requestedAt"], format_ms(t));
    assert_eq!(stored["amount"], 19.9);

    let summary = |from: i64, to: i64| {
        let url = format!(
            "{base}/admin/payments-summary?from={}&to={}",
            format_ms(from),
            format_ms(to)
        );
        async move { request("GET", &url, Some("123"), json!(null)).await }
    };
    // Inclusive on both ends.
    let (status, s) = summary(t, t).await;
    assert_eq!(status, 200);
    assert_eq!(
        (s["totalRequests"].as_u64(), s["totalAmount"].as_f64()),
        (Some(1), Some(19.9))
    );
    assert_eq!(s["feePerTransaction"], 0.05);
    assert!((s["totalFee"].as_f64().unwrap() - 0.995).abs() < 1e-9);
    assert_eq!(summary(t + 1, t + 10).await.1["totalRequests"], 0);
    assert_eq!(summary(t - 10, t - 1).await.1["totalRequests"], 0);

    assert_eq!(
        request(
            "POST",
            &format!("{base}/admin/purge-payments"),
            Some("123"),
            json!(null)
        )
        .await
        .0,
        200
    );
    assert_eq!(summary(t, t).await.1["totalRequests"], 0);
    assert_eq!(
        request("GET", &format!("{base}/payments/{ID}"), None, json!(null))
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn failure_stores_nothing_and_admin_needs_the_token() {
    let base = serve(Processor::new(0.15).router()).await;
    let admin = |path: &str, token: &str, body: serde_json::Value| {
        let url = format!("{base}{path}");
        let token = token.to_owned();
        async move { request("PUT", &url, Some(&token), body).await.0 }
    };
    assert_eq!(
        admin(
            "/admin/configurations/failure",
            "wrong",
            json!({ "failure": true })
        )
        .await,
        401
    );
    assert_eq!(
        admin(
            "/admin/configurations/failure",
            "123",
            json!({ "failure": true })
        )
        .await,
        200
    );
    let t = now_ms();
    assert_eq!(
        request("POST", &format!("{base}/payments"), None, payment(ID, t))
            .await
            .0,
        500
    );
    assert_eq!(
        admin(
            "/admin/configurations/failure",
            "123",
            json!({ "failure": false })
        )
        .await,
        200
    );
    // Nothing was stored: the same payment is new now.
    assert_eq!(
        request("POST", &format!("{base}/payments"), None, payment(ID, t))
            .await
            .0,
        200
    );

    assert_eq!(
        admin(
            "/admin/configurations/token",
            "123",
            json!({ "token": "s3cret" })
        )
        .await,
        204
    );
    assert_eq!(
        admin("/admin/configurations/delay", "123", json!({ "delay": 5 })).await,
        401
    );
    assert_eq!(
        admin(
            "/admin/configurations/delay",
            "s3cret",
            json!({ "delay": 5 })
        )
        .await,
        200
    );
    assert_eq!(
        admin(
            "/admin/configurations/delay",
            "s3cret",
            json!({ "delay": "x" })
        )
        .await,
        400
    );
    // Bad input: a clear 400, never a panic.
    assert_eq!(
        request(
            "POST",
            &format!("{base}/payments"),
            None,
            json!({ "amount": 1 })
        )
        .await
        .0,
        400
    );
    let bad_time = json!({ "correlationId": ID, "amount": 1.0, "requestedAt": "yesterday" });
    let (status, body) = request("POST", &format!("{base}/payments"), None, bad_time).await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("yesterday"));
}

#[tokio::test]
async fn health_allows_one_call_per_five_seconds() {
    let base = serve(Processor::new(0.05).router()).await;
    let url = format!("{base}/payments/service-health");
    let (status, health) = request("GET", &url, None, json!(null)).await;
    assert_eq!(status, 200);
    assert_eq!(health, json!({ "failing": false, "minResponseTime": 0 }));
    assert_eq!(request("GET", &url, None, json!(null)).await.0, 429);
}
