//! Refunds against the gateway started in-process, over HTTP: full and partial, replays and
//! reused keys, refusals, outages, keys in flight, the merchant that declines refunds, a
//! hundred concurrent refunds of one charge, and a restart from the data file.

use mock_gateway::{spawn, Config, Running};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(data_file: Option<PathBuf>) -> Config {
    Config {
        bind: "127.0.0.1:0".parse().unwrap(),
        metrics_bind: "127.0.0.1:0".parse().unwrap(),
        latency_ms: 0,
        decline_rate: 0.0,
        error_rate: 0.0,
        seed: Some(7),
        data_file,
        retention_secs: 604_800,
        retention_interval_secs: 60,
    }
}

async fn start(data_file: Option<PathBuf>) -> (Running, Client) {
    (
        spawn(config(data_file)).await.expect("gateway starts"),
        Client::new(),
    )
}

async fn post_charge(
    gw: &Running,
    http: &Client,
    key: &str,
    amount: i64,
    merchant: &str,
) -> reqwest::Response {
    http.post(gw.url("/v1/charges"))
        .header("Idempotency-Key", key)
        .json(&json!({"amount": amount, "currency": "EUR", "merchant_id": merchant}))
        .send()
        .await
        .unwrap()
}

async fn charge(gw: &Running, http: &Client, key: &str, amount: i64, merchant: &str) -> Value {
    let r = post_charge(gw, http, key, amount, merchant).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// `POST /v1/charges/{charge}/refunds` with refund key `key`: (status, replayed, body).
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
    let replayed = r
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    (r.status(), replayed, r.json().await.unwrap())
}

async fn get(gw: &Running, http: &Client, path: &str) -> (StatusCode, Value) {
    let r = http.get(gw.url(path)).send().await.unwrap();
    (r.status(), r.json().await.unwrap())
}

async fn set_behaviour(gw: &Running, http: &Client, patch: Value) {
    let r = http
        .put(gw.url("/v1/admin/behaviour"))
        .json(&patch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{patch}");
}

/// The refund keys listed for a charge, oldest first.
async fn listed_keys(gw: &Running, http: &Client, charge: &str) -> Vec<String> {
    let (status, list) = get(gw, http, &format!("/v1/charges/{charge}/refunds")).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["idempotency_key"].as_str().unwrap().to_owned())
        .collect()
}

/// (refunds, refunds_declined, refunded_amount) from `/v1/stats`.
async fn refund_stats(gw: &Running, http: &Client) -> (Value, Value, Value) {
    let (_, stats) = get(gw, http, "/v1/stats").await;
    (
        stats["refunds"].clone(),
        stats["refunds_declined"].clone(),
        stats["refunded_amount"].clone(),
    )
}

fn exceeds(refundable: i64) -> Value {
    json!({"error": "refund_exceeds_charge", "refundable": refundable})
}

/// Waits (polling, bounded) until `probe` says yes.
async fn until<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    let mut poll = tokio::time::interval(Duration::from_millis(5));
    loop {
        poll.tick().await;
        if probe().await {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "never {what}");
    }
}

#[tokio::test]
async fn a_full_refund_is_made_once_and_listed() {
    let (gw, http) = start(None).await;
    let ch = charge(&gw, &http, "pay-1", 1_250, "shop").await;

    let (status, replayed, made) = refund(&gw, &http, "pay-1", "re-1", 1_250).await;
    assert_eq!((status, replayed), (StatusCode::OK, false));
    let fields: Vec<&str> = made
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        [
            "amount",
            "charge_id",
            "charge_key",
            "created_at",
            "currency",
            "decline_code",
            "id",
            "idempotency_key",
            "status"
        ]
    );
    let id = made["id"].as_str().unwrap();
    assert!(id.starts_with("re_") && id.len() == 35, "{id}");
    assert_eq!(
        (
            &made["idempotency_key"],
            &made["charge_key"],
            &made["charge_id"]
        ),
        (&json!("re-1"), &json!("pay-1"), &ch["id"])
    );
    assert_eq!(
        (
            &made["status"],
            &made["amount"],
            &made["currency"],
            &made["decline_code"]
        ),
        (
            &json!("succeeded"),
            &json!(1_250),
            &json!("EUR"),
            &Value::Null
        )
    );

    // Nothing is left: any other refund, however small, is refused.
    let (status, _, body) = refund(&gw, &http, "pay-1", "re-2", 1).await;
    assert_eq!(
        (status, body),
        (StatusCode::UNPROCESSABLE_ENTITY, exceeds(0))
    );

    let (status, list) = get(&gw, &http, "/v1/charges/pay-1/refunds").await;
    assert_eq!((status, list), (StatusCode::OK, json!({ "data": [made] })));
    assert_eq!(
        refund_stats(&gw, &http).await,
        (json!(1), json!(0), json!(1_250))
    );
    let metrics = http
        .get(gw.metrics_url())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        r#"gateway_refund_requests_total{result="succeeded"}"#,
        r#"gateway_refund_requests_total{result="exceeds_charge"}"#,
        r#"gateway_refund_duration_seconds_count{result="succeeded"}"#,
    ] {
        assert!(metrics.contains(series), "{series} missing");
    }
}

#[tokio::test]
async fn partial_refunds_up_to_the_charge_replays_and_reused_keys() {
    let (gw, http) = start(None).await;
    charge(&gw, &http, "pay-1", 1_000, "shop").await;

    let (status, replayed, first) = refund(&gw, &http, "pay-1", "re-1", 300).await;
    assert_eq!(
        (status, replayed, &first["amount"]),
        (StatusCode::OK, false, &json!(300))
    );
    // The same key and amount: the same refund, marked as a replay; never a second refund.
    let (status, replayed, again) = refund(&gw, &http, "pay-1", "re-1", 300).await;
    assert_eq!((status, replayed, &again), (StatusCode::OK, true, &first));
    // The same key for another amount, or for another charge, is refused.
    charge(&gw, &http, "pay-other", 1_000, "shop").await;
    for (charge_key, amount) in [("pay-1", 301), ("pay-other", 300)] {
        let (status, _, body) = refund(&gw, &http, charge_key, "re-1", amount).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": "idempotency_key_reused"})
            ),
            "{charge_key} {amount}"
        );
    }

    let (status, _, _) = refund(&gw, &http, "pay-1", "re-2", 300).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = refund(&gw, &http, "pay-1", "re-3", 500).await;
    assert_eq!(
        (status, body),
        (StatusCode::UNPROCESSABLE_ENTITY, exceeds(400))
    );
    // A refused refund is not recorded: its key is free for what is left.
    let (status, replayed, last) = refund(&gw, &http, "pay-1", "re-3", 400).await;
    assert_eq!(
        (status, replayed, &last["amount"]),
        (StatusCode::OK, false, &json!(400))
    );

    assert_eq!(
        listed_keys(&gw, &http, "pay-1").await,
        ["re-1", "re-2", "re-3"]
    );
    assert!(listed_keys(&gw, &http, "pay-other").await.is_empty());
    assert_eq!(
        refund_stats(&gw, &http).await,
        (json!(3), json!(0), json!(1_000))
    );
}

#[tokio::test]
async fn unknown_declined_and_voided_charges_are_not_refundable() {
    let (gw, http) = start(None).await;
    charge(&gw, &http, "pay-d", 500, "test_decline").await;
    let voided = http
        .post(gw.url("/v1/charges/pay-v/void"))
        .send()
        .await
        .unwrap();
    assert_eq!(voided.status(), StatusCode::OK);
    for charge_key in ["nope", "pay-d", "pay-v"] {
        let (status, _, body) = refund(&gw, &http, charge_key, "re-1", 1).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::CONFLICT,
                json!({"error": "charge_not_refundable"})
            ),
            "{charge_key}"
        );
    }
    assert_eq!(
        get(&gw, &http, "/v1/charges/nope/refunds").await,
        (StatusCode::NOT_FOUND, json!({"error": "not_found"}))
    );
    assert!(listed_keys(&gw, &http, "pay-d").await.is_empty());
    assert_eq!(
        refund_stats(&gw, &http).await,
        (json!(0), json!(0), json!(0))
    );
}

#[tokio::test]
async fn missing_key_or_bad_body_is_400() {
    let (gw, http) = start(None).await;
    charge(&gw, &http, "pay-1", 100, "shop").await;
    let r = http
        .post(gw.url("/v1/charges/pay-1/refunds"))
        .json(&json!({"amount": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"error": "idempotency_key_missing"})
    );
    for amount in [0, -5] {
        let (status, _, body) = refund(&gw, &http, "pay-1", "re-1", amount).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_request", "detail": "amount must be positive"})
            )
        );
    }
    let r = http
        .post(gw.url("/v1/charges/pay-1/refunds"))
        .header("Idempotency-Key", "re-1")
        .json(&json!({"amount": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");
    assert!(listed_keys(&gw, &http, "pay-1").await.is_empty());
}

#[tokio::test]
async fn the_refund_declining_merchant_is_charged_and_its_refunds_declined() {
    let (gw, http) = start(None).await;
    // Its charges succeed whatever the decline rate.
    set_behaviour(&gw, &http, json!({"decline_rate": 1.0})).await;
    let ch = charge(&gw, &http, "pay-1", 900, "test_refund_decline").await;
    assert_eq!(ch["status"], "succeeded");
    let (status, _, declined) = refund(&gw, &http, "pay-1", "re-1", 900).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            &declined["status"],
            &declined["decline_code"],
            &declined["amount"]
        ),
        (&json!("declined"), &json!("refund_declined"), &json!(900))
    );
    let (_, replayed, again) = refund(&gw, &http, "pay-1", "re-1", 900).await;
    assert!(replayed);
    assert_eq!(again, declined);
    // A declined refund moved no money: the whole charge can still be asked for.
    let (status, _, second) = refund(&gw, &http, "pay-1", "re-2", 900).await;
    assert_eq!(
        (status, &second["status"]),
        (StatusCode::OK, &json!("declined"))
    );
    assert_eq!(listed_keys(&gw, &http, "pay-1").await, ["re-1", "re-2"]);
    assert_eq!(
        refund_stats(&gw, &http).await,
        (json!(0), json!(2), json!(0))
    );
}

#[tokio::test]
async fn an_outage_records_nothing_and_frees_the_key_and_the_amount() {
    let (gw, http) = start(None).await;
    charge(&gw, &http, "pay-1", 100, "shop").await;
    set_behaviour(&gw, &http, json!({"error_rate": 1.0})).await;
    let (status, _, body) = refund(&gw, &http, "pay-1", "re-1", 100).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "unavailable"})
        )
    );
    assert!(listed_keys(&gw, &http, "pay-1").await.is_empty());

    set_behaviour(&gw, &http, json!({"error_rate": 0.0})).await;
    let (status, replayed, made) = refund(&gw, &http, "pay-1", "re-1", 100).await;
    assert_eq!(
        (status, replayed, &made["status"]),
        (StatusCode::OK, false, &json!("succeeded"))
    );
    let (_, stats) = get(&gw, &http, "/v1/stats").await;
    assert_eq!(
        (
            &stats["unavailable"],
            &stats["refunds"],
            &stats["refunded_amount"]
        ),
        (&json!(1), &json!(1), &json!(100)),
        "{stats}"
    );
}

#[tokio::test]
async fn a_refund_in_flight_holds_its_key_and_its_amount() {
    let (gw, http) = start(None).await;
    charge(&gw, &http, "pay-1", 100, "shop").await;
    set_behaviour(&gw, &http, json!({"latency_ms": 500})).await;
    let gw = Arc::new(gw);
    let slow = {
        let (gw, http) = (gw.clone(), http.clone());
        tokio::spawn(async move { refund(&gw, &http, "pay-1", "re-slow", 30).await })
    };
    // More than the charge is always refused (nothing claimed), and says what is left: 70
    // once the slow refund holds its 30.
    until("reserved", || async {
        let (status, _, body) = refund(&gw, &http, "pay-1", "re-probe", 101).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        body == exceeds(70)
    })
    .await;
    let (status, _, body) = refund(&gw, &http, "pay-1", "re-slow", 30).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::CONFLICT,
            json!({"error": "request_in_progress"})
        )
    );
    assert!(
        listed_keys(&gw, &http, "pay-1").await.is_empty(),
        "recorded too early"
    );

    let (status, replayed, made) = slow.await.unwrap();
    assert_eq!(
        (status, replayed, &made["amount"]),
        (StatusCode::OK, false, &json!(30))
    );
    let (status, _, body) = refund(&gw, &http, "pay-1", "re-probe", 101).await;
    assert_eq!(
        (status, body),
        (StatusCode::UNPROCESSABLE_ENTITY, exceeds(70))
    );
}

#[tokio::test]
async fn retention_keeps_a_charge_whose_refund_is_in_flight() {
    let (gw, http) = start(None).await;
    charge(&gw, &http, "busy", 100, "shop").await;
    // Refunds now take a minute on average (seeded, so the same every run).
    set_behaviour(&gw, &http, json!({"latency_ms": 60_000})).await;
    let gw = Arc::new(gw);
    let slow = {
        let (gw, http) = (gw.clone(), http.clone());
        tokio::spawn(async move { refund(&gw, &http, "busy", "re-busy", 30).await })
    };
    until("reserved", || async {
        refund(&gw, &http, "busy", "re-probe", 101).await.2 == exceeds(70)
    })
    .await;

    let cutoff = chrono::Utc::now() + chrono::Duration::days(1);
    let pass = {
        let gateway = Arc::clone(&gw.gateway);
        tokio::task::spawn_blocking(move || gateway.forget_before(cutoff))
            .await
            .unwrap()
            .expect("retention pass")
    };
    assert_eq!(
        (pass.forgotten_charges, pass.kept_charges),
        (0, 1),
        "{pass:?}"
    );
    assert_eq!(get(&gw, &http, "/v1/charges/busy").await.0, StatusCode::OK);
    slow.abort();
}

#[tokio::test]
async fn a_charge_in_flight_is_not_refused_as_unrefundable() {
    let (gw, http) = start(None).await;
    set_behaviour(&gw, &http, json!({"latency_ms": 500})).await;
    let gw = Arc::new(gw);
    let slow = {
        let (gw, http) = (gw.clone(), http.clone());
        tokio::spawn(async move { post_charge(&gw, &http, "pay-slow", 100, "shop").await })
    };
    until("charging", || async {
        get(&gw, &http, "/v1/charges/pay-slow").await.0 == StatusCode::CONFLICT
    })
    .await;
    let (status, _, body) = refund(&gw, &http, "pay-slow", "re-1", 100).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::CONFLICT,
            json!({"error": "request_in_progress"})
        )
    );
    assert_eq!(slow.await.unwrap().status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_cent_refunds_of_fifty_cents_refund_exactly_fifty() {
    let (gw, http) = start(None).await;
    charge(&gw, &http, "pay-1", 50, "shop").await;
    let gw = Arc::new(gw);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let (gw, http) = (gw.clone(), http.clone());
        tasks.spawn(async move { refund(&gw, &http, "pay-1", &format!("re-{i}"), 1).await });
    }
    let answers = tasks.join_all().await;
    let mut made = 0;
    for (status, replayed, body) in &answers {
        match *status {
            StatusCode::OK if !replayed && body["status"] == "succeeded" => made += 1,
            StatusCode::UNPROCESSABLE_ENTITY => {
                assert_eq!(body["error"], "refund_exceeds_charge", "{body}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((made, answers.len() - made), (50, 50));
    assert_eq!(listed_keys(&gw, &http, "pay-1").await.len(), 50);
    assert_eq!(
        refund_stats(&gw, &http).await,
        (json!(50), json!(0), json!(50))
    );
    let (status, _, body) = refund(&gw, &http, "pay-1", "re-late", 1).await;
    assert_eq!(
        (status, body),
        (StatusCode::UNPROCESSABLE_ENTITY, exceeds(0))
    );
}

/// Removes the data file when the test ends, pass or fail.
struct TempFile(PathBuf);

impl TempFile {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!(
            "mock-gateway-refunds-{}.jsonl",
            uuid::Uuid::new_v4()
        )))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn refunds_are_remembered_across_a_restart() {
    let file = TempFile::new();
    let (gw, http) = start(Some(file.0.clone())).await;
    charge(&gw, &http, "pay-1", 100, "shop").await;
    let (_, _, first) = refund(&gw, &http, "pay-1", "re-1", 70).await;
    charge(&gw, &http, "pay-2", 40, "test_refund_decline").await;
    let (_, _, declined) = refund(&gw, &http, "pay-2", "re-2", 40).await;
    assert_eq!(declined["status"], "declined");
    drop(gw);

    let (gw, http) = start(Some(file.0.clone())).await;
    let (status, replayed, again) = refund(&gw, &http, "pay-1", "re-1", 70).await;
    assert_eq!((status, replayed, &again), (StatusCode::OK, true, &first));
    let (_, replayed, again) = refund(&gw, &http, "pay-2", "re-2", 40).await;
    assert_eq!((replayed, &again), (true, &declined));
    let (status, _, body) = refund(&gw, &http, "pay-1", "re-3", 31).await;
    assert_eq!(
        (status, body),
        (StatusCode::UNPROCESSABLE_ENTITY, exceeds(30))
    );
    assert_eq!(
        get(&gw, &http, "/v1/charges/pay-1/refunds").await,
        (StatusCode::OK, json!({ "data": [first] }))
    );
    let (_, stats) = get(&gw, &http, "/v1/stats").await;
    assert_eq!(
        (
            &stats["charges"],
            &stats["refunds"],
            &stats["refunds_declined"],
            &stats["refunded_amount"]
        ),
        (&json!(2), &json!(1), &json!(1), &json!(70)),
        "{stats}"
    );
    // The rest, after the restart, and the total still holds after a second one.
    let (status, _, _) = refund(&gw, &http, "pay-1", "re-3", 30).await;
    assert_eq!(status, StatusCode::OK);
    drop(gw);
    let (gw, http) = start(Some(file.0.clone())).await;
    let (_, _, body) = refund(&gw, &http, "pay-1", "re-4", 1).await;
    assert_eq!(body, exceeds(0));
    assert_eq!(listed_keys(&gw, &http, "pay-1").await, ["re-1", "re-3"]);
    assert_eq!(
        refund_stats(&gw, &http).await,
        (json!(2), json!(1), json!(100))
    );
}

#[tokio::test]
async fn a_data_file_written_before_refunds_existed_still_loads() {
    let file = TempFile::new();
    // A charge an hour old, well inside the retention: a fixed date would age past it and
    // be forgotten by the gateway's first retention pass, racing the refund below.
    let created_at = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    std::fs::write(
        &file.0,
        format!(
            concat!(
                r#"{{"id":"ch_old","idempotency_key":"pay-old","status":"succeeded","amount":500,"#,
                r#""currency":"EUR","merchant_id":"shop","reference":null,"decline_code":null,"#,
                r#""created_at":"{}"}}"#,
                "\n"
            ),
            created_at
        ),
    )
    .unwrap();
    let (gw, http) = start(Some(file.0.clone())).await;
    assert_eq!(
        get(&gw, &http, "/v1/charges/pay-old").await.1["id"],
        "ch_old"
    );
    let (status, _, made) = refund(&gw, &http, "pay-old", "re-1", 500).await;
    assert_eq!(
        (status, &made["charge_id"]),
        (StatusCode::OK, &json!("ch_old"))
    );
    let (_, stats) = get(&gw, &http, "/v1/stats").await;
    assert_eq!(
        (&stats["charges"], &stats["refunded_amount"]),
        (&json!(1), &json!(500))
    );
}
