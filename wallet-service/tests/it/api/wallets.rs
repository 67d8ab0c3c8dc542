//! Wallets: creation, an admin's deposits and the owner's reads; the limits of a balance,
//! which the database keeps whatever the code does.

use super::{count, problem};
use crate::common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

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
