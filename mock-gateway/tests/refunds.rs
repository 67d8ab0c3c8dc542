//! Refunds against the gateway started in-process, over HTTP: partial and full, replays and
//! reused keys, refusals, the merchant that declines refunds, a hundred concurrent refunds
//! of one charge, and a restart from the data file.

use mock_gateway::{spawn, Config, Running};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::path::PathBuf;

fn config(data_file: Option<PathBuf>) -> Config {
    Config {
        bind: "127.0.0.1:0".parse().unwrap(),
        metrics_bind: "127.0.0.1:0".parse().unwrap(),
        latency_ms: 0,
        decline_rate: 0.0,
        error_rate: 0.0,
        seed: Some(7),
        data_file,
    }
}

async fn charge(gw: &Running, http: &Client, key: &str, amount: i64, merchant: &str) -> Value {
    let r = http
        .post(gw.url("/v1/charges"))
        .header("Idempotency-Key", key)
        .json(&json!({"amount": amount, "currency": "EUR", "merchant_id": merchant}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn refund(
    gw: &Running,
    http: &Client,
    charge: &str,
    key: &str,
    amount: i64,
) -> (StatusCode, bool, Value) {
    let r = http
        .post(gw.url(&format!("/v1/charges/{charge}/refunds")))
        .header("Idempotency-Key", key)
        .json(&json!({ "amount": amount }))
        .send()
        .await
        .unwrap();
    let replayed = r.headers().get("idempotent-replayed").is_some();
    (r.status(), replayed, r.json().await.unwrap())
}

async fn get(gw: &Running, http: &Client, path: &str) -> (StatusCode, Value) {
    let r = http.get(gw.url(path)).send().await.unwrap();
    (r.status(), r.json().await.unwrap())
}

#[tokio::test]
async fn partial_refunds_up_to_the_charge_replays_and_refusals() {
    let gw = spawn(config(None)).await.unwrap();
    let http = Client::new();
    let ch = charge(&gw, &http, "pay-1", 1_000, "shop").await;

    let (status, replayed, first) = refund(&gw, &http, "pay-1", "re-1", 400).await;
    assert_eq!((status, replayed), (StatusCode::OK, false));
    assert_eq!(first["status"], "succeeded");
    assert_eq!(first["amount"], 400);
    assert_eq!(first["charge_key"], "pay-1");
    assert_eq!(first["charge_id"], ch["id"]);
    assert_eq!(first["idempotency_key"], "re-1");
    assert!(first["id"].as_str().unwrap().starts_with("re_"));

    // The same key and amount: the same refund, marked as a replay; never a second refund.
    let (status, replayed, again) = refund(&gw, &http, "pay-1", "re-1", 400).await;
    assert_eq!((status, replayed, &again), (StatusCode::OK, true, &first));
    // The same key for something else is refused.
    let (status, _, body) = refund(&gw, &http, "pay-1", "re-1", 300).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("idempotency_key_reused")
        )
    );

    let (status, _, _) = refund(&gw, &http, "pay-1", "re-2", 600).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = refund(&gw, &http, "pay-1", "re-3", 1).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body,
        json!({"error": "refund_exceeds_charge", "refundable": 0})
    );

    // Nothing to refund: no charge, a declined charge.
    let (status, _, body) = refund(&gw, &http, "nope", "re-4", 1).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("charge_not_refundable"))
    );
    charge(&gw, &http, "pay-2", 500, "test_decline").await;
    let (status, _, _) = refund(&gw, &http, "pay-2", "re-5", 1).await;
    assert_eq!(status, StatusCode::CONFLICT);
    // Bad requests.
    let r = http
        .post(gw.url("/v1/charges/pay-1/refunds"))
        .json(&json!({"amount": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let (status, _, _) = refund(&gw, &http, "pay-1", "re-6", 0).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, list) = get(&gw, &http, "/v1/charges/pay-1/refunds").await;
    assert_eq!(status, StatusCode::OK);
    let keys: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["idempotency_key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["re-1", "re-2"]);
    assert_eq!(
        get(&gw, &http, "/v1/charges/nope/refunds").await.0,
        StatusCode::NOT_FOUND
    );
    let (_, stats) = get(&gw, &http, "/v1/stats").await;
    assert_eq!(
        (
            &stats["refunds"],
            &stats["refunds_declined"],
            &stats["refunded_amount"]
        ),
        (&json!(2), &json!(0), &json!(1_000)),
        "{stats}"
    );
}

#[tokio::test]
async fn the_refund_declining_merchant_is_charged_and_its_refunds_declined() {
    let gw = spawn(config(None)).await.unwrap();
    let http = Client::new();
    let ch = charge(&gw, &http, "pay-1", 900, "test_refund_decline").await;
    assert_eq!(ch["status"], "succeeded");
    let (status, _, declined) = refund(&gw, &http, "pay-1", "re-1", 900).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(declined["status"], "declined");
    assert_eq!(declined["decline_code"], "refund_declined");
    let (_, replayed, again) = refund(&gw, &http, "pay-1", "re-1", 900).await;
    assert!(replayed);
    assert_eq!(again, declined);
    let (_, stats) = get(&gw, &http, "/v1/stats").await;
    assert_eq!(
        (&stats["refunds"], &stats["refunds_declined"]),
        (&json!(0), &json!(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_cent_refunds_of_fifty_cents_refund_exactly_fifty() {
    let gw = spawn(config(None)).await.unwrap();
    let http = Client::new();
    charge(&gw, &http, "pay-1", 50, "shop").await;
    let gw = std::sync::Arc::new(gw);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let (gw, http) = (gw.clone(), http.clone());
        tasks.spawn(async move { refund(&gw, &http, "pay-1", &format!("re-{i}"), 1).await.0 });
    }
    let answers = tasks.join_all().await;
    let ok = answers.iter().filter(|s| **s == StatusCode::OK).count();
    let exceeded = answers
        .iter()
        .filter(|s| **s == StatusCode::UNPROCESSABLE_ENTITY)
        .count();
    assert_eq!((ok, exceeded), (50, 50), "{answers:?}");
    let (_, stats) = get(&gw, &http, "/v1/stats").await;
    assert_eq!(stats["refunded_amount"], 50);
}

#[tokio::test]
async fn refunds_are_remembered_across_a_restart() {
    let dir = std::env::temp_dir().join(format!("gw-refunds-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("data.jsonl");
    let http = Client::new();
    let first = {
        let gw = spawn(config(Some(file.clone()))).await.unwrap();
        charge(&gw, &http, "pay-1", 100, "shop").await;
        let (_, _, r) = refund(&gw, &http, "pay-1", "re-1", 70).await;
        r
    };
    let gw = spawn(config(Some(file.clone()))).await.unwrap();
    let (status, replayed, again) = refund(&gw, &http, "pay-1", "re-1", 70).await;
    assert_eq!((status, replayed, &again), (StatusCode::OK, true, &first));
    let (status, _, body) = refund(&gw, &http, "pay-1", "re-2", 31).await;
    assert_eq!(
        (status, &body["refundable"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!(30))
    );
    let (_, stats) = get(&gw, &http, "/v1/stats").await;
    assert_eq!(
        (
            &stats["charges"],
            &stats["refunds"],
            &stats["refunded_amount"]
        ),
        (&json!(1), &json!(1), &json!(70))
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
