//! Who may do what: authentication, ownership (another principal learns nothing), the
//! per-principal rate limit, and owner ids that are refused.

use super::{count, problem};
use crate::common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

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
