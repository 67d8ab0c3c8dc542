//! Idempotency keys: a retry replays the first answer (refusals included), a key in flight
//! answers 409, and a replay frees its key at once.

use super::{count, problem};
use crate::common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

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
