//! The gateway started in-process on a free port and driven over HTTP.

use mock_gateway::{spawn, Config, Running};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::path::PathBuf;

fn config() -> Config {
    Config {
        bind: "127.0.0.1:0".parse().unwrap(),
        metrics_bind: "127.0.0.1:0".parse().unwrap(),
        latency_ms: 0,
        decline_rate: 0.0,
        error_rate: 0.0,
        seed: Some(7),
        data_file: None,
        retention_secs: 604_800,
        retention_interval_secs: 60,
    }
}

async fn start(config: Config) -> (Running, Client) {
    (spawn(config).await.expect("gateway starts"), Client::new())
}

fn charge_body(amount: i64, merchant_id: &str) -> Value {
    json!({ "amount": amount, "currency": "EUR", "merchant_id": merchant_id, "reference": "order-1" })
}

async fn post_charge(gw: &Running, client: &Client, key: &str, body: &Value) -> reqwest::Response {
    client
        .post(gw.url("/v1/charges"))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn post_void(gw: &Running, client: &Client, key: &str) -> reqwest::Response {
    client
        .post(gw.url(&format!("/v1/charges/{key}/void")))
        .send()
        .await
        .unwrap()
}

async fn get_json(gw: &Running, client: &Client, path: &str) -> (StatusCode, Value) {
    let response = client.get(gw.url(path)).send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

fn is_replay(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true")
}

#[tokio::test]
async fn same_key_returns_the_same_charge_once() {
    let (gw, client) = start(config()).await;
    let body = charge_body(1250, "m_1");

    let first = post_charge(&gw, &client, "pay-1", &body).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert!(!is_replay(&first));
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["status"], "succeeded");
    assert_eq!(first["idempotency_key"], "pay-1");
    assert_eq!(first["amount"], 1250);
    assert_eq!(first["decline_code"], Value::Null);
    assert!(first["id"].as_str().unwrap().starts_with("ch_"));

    let second = post_charge(&gw, &client, "pay-1", &body).await;
    assert_eq!(second.status(), StatusCode::OK);
    assert!(is_replay(&second));
    assert_eq!(second.json::<Value>().await.unwrap(), first);

    assert_eq!(
        get_json(&gw, &client, "/v1/charges/pay-1").await,
        (StatusCode::OK, first)
    );
    let (_, stats) = get_json(&gw, &client, "/v1/stats").await;
    assert_eq!(
        stats,
        json!({ "charges": 1, "declined": 0, "requests": 2, "replays": 1, "unavailable": 0, "voided": 0, "refunds": 0, "refunds_declined": 0, "refunded_amount": 0, "retention_secs": 604_800, "forgotten_charges": 0 })
    );
}

#[tokio::test]
async fn test_decline_merchant_is_declined() {
    let (gw, client) = start(config()).await;
    let response = post_charge(&gw, &client, "pay-d", &charge_body(100, "test_decline")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let charge: Value = response.json().await.unwrap();
    assert_eq!(charge["status"], "declined");
    assert_eq!(charge["decline_code"], "card_declined");
    let (_, stats) = get_json(&gw, &client, "/v1/stats").await;
    assert_eq!(
        (stats["charges"].as_u64(), stats["declined"].as_u64()),
        (Some(0), Some(1))
    );
}

#[tokio::test]
async fn test_unavailable_merchant_answers_503_and_records_nothing() {
    let (gw, client) = start(config()).await;
    for _ in 0..2 {
        let response =
            post_charge(&gw, &client, "pay-u", &charge_body(100, "test_unavailable")).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({ "error": "unavailable" })
        );
    }
    assert_eq!(
        get_json(&gw, &client, "/v1/charges/pay-u").await,
        (StatusCode::NOT_FOUND, json!({ "error": "not_found" }))
    );
    let (_, stats) = get_json(&gw, &client, "/v1/stats").await;
    assert_eq!(
        stats,
        json!({ "charges": 0, "declined": 0, "requests": 2, "replays": 0, "unavailable": 2, "voided": 0, "refunds": 0, "refunds_declined": 0, "refunded_amount": 0, "retention_secs": 604_800, "forgotten_charges": 0 })
    );
}

#[tokio::test]
async fn error_rate_one_answers_503_without_charging() {
    let (gw, client) = start(Config {
        error_rate: 1.0,
        ..config()
    })
    .await;
    let response = post_charge(&gw, &client, "pay-e", &charge_body(100, "m_1")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        get_json(&gw, &client, "/v1/charges/pay-e").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn missing_key_or_malformed_body_is_400() {
    let (gw, client) = start(config()).await;
    let response = client
        .post(gw.url("/v1/charges"))
        .json(&charge_body(100, "m_1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({ "error": "idempotency_key_missing" })
    );

    for body in [
        charge_body(0, "m_1"),
        json!({ "amount": 5, "currency": "EUR" }),
    ] {
        let response = post_charge(&gw, &client, "pay-bad", &body).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(
            response.json::<Value>().await.unwrap()["error"],
            "invalid_request"
        );
    }
}

#[tokio::test]
async fn key_reused_for_a_different_charge_is_422() {
    let (gw, client) = start(config()).await;
    assert_eq!(
        post_charge(&gw, &client, "pay-r", &charge_body(100, "m_1"))
            .await
            .status(),
        StatusCode::OK
    );
    let response = post_charge(&gw, &client, "pay-r", &charge_body(101, "m_1")).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({ "error": "idempotency_key_reused" })
    );
    assert_eq!(
        get_json(&gw, &client, "/v1/charges/pay-r").await.1["amount"],
        100
    );
}

#[tokio::test]
async fn concurrent_requests_with_one_key_charge_at_most_once() {
    // Seed 7 draws ~1.5x the mean for the one request that gets to the latency, so the
    // others arrive while it is in flight.
    let (gw, client) = start(Config {
        latency_ms: 400,
        ..config()
    })
    .await;
    let gw = std::sync::Arc::new(gw);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (gw, client) = (gw.clone(), client.clone());
            tokio::spawn(async move {
                let response = post_charge(&gw, &client, "pay-c", &charge_body(700, "m_1")).await;
                let replay = is_replay(&response);
                (
                    response.status(),
                    replay,
                    response.json::<Value>().await.unwrap(),
                )
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }

    let charged: Vec<_> = answers
        .iter()
        .filter(|(s, replay, _)| *s == StatusCode::OK && !replay)
        .collect();
    assert_eq!(charged.len(), 1, "{answers:?}");
    let charge = &charged[0].2;
    let mut in_progress = 0;
    for (status, _, body) in &answers {
        match *status {
            StatusCode::OK => assert_eq!(body, charge),
            StatusCode::CONFLICT => {
                assert_eq!(body, &json!({ "error": "request_in_progress" }));
                in_progress += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(in_progress > 0, "requests did not overlap: {answers:?}");
    let (_, stats) = get_json(&gw, &client, "/v1/stats").await;
    assert_eq!(stats["charges"], 1);
}

#[tokio::test]
async fn behaviour_can_be_changed_at_runtime() {
    let (gw, client) = start(config()).await;
    let response = client
        .put(gw.url("/v1/admin/behaviour"))
        .json(&json!({ "decline_rate": 1.0 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let expected = json!({ "latency_ms": 0, "decline_rate": 1.0, "error_rate": 0.0 });
    assert_eq!(response.json::<Value>().await.unwrap(), expected);
    assert_eq!(
        get_json(&gw, &client, "/v1/admin/behaviour").await.1,
        expected
    );

    let charge: Value = post_charge(&gw, &client, "pay-b", &charge_body(100, "m_1"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(charge["status"], "declined");

    for bad in [json!({ "error_rate": 1.5 }), json!({ "latency": 5 })] {
        let response = client
            .put(gw.url("/v1/admin/behaviour"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(
        get_json(&gw, &client, "/v1/admin/behaviour").await.1,
        expected
    );
}

/// Removes the data file when the test ends, pass or fail.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn charges_survive_a_restart_through_the_data_file() {
    let file =
        TempFile(std::env::temp_dir().join(format!("mock-gateway-{}.jsonl", uuid::Uuid::new_v4())));
    let with_file = || Config {
        data_file: Some(file.0.clone()),
        ..config()
    };
    let body = charge_body(4200, "m_1");

    let (gw, client) = start(with_file()).await;
    let first: Value = post_charge(&gw, &client, "pay-p", &body)
        .await
        .json()
        .await
        .unwrap();
    drop(gw);
    // A line cut short by a kill -9 in the middle of a write, never acknowledged.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file.0)
        .and_then(|mut f| std::io::Write::write_all(&mut f, br#"{"id":"ch_torn","idem"#))
        .unwrap();

    let (gw, client) = start(with_file()).await;
    assert_eq!(
        get_json(&gw, &client, "/v1/charges/pay-p").await,
        (StatusCode::OK, first.clone())
    );
    let replay = post_charge(&gw, &client, "pay-p", &body).await;
    assert!(is_replay(&replay));
    assert_eq!(replay.json::<Value>().await.unwrap(), first);
    let second: Value = post_charge(&gw, &client, "pay-q", &body)
        .await
        .json()
        .await
        .unwrap();
    let (_, stats) = get_json(&gw, &client, "/v1/stats").await;
    assert_eq!(
        (stats["charges"].as_u64(), stats["replays"].as_u64()),
        (Some(2), Some(1))
    );
    drop(gw);

    let (gw, client) = start(with_file()).await;
    assert_eq!(get_json(&gw, &client, "/v1/charges/pay-p").await.1, first);
    assert_eq!(get_json(&gw, &client, "/v1/charges/pay-q").await.1, second);
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let (gw, client) = start(config()).await;
    for path in ["/healthz", "/readyz"] {
        let response = client.get(gw.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    // Metrics are on their own listener only, not on the public port.
    let metrics = client.get(gw.metrics_url()).send().await.unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(metrics
        .text()
        .await
        .unwrap()
        .contains("http_requests_total"));
    let public = client.get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(public.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn void_closes_a_key_for_good_and_answers_an_existing_charge() {
    let (gw, client) = start(config()).await;
    // An unused key is voided; a later charge under it is refused and nothing is charged.
    let voided = post_void(&gw, &client, "k-void").await;
    assert_eq!(voided.status(), StatusCode::OK);
    let voided: Value = voided.json().await.unwrap();
    assert_eq!(voided["status"], "voided");
    let late = post_charge(&gw, &client, "k-void", &charge_body(100, "m")).await;
    assert_eq!(late.status(), StatusCode::CONFLICT);
    assert_eq!(
        late.json::<Value>().await.unwrap()["error"],
        "charge_voided"
    );
    // Voiding again is idempotent.
    let again: Value = post_void(&gw, &client, "k-void")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again, voided);

    // A charged key is not voided: the void answers the charge.
    let charged: Value = post_charge(&gw, &client, "k-paid", &charge_body(100, "m"))
        .await
        .json()
        .await
        .unwrap();
    let answer: Value = post_void(&gw, &client, "k-paid")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer, charged);

    let (_, stats) = get_json(&gw, &client, "/v1/stats").await;
    assert_eq!(
        (stats["charges"].as_u64(), stats["voided"].as_u64()),
        (Some(1), Some(1))
    );
}

#[tokio::test]
async fn a_key_in_flight_can_be_neither_looked_up_as_missing_nor_voided() {
    let mut cfg = config();
    cfg.latency_ms = 300;
    let (gw, client) = start(cfg).await;
    let gw = std::sync::Arc::new(gw);
    let in_flight = {
        let (gw, client) = (gw.clone(), client.clone());
        tokio::spawn(
            async move { post_charge(&gw, &client, "k-slow", &charge_body(100, "m")).await },
        )
    };
    // Wait until the gateway holds the key (the request is being processed).
    let start = std::time::Instant::now();
    let mut poll = tokio::time::interval(std::time::Duration::from_millis(5));
    loop {
        poll.tick().await;
        let (status, _) = get_json(&gw, &client, "/v1/charges/k-slow").await;
        if status == StatusCode::CONFLICT {
            break;
        }
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "request never in flight"
        );
    }
    let void = post_void(&gw, &client, "k-slow").await;
    assert_eq!(void.status(), StatusCode::CONFLICT);
    let charged: Value = in_flight.await.unwrap().json().await.unwrap();
    assert_eq!(charged["status"], "succeeded");
    let (status, after) = get_json(&gw, &client, "/v1/charges/k-slow").await;
    assert_eq!((status, after), (StatusCode::OK, charged));
}

/// Non-empty lines of the data file: one per record it holds.
fn records_in(file: &std::path::Path) -> usize {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .count()
}

async fn post_refund(
    gw: &Running,
    client: &Client,
    charge: &str,
    key: &str,
    amount: i64,
) -> reqwest::Response {
    client
        .post(gw.url(&format!("/v1/charges/{charge}/refunds")))
        .header("Idempotency-Key", key)
        .json(&json!({ "amount": amount }))
        .send()
        .await
        .unwrap()
}

/// One retention pass now, forgetting what had no activity since `cutoff`.
async fn forget_before(
    gw: &Running,
    cutoff: chrono::DateTime<chrono::Utc>,
) -> mock_gateway::retention::Pass {
    let gateway = std::sync::Arc::clone(&gw.gateway);
    tokio::task::spawn_blocking(move || gateway.forget_before(cutoff))
        .await
        .unwrap()
        .expect("retention pass")
}

#[tokio::test]
async fn charges_without_activity_for_the_retention_are_forgotten_and_the_file_shrinks() {
    let file =
        TempFile(std::env::temp_dir().join(format!("mock-gateway-{}.jsonl", uuid::Uuid::new_v4())));
    let with_file = || Config {
        data_file: Some(file.0.clone()),
        ..config()
    };
    let body = charge_body(4200, "m_1");
    let (gw, client) = start(with_file()).await;
    let mut first_ids = Vec::new();
    for i in 0..100 {
        let charge: Value = post_charge(&gw, &client, &format!("old-{i}"), &body)
            .await
            .json()
            .await
            .unwrap();
        first_ids.push(charge["id"].clone());
    }
    let cutoff = chrono::Utc::now();
    // After the cutoff: a new charge, and a refund that keeps old-0 alive.
    assert_eq!(
        post_charge(&gw, &client, "new", &body).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        post_refund(&gw, &client, "old-0", "re-0", 100)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(records_in(&file.0), 102);

    let pass = forget_before(&gw, cutoff).await;
    assert_eq!(
        (pass.forgotten_charges, pass.forgotten_refunds),
        (99, 0),
        "{pass:?}"
    );
    assert_eq!((pass.kept_charges, pass.kept_refunds), (2, 1), "{pass:?}");
    assert_eq!(pass.compacted, Some((102, 3)), "{pass:?}");
    assert_eq!(records_in(&file.0), 3);
    assert_eq!(
        forget_before(&gw, cutoff).await.forgotten_charges,
        0,
        "nothing twice"
    );
    let (_, stats) = get_json(&gw, &client, "/v1/stats").await;
    assert_eq!(
        (
            stats["forgotten_charges"].as_u64(),
            stats["retention_secs"].as_u64()
        ),
        (Some(99), Some(604_800))
    );

    assert_eq!(
        get_json(&gw, &client, "/v1/charges/old-5").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get_json(&gw, &client, "/v1/charges/old-0").await.1["id"],
        first_ids[0]
    );
    let (status, refunds) = get_json(&gw, &client, "/v1/charges/old-0/refunds").await;
    assert_eq!(
        (status, refunds["data"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(1))
    );
    // A refund of a forgotten charge is refused; the key itself is a new charge now, which
    // is why the retention must outlast every retry.
    let refused = post_refund(&gw, &client, "old-7", "re-7", 100).await;
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    let again = post_charge(&gw, &client, "old-5", &body).await;
    assert!(!is_replay(&again));
    let again: Value = again.json().await.unwrap();
    assert_ne!(again["id"], first_ids[5]);
    assert_eq!(records_in(&file.0), 4, "appends go to the rewritten file");
    drop(gw);

    let (gw, client) = start(with_file()).await;
    assert_eq!(
        get_json(&gw, &client, "/v1/charges/old-0").await.1["id"],
        first_ids[0]
    );
    assert_eq!(
        get_json(&gw, &client, "/v1/charges/old-5").await.1["id"],
        again["id"]
    );
    assert_eq!(
        get_json(&gw, &client, "/v1/charges/old-6").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get_json(&gw, &client, "/v1/charges/new").await.0,
        StatusCode::OK
    );
    let replayed = post_refund(&gw, &client, "old-0", "re-0", 100).await;
    assert!(
        is_replay(&replayed),
        "the kept refund is still answered from its key"
    );
}
