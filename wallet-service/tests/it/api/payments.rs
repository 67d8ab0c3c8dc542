//! Payments: what accepting one writes, refusals that change nothing (insufficient funds,
//! bad requests), concurrent payments on one wallet, and the paginated lists.

use super::{count, problem};
use crate::common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

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
