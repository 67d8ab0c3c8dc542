//! The HTTP contract of API.md, against a real PostgreSQL (a fresh database per test).

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

async fn problem(r: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(r.status(), status);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status.as_u16());
    assert!(body["title"].is_string() && body["detail"].is_string() && body["type"].is_string());
    body
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn wallet_lifecycle_create_deposit_and_read(pool: PgPool) {
    let app = spawn(pool, Opts::default()).await;
    let id = app.create_wallet("alice", "EUR").await;
    let w: Value = app
        .get(&format!("/v1/wallets/{id}"), &token("alice"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(w["owner_id"], "alice");
    assert_eq!(w["currency"], "EUR");
    assert_eq!(
        (w["available"].as_i64(), w["held"].as_i64()),
        (Some(0), Some(0))
    );

    let r = app
        .post(
            &format!("/v1/wallets/{id}/deposits"),
            &admin_token(),
            Some("dep-1"),
            &json!({"amount": 5000, "currency": "EUR", "reference": "wire 7"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let d: Value = r.json().await.unwrap();
    assert_eq!(d["balance"], json!({"available": 5000, "held": 0}));
    assert_eq!(d["wallet_id"], id.as_str());
    assert_eq!(app.balance("alice", &id).await, (5000, 0));

    let tx: Value = app
        .get(&format!("/v1/wallets/{id}/transactions"), &token("alice"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tx["data"][0]["kind"], "deposit");
    assert_eq!(tx["data"][0]["available_after"], 5000);
    app.stop().await;
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn accepting_a_payment_holds_funds_and_writes_payment_ledger_and_outbox_together(
    pool: PgPool,
) {
    let app = spawn(pool.clone(), Opts::default()).await;
    let id = app.create_wallet("alice", "EUR").await;
    app.deposit(&id, 10_000, "EUR").await;
    let r = app.pay("alice", &id, 2_500, "m_1").await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["status"], "pending");
    assert_eq!(p["failure_reason"], Value::Null);
    assert_eq!(p["finalized_at"], Value::Null);
    assert_eq!(app.balance("alice", &id).await, (7_500, 2_500));

    let (payload,): (Value,) =
        sqlx::query_as("SELECT payload FROM outbox WHERE aggregate_id = $1::uuid")
            .bind(p["id"].as_str().unwrap())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(payload["type"], "payment.requested");
    assert_eq!(payload["version"], 1);
    assert_eq!(payload["payment"]["amount"], 2_500);
    assert_eq!(payload["payment"]["merchant_id"], "m_1");
    let kinds: Vec<String> = sqlx::query_scalar("SELECT kind FROM ledger_entries ORDER BY seq")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(kinds, ["deposit", "hold"]);

    assert_eq!(app.payment("alice", p["id"].as_str().unwrap()).await, p);
    assert_money_conserved(&pool).await;
    app.stop().await;
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn insufficient_funds_is_refused_and_changes_nothing(pool: PgPool) {
    let app = spawn(pool.clone(), Opts::default()).await;
    let id = app.create_wallet("alice", "EUR").await;
    app.deposit(&id, 1_000, "EUR").await;
    let body = problem(
        app.pay("alice", &id, 1_001, "m").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "insufficient_funds",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("1000"));
    assert_eq!(app.balance("alice", &id).await, (1_000, 0));
    assert_eq!(count(&pool, "payments").await, 0);
    // Only the deposit's wallet.deposited event: no payment request, no alert.
    assert_eq!(count(&pool, "outbox WHERE channel <> 'events'").await, 0);
    app.stop().await;
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn concurrent_payments_never_overdraw_a_wallet(pool: PgPool) {
    let app = spawn(pool.clone(), Opts::default()).await;
    let id = app.create_wallet("alice", "EUR").await;
    app.deposit(&id, 1_000, "EUR").await;
    let attempts = (0..40).map(|_| app.pay("alice", &id, 100, "m"));
    let statuses: Vec<StatusCode> = futures_util::future::join_all(attempts)
        .await
        .iter()
        .map(|r| r.status())
        .collect();
    let accepted = statuses
        .iter()
        .filter(|s| **s == StatusCode::ACCEPTED)
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNPROCESSABLE_ENTITY)
        .count();
    assert_eq!((accepted, refused), (10, 30), "{statuses:?}");
    assert_eq!(app.balance("alice", &id).await, (0, 1_000));
    assert_money_conserved(&pool).await;
    app.stop().await;
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn the_database_refuses_a_negative_balance_even_if_code_were_wrong(pool: PgPool) {
    let app = spawn(pool.clone(), Opts::default()).await;
    let id = app.create_wallet("alice", "EUR").await;
    let err = sqlx::query("UPDATE wallets SET available = available - 1 WHERE id = $1::uuid")
        .bind(&id)
        .execute(&pool)
        .await
        .unwrap_err();
    let db = err.as_database_error().expect("a database error");
    assert_eq!(db.constraint(), Some("wallets_available_non_negative"));
    app.stop().await;
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn bad_payment_requests_get_precise_errors_and_change_nothing(pool: PgPool) {
    let app = spawn(pool.clone(), Opts::default()).await;
    let id = app.create_wallet("alice", "EUR").await;
    let usd = app.create_wallet("alice", "USD").await;
    app.deposit(&id, 1_000, "EUR").await;
    let alice = token("alice");
    let pay = |body: Value| {
        let key = uuid::Uuid::new_v4().to_string();
        let app = &app;
        let alice = alice.clone();
        async move { app.post("/v1/payments", &alice, Some(&key), &body).await }
    };
    let base = json!({"wallet_id": id, "amount": 100, "currency": "EUR", "merchant_id": "m"});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    for (body, status, code) in [
        (with("amount", json!(0)), 422, "validation_failed"),
        (with("amount", json!(-5)), 422, "validation_failed"),
        (
            with("amount", json!(1_000_000_000_001i64)),
            422,
            "validation_failed",
        ),
        (with("amount", json!(1e30)), 422, "validation_failed"),
        (with("amount", json!(10.5)), 422, "validation_failed"),
        (with("amount", json!("100")), 400, "malformed_request"),
        (with("currency", json!("XYZ")), 422, "validation_failed"),
        (with("currency", json!("eur")), 422, "validation_failed"),
        (with("currency", json!("USD")), 422, "currency_mismatch"),
        (with("merchant_id", json!("")), 422, "validation_failed"),
        (
            with("merchant_id", json!("m".repeat(65))),
            422,
            "validation_failed",
        ),
        (
            with("description", json!("d".repeat(501))),
            422,
            "validation_failed",
        ),
        (
            with("wallet_id", json!("not-a-uuid")),
            422,
            "validation_failed",
        ),
        (
            with("wallet_id", json!(uuid::Uuid::now_v7())),
            404,
            "wallet_not_found",
        ),
        (with("wallet_id", json!(usd)), 422, "currency_mismatch"),
        (json!({"amount": 100}), 422, "validation_failed"),
        (json!([1, 2]), 400, "malformed_request"),
    ] {
        let r = pay(body.clone()).await;
        let status = StatusCode::from_u16(status).unwrap();
        assert_eq!(r.status(), status, "for {body}");
        problem(r, status, code).await;
    }
    // Not JSON at all.
    let r = app
        .http
        .post(format!("{}/v1/payments", app.url))
        .bearer_auth(&alice)
        .header("Idempotency-Key", "raw-1")
        .body("{\"amount\": ")
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::BAD_REQUEST, "malformed_request").await;
    // Oversized body.
    let big = json!({"wallet_id": id, "amount": 1, "currency": "EUR", "merchant_id": "m", "description": "x".repeat(70_000)});
    problem(
        pay(big).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    // No idempotency key.
    problem(
        app.post("/v1/payments", &alice, None, &base).await,
        StatusCode::BAD_REQUEST,
        "idempotency_key_missing",
    )
    .await;
    // A key that is not visible ASCII.
    problem(
        app.post("/v1/payments", &alice, Some(&"k".repeat(256)), &base)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;

    assert_eq!(count(&pool, "payments").await, 0);
    // Only the deposit's wallet.deposited event: no payment request, no alert.
    assert_eq!(count(&pool, "outbox WHERE channel <> 'events'").await, 0);
    assert_eq!(app.balance("alice", &id).await, (1_000, 0));
    app.stop().await;
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn authentication_and_ownership(pool: PgPool) {
    let app = spawn(pool.clone(), Opts::default()).await;
    let id = app.create_wallet("alice", "EUR").await;
    app.deposit(&id, 1_000, "EUR").await;
    let (_, pid) = app.pay_id("alice", &id, 100, "m").await;

    // No token, garbage, wrong secret, expired.
    let r = app.get_anonymous(&format!("/v1/wallets/{id}")).await;
    problem(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    problem(
        app.get(&format!("/v1/wallets/{id}"), "garbage").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    let forged = shared::auth::mint("some-other-secret-0123456789", "alice", true, 600);
    problem(
        app.get(&format!("/v1/wallets/{id}"), &forged).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;

    // Another principal sees nothing of alice's, and learns nothing from the answer.
    let bob = token("bob");
    for path in [
        format!("/v1/wallets/{id}"),
        format!("/v1/wallets/{id}/balance"),
        format!("/v1/wallets/{id}/transactions"),
    ] {
        problem(
            app.get(&path, &bob).await,
            StatusCode::NOT_FOUND,
            "wallet_not_found",
        )
        .await;
    }
    problem(
        app.get(&format!("/v1/payments/{pid}"), &bob).await,
        StatusCode::NOT_FOUND,
        "payment_not_found",
    )
    .await;
    let list: Value = app.get("/v1/payments", &bob).await.json().await.unwrap();
    assert_eq!(list["data"], json!([]));
    problem(
        app.pay("bob", &id, 100, "m").await,
        StatusCode::NOT_FOUND,
        "wallet_not_found",
    )
    .await;

    // Only admin deposits; admin reads everything.
    let r = app
        .post(
            &format!("/v1/wallets/{id}/deposits"),
            &token("alice"),
            Some("d"),
            &json!({"amount": 5, "currency": "EUR"}),
        )
        .await;
    problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    assert_eq!(
        app.get(&format!("/v1/payments/{pid}"), &admin_token())
            .await
            .status(),
        StatusCode::OK
    );
    let r = app
        .post(
            &format!("/v1/wallets/{id}/deposits"),
            &admin_token(),
            Some("d2"),
            &json!({"amount": 5, "currency": "USD"}),
        )
        .await;
    problem(r, StatusCode::UNPROCESSABLE_ENTITY, "currency_mismatch").await;
    let r = app
        .post(
            &format!("/v1/wallets/{}/deposits", uuid::Uuid::now_v7()),
            &admin_token(),
            Some("d3"),
            &json!({"amount": 5, "currency": "EUR"}),
        )
        .await;
    problem(r, StatusCode::NOT_FOUND, "wallet_not_found").await;
    assert_eq!(app.balance("alice", &id).await, (900, 100));
    app.stop().await;
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn idempotent_retries_replay_the_first_response(pool: PgPool) {
    let app = spawn(pool.clone(), Opts::default()).await;
    let id = app.create_wallet("alice", "EUR").await;
    app.deposit(&id, 1_000, "EUR").await;
    let alice = token("alice");
    let body = json!({"wallet_id": id, "amount": 300, "currency": "EUR", "merchant_id": "m"});
    let first = app.post("/v1/payments", &alice, Some("key-1"), &body).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();

    // Same request, keys reordered: the same payment, flagged as a replay.
    let reordered: Value = serde_json::from_str(&format!(
        r#"{{"merchant_id":"m","currency":"EUR","amount":300,"wallet_id":"{id}"}}"#
    ))
    .unwrap();
    let again = app
        .post("/v1/payments", &alice, Some("key-1"), &reordered)
        .await;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    assert_eq!(count(&pool, "payments").await, 1);
    assert_eq!(app.balance("alice", &id).await, (700, 300));

    // Same key, different body.
    let other = json!({"wallet_id": id, "amount": 301, "currency": "EUR", "merchant_id": "m"});
    problem(
        app.post("/v1/payments", &alice, Some("key-1"), &other)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;

    // Keys are per principal: bob's "key-1" is his own.
    let bob_wallet = app.create_wallet("bob", "EUR").await;
    app.deposit(&bob_wallet, 50, "EUR").await;
    let bob_body =
        json!({"wallet_id": bob_wallet, "amount": 50, "currency": "EUR", "merchant_id": "m"});
    assert_eq!(
        app.post("/v1/payments", &token("bob"), Some("key-1"), &bob_body)
            .await
            .status(),
        StatusCode::ACCEPTED
    );

    // A business refusal is replayed too, even after funds arrive.
    let big = json!({"wallet_id": id, "amount": 5_000, "currency": "EUR", "merchant_id": "m"});
    let refused = problem(
        app.post("/v1/payments", &alice, Some("key-2"), &big).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "insufficient_funds",
    )
    .await;
    app.deposit(&id, 10_000, "EUR").await;
    let replay = app.post("/v1/payments", &alice, Some("key-2"), &big).await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(
        problem(
            replay,
            StatusCode::UNPROCESSABLE_ENTITY,
            "insufficient_funds"
        )
        .await,
        refused
    );
    assert_eq!(count(&pool, "payments").await, 2);
    app.stop().await;
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn a_key_in_flight_answers_409(pool: PgPool) {
    let app = spawn(pool.clone(), Opts::default()).await;
    let id = app.create_wallet("alice", "EUR").await;
    app.deposit(&id, 1_000, "EUR").await;
    // Another transaction holds the key, exactly as a first request still executing does.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || chr(31) || $2, 0))")
        .bind("alice")
        .bind("busy-key")
        .execute(&mut *holder)
        .await
        .unwrap();
    let body = json!({"wallet_id": id, "amount": 100, "currency": "EUR", "merchant_id": "m"});
    problem(
        app.post("/v1/payments", &token("alice"), Some("busy-key"), &body)
            .await,
        StatusCode::CONFLICT,
        "idempotency_key_in_use",
    )
    .await;
    holder.rollback().await.unwrap();
    // Once it is released, the key works, and the 409 was not stored.
    assert_eq!(
        app.post("/v1/payments", &token("alice"), Some("busy-key"), &body)
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    app.stop().await;
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn lists_paginate_newest_first(pool: PgPool) {
    let app = spawn(pool.clone(), Opts::default()).await;
    let id = app.create_wallet("alice", "EUR").await;
    app.deposit(&id, 10_000, "EUR").await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.pay_id("alice", &id, 10, "m").await.1);
    }
    ids.reverse();
    // No status check per page here, as before: the ids are what is compared.
    let seen: Vec<String> = app
        .all_pages(
            "alice",
            &format!("/v1/payments?wallet_id={id}&limit=2"),
            false,
        )
        .await
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, ids);
    let pending: Value = app
        .get("/v1/payments?status=pending&limit=100", &token("alice"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(pending["data"].as_array().unwrap().len(), 5);
    let none: Value = app
        .get("/v1/payments?status=failed", &token("alice"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(none["data"], json!([]));
    for bad in [
        "/v1/payments?limit=0",
        "/v1/payments?limit=101",
        "/v1/payments?status=odd",
        "/v1/payments?cursor=zzz",
        "/v1/payments?wallet_id=x",
    ] {
        problem(
            app.get(bad, &token("alice")).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
    }
    let tx: Value = app
        .get(
            &format!("/v1/wallets/{id}/transactions?limit=4"),
            &token("alice"),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tx["data"].as_array().unwrap().len(), 4);
    let rest: Value = app
        .get(
            &format!(
                "/v1/wallets/{id}/transactions?limit=4&cursor={}",
                tx["next_cursor"].as_str().unwrap()
            ),
            &token("alice"),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rest["data"].as_array().unwrap().len(), 2);
    assert_eq!(rest["data"][1]["kind"], "deposit");
    assert_eq!(rest["next_cursor"], Value::Null);
    app.stop().await;
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn operational_endpoints_and_unknown_routes(pool: PgPool) {
    let app = spawn(pool, Opts::default()).await;
    let r = app
        .http
        .get(format!("{}/healthz", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .http
        .get(format!("{}/readyz", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let doc: Value = app
        .http
        .get(format!("{}/openapi.json", app.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    // Metrics are served on their own listener, not on the API's port.
    let r = app.http.get(&app.metrics_url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("http_requests_total"));
    problem(
        app.http
            .get(format!("{}/metrics", app.url))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    problem(
        app.get("/v1/nothing-here", &token("alice")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let r = app
        .http
        .delete(format!("{}/v1/payments", app.url))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    app.stop().await;
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn a_deposit_past_the_largest_balance_is_refused_cleanly(pool: PgPool) {
    let app = spawn(pool.clone(), Opts::default()).await;
    let id = app.create_wallet("alice", "EUR").await;
    sqlx::query("UPDATE wallets SET available = 9223372036854775797 WHERE id = $1::uuid")
        .bind(&id)
        .execute(&pool)
        .await
        .unwrap();
    let body = json!({"amount": 11, "currency": "EUR"});
    let first = problem(
        app.post(
            &format!("/v1/wallets/{id}/deposits"),
            &admin_token(),
            Some("huge"),
            &body,
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    // Stored like any business outcome, and nothing moved.
    let again = app
        .post(
            &format!("/v1/wallets/{id}/deposits"),
            &admin_token(),
            Some("huge"),
            &body,
        )
        .await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    assert_eq!(
        app.balance("alice", &id).await,
        (9_223_372_036_854_775_797, 0)
    );
    assert_eq!(count(&pool, "ledger_entries").await, 0);
    app.stop().await;
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn malformed_path_ids_are_plain_not_found(pool: PgPool) {
    let app = spawn(pool, Opts::default()).await;
    problem(
        app.get("/v1/wallets/not-a-uuid", &token("alice")).await,
        StatusCode::NOT_FOUND,
        "wallet_not_found",
    )
    .await;
    problem(
        app.get("/v1/payments/not-a-uuid", &token("alice")).await,
        StatusCode::NOT_FOUND,
        "payment_not_found",
    )
    .await;
    problem(
        app.get("/v1/wallets/%FF%FE", &token("alice")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    app.stop().await;
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn each_principal_is_rate_limited_with_retry_after(pool: PgPool) {
    let app = spawn(
        pool,
        Opts {
            rate_limit: (1, 3),
            ..Default::default()
        },
    )
    .await;
    let id = app.create_wallet("alice", "EUR").await; // 1 of alice's 3
    for _ in 0..2 {
        assert_eq!(
            app.get(&format!("/v1/wallets/{id}"), &token("alice"))
                .await
                .status(),
            StatusCode::OK
        );
    }
    let limited = app.get(&format!("/v1/wallets/{id}"), &token("alice")).await;
    assert_eq!(
        limited.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "{:?}",
        limited.headers()
    );
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    problem(limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Others are not affected.
    assert_eq!(
        app.get("/v1/payments", &token("bob")).await.status(),
        StatusCode::OK
    );
    app.stop().await;
}

/// Holds the wallet row locked from another transaction, as a stuck writer would.
async fn lock_wallet(pool: &PgPool, id: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM wallets WHERE id = $1::uuid FOR UPDATE")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn a_request_past_its_deadline_answers_503_problem_and_changes_nothing(pool: PgPool) {
    let app = spawn(
        pool.clone(),
        Opts {
            request_timeout: std::time::Duration::from_millis(500),
            ..Default::default()
        },
    )
    .await;
    let id = app.create_wallet("alice", "EUR").await;
    app.deposit(&id, 1_000, "EUR").await;
    let holder = lock_wallet(&pool, &id).await;
    let r = app.pay("alice", &id, 100, "m").await;
    assert_eq!(r.headers()["retry-after"], "1");
    problem(r, StatusCode::SERVICE_UNAVAILABLE, "service_unavailable").await;
    holder.rollback().await.unwrap();
    assert_eq!(app.balance("alice", &id).await, (1_000, 0));
    assert_eq!(count(&pool, "payments").await, 0);
    app.stop().await;
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn a_lock_timeout_in_the_database_is_a_retryable_503(pool: PgPool) {
    // The request deadline (10 s) is longer than the database's lock_timeout (3 s).
    let app = spawn(pool.clone(), Opts::default()).await;
    let id = app.create_wallet("alice", "EUR").await;
    app.deposit(&id, 1_000, "EUR").await;
    let holder = lock_wallet(&pool, &id).await;
    let key = "lock-timeout-key";
    let body = json!({"wallet_id": id, "amount": 100, "currency": "EUR", "merchant_id": "m"});
    let body503 = problem(
        app.post("/v1/payments", &token("alice"), Some(key), &body)
            .await,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    )
    .await;
    // PostgreSQL's lock_timeout answered, not the request deadline.
    assert_eq!(
        body503["detail"],
        "the database is unavailable; retry later"
    );
    holder.rollback().await.unwrap();
    // Not stored under the key: the retry goes through.
    assert_eq!(
        app.post("/v1/payments", &token("alice"), Some(key), &body)
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(app.balance("alice", &id).await, (900, 100));
    app.stop().await;
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn a_replayed_key_is_free_again_at_once(pool: PgPool) {
    // A replay must release the key's lock when it answers, not when its pooled connection
    // is next used: otherwise the following retry is told 409 "in use".
    let app = spawn(pool.clone(), Opts::default()).await;
    let wallet = app.create_wallet("alice", "EUR").await;
    app.deposit(&wallet, 10_000, "EUR").await;
    let body = serde_json::json!({"wallet_id": wallet, "amount": 100, "currency": "EUR", "merchant_id": "m"});
    let first = app
        .post("/v1/payments", &token("alice"), Some("k-replay"), &body)
        .await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    for _ in 0..12 {
        let again = app
            .post("/v1/payments", &token("alice"), Some("k-replay"), &body)
            .await;
        assert_eq!(again.status(), StatusCode::ACCEPTED);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(again.json::<Value>().await.unwrap(), first);
    }
    app.stop().await;
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn an_owner_id_with_control_characters_is_refused_and_nothing_is_created(pool: PgPool) {
    let app = spawn(pool.clone(), Opts::default()).await;
    for owner in ["bob\u{0}", "bob\nmallory", "", &"x".repeat(256)] {
        let r = app
            .post(
                "/v1/wallets",
                &admin_token(),
                None,
                &json!({"currency": "EUR", "owner_id": owner}),
            )
            .await;
        let body = problem(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert!(
            body["detail"].as_str().unwrap().contains("owner_id"),
            "{body}"
        );
    }
    assert_eq!(count(&pool, "wallets").await, 0);
    app.stop().await;
}

/// Lines logged on this thread (the test's single-threaded runtime runs the service too).
#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn housekeeping_prunes_what_is_past_its_retention_and_nothing_else(pool: PgPool) {
    use wallet_service::housekeeping::{prune, Retention};
    let app = spawn(pool.clone(), Opts::default()).await;
    let wallet = app.create_wallet("alice", "EUR").await;
    app.deposit(&wallet, 10_000, "EUR").await;
    let live = app.pay("alice", &wallet, 100, "m_1").await;
    assert_eq!(live.status(), StatusCode::ACCEPTED);
    let exec = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query(sql)
                .execute(&pool)
                .await
                .unwrap()
                .rows_affected()
        }
    };
    // 12,000 expired keys (more than one batch of 5,000: a pass goes on until caught up),
    // 7,000 inbox rows and 6,000 published outbox rows two hours old; and the same kinds of
    // rows inside their retention, which must stay.
    exec(
        "INSERT INTO idempotency_keys (principal, key, fingerprint, response_status, response_body, expires_at)
         SELECT 'old', 'k' || i, 'f', 202, '{}', now() - interval '1 second' FROM generate_series(1, 12000) i",
    )
    .await;
    exec(
        "INSERT INTO processed_events (event_id, payment_id, outcome, applied, processed_at)
         SELECT gen_random_uuid(), gen_random_uuid(), 'succeeded', true, now() - interval '2 hours'
         FROM generate_series(1, 7000)",
    )
    .await;
    exec(
        "INSERT INTO processed_events (event_id, payment_id, outcome, applied)
         SELECT gen_random_uuid(), gen_random_uuid(), 'succeeded', true FROM generate_series(1, 10)",
    )
    .await;
    exec(
        "INSERT INTO outbox (id, aggregate_id, event_type, payload, channel, created_at, published_at)
         SELECT gen_random_uuid(), gen_random_uuid(), 'payment.finalized', '{}', 'events',
                now() - interval '3 hours', now() - interval '2 hours'
         FROM generate_series(1, 6000)",
    )
    .await;
    // Old but never published: an outbox row is kept until it is relayed, however old.
    exec("UPDATE outbox SET created_at = now() - interval '3 hours' WHERE published_at IS NULL")
        .await;
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let keys = count("SELECT count(*) FROM idempotency_keys WHERE principal <> 'old'").await;
    let unpublished = count("SELECT count(*) FROM outbox WHERE published_at IS NULL").await;
    assert!(
        keys >= 2 && unpublished >= 2,
        "{keys} keys, {unpublished} unpublished"
    );

    let retention = Retention {
        outbox_secs: 3600,
        inbox_secs: 3600,
        every: std::time::Duration::from_secs(10),
    };
    let deleted = prune(&pool, &retention).await.unwrap();
    assert_eq!(
        deleted,
        [
            ("outbox", 6000),
            ("idempotency_keys", 12000),
            ("processed_events", 7000)
        ]
    );
    assert_eq!(count("SELECT count(*) FROM idempotency_keys").await, keys);
    assert_eq!(count("SELECT count(*) FROM processed_events").await, 10);
    assert_eq!(count("SELECT count(*) FROM outbox").await, unpublished);
    // A second pass finds nothing.
    let again = prune(&pool, &retention).await.unwrap();
    assert!(again.iter().all(|(_, n)| *n == 0), "{again:?}");
    app.stop().await;
}
