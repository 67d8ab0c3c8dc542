//! Refunds through the pipeline: accepted at the API, relayed to RabbitMQ, refunded at the
//! gateway by the processor, applied once from Kafka. Partial and full refunds, a merchant
//! whose refunds are declined, and a hundred concurrent one-cent refunds of a fifty-cent
//! payment.

use super::DEADLINE;
use crate::common::pipeline::*;
use crate::common::*;
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

/// Pays `amount` from a new wallet of `owner` (funded with `deposit`) to `merchant` and
/// waits until the payment succeeded. Returns (wallet, payment).
async fn succeeded_payment(
    app: &TestApp,
    owner: &str,
    deposit: i64,
    amount: i64,
    merchant: &str,
) -> (String, String) {
    let wallet = app.create_wallet(owner, "EUR").await;
    app.deposit(&wallet, deposit, "EUR").await;
    let (status, id) = app.pay_id(owner, &wallet, amount, merchant).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(app.final_status(owner, &id, DEADLINE).await, "succeeded");
    (wallet, id)
}

async fn refund(app: &TestApp, payment: &str, body: Value) -> reqwest::Response {
    let key = uuid::Uuid::new_v4().to_string();
    app.post(
        &format!("/v1/payments/{payment}/refunds"),
        &admin_token(),
        Some(&key),
        &body,
    )
    .await
}

/// Waits until the refund leaves `pending`; returns it.
async fn final_refund(app: &TestApp, id: &str) -> Value {
    eventually(&format!("refund {id} final"), DEADLINE, || async {
        let r: Value = app
            .get(&format!("/v1/refunds/{id}"), &admin_token())
            .await
            .json()
            .await
            .unwrap();
        (r["status"] != "pending").then_some(r)
    })
    .await
}

async fn pending_refunds(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM refunds WHERE status = 'pending'")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn partial_and_full_refunds_credit_the_wallet_once_the_gateway_refunded(pool: PgPool) {
    let gw = gateway(0).await;
    let app = spawn(pool.clone(), Opts::pipeline()).await;
    let proc = processor(&app.prefix, &gw.url("")).await;
    let (wallet, payment) = succeeded_payment(&app, "alice", 10_000, 5_000, "shop").await;
    assert_eq!(app.balance("alice", &wallet).await, (5_000, 0));

    let r = refund(
        &app,
        &payment,
        json!({"amount": 2_000, "reason": "one item back"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let first: Value = r.json().await.unwrap();
    let done = final_refund(&app, first["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(done["finalized_at"].is_string());
    assert_eq!(app.balance("alice", &wallet).await, (7_000, 0));

    // The rest, without naming an amount.
    let r = refund(&app, &payment, json!({})).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let second: Value = r.json().await.unwrap();
    assert_eq!(second["amount"], 3_000);
    let done = final_refund(&app, second["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(app.balance("alice", &wallet).await, (10_000, 0));

    // Nothing is left to refund.
    let r = refund(&app, &payment, json!({"amount": 1})).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (body["code"].as_str(), body["refundable"].as_i64()),
        (Some("refund_exceeds_captured"), Some(0))
    );

    // The ledger, the statement by kind, the summary, the events and the gateway agree.
    let entries = app
        .all_pages(
            "alice",
            &format!("/v1/wallets/{wallet}/transactions?kind=refund"),
            true,
        )
        .await;
    let mut amounts: Vec<i64> = entries
        .iter()
        .map(|e| e["amount"].as_i64().unwrap())
        .collect();
    amounts.sort_unstable();
    assert_eq!(amounts, [2_000, 3_000]);
    assert!(entries.iter().all(|e| e["payment_id"] == payment.as_str()));
    let summary: Value = app
        .get(&format!("/v1/wallets/{wallet}/summary"), &token("alice"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(summary["refunded"], json!({"count": 2, "total": 5_000}));
    assert_eq!(summary["captured"], json!({"count": 1, "total": 5_000}));
    let refunded_events: Vec<Value> = sqlx::query_scalar(
        "SELECT payload FROM outbox WHERE event_type = 'payment.refunded' ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(refunded_events.len(), 2);
    assert_eq!(
        refunded_events[1]["refund"]["payment_refunded_total"],
        5_000
    );
    assert_eq!(refunded_events[1]["balance"]["available"], 10_000);
    let stats = gateway_stats(&gw).await;
    assert_eq!(stats["refunds"], 2, "{stats}");
    assert_eq!(stats["refunded_amount"], 5_000, "{stats}");
    assert_money_conserved(&pool).await;
    proc.stop().await;
    app.stop().await;
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn a_declined_refund_frees_its_reservation_and_credits_nothing(pool: PgPool) {
    let gw = gateway(0).await;
    let app = spawn(pool.clone(), Opts::pipeline()).await;
    let proc = processor(&app.prefix, &gw.url("")).await;
    let (wallet, payment) = succeeded_payment(&app, "bob", 1_000, 600, "test_refund_decline").await;

    let r = refund(&app, &payment, json!({})).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = final_refund(&app, &id).await;
    assert_eq!(
        (done["status"].as_str(), done["failure_reason"].as_str()),
        (Some("failed"), Some("declined")),
        "{done}"
    );
    assert_eq!(app.balance("bob", &wallet).await, (400, 0));
    // The reservation is gone: the whole capture can be asked for again.
    let (refunded, reserved): (i64, i64) =
        sqlx::query_as("SELECT refunded, refund_reserved FROM payments WHERE id = $1::uuid")
            .bind(&payment)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((refunded, reserved), (0, 0));
    let stats = gateway_stats(&gw).await;
    assert_eq!(
        (
            stats["refunds"].as_i64(),
            stats["refunds_declined"].as_i64()
        ),
        (Some(0), Some(1)),
        "{stats}"
    );
    assert_money_conserved(&pool).await;
    proc.stop().await;
    app.stop().await;
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn a_hundred_concurrent_cent_refunds_of_fifty_cents_refund_exactly_fifty(pool: PgPool) {
    let gw = gateway(0).await;
    let app = spawn(pool.clone(), Opts::pipeline()).await;
    let proc = processor(&app.prefix, &gw.url("")).await;
    let (wallet, payment) = succeeded_payment(&app, "carol", 50, 50, "shop").await;
    assert_eq!(app.balance("carol", &wallet).await, (0, 0));

    let answers = join_all((0..100).map(|_| refund(&app, &payment, json!({"amount": 1}))))
        .await
        .into_iter()
        .map(|r| r.status())
        .collect::<Vec<_>>();
    let accepted = answers
        .iter()
        .filter(|s| **s == StatusCode::ACCEPTED)
        .count();
    let refused = answers
        .iter()
        .filter(|s| **s == StatusCode::UNPROCESSABLE_ENTITY)
        .count();
    assert_eq!((accepted, refused), (50, 50), "{answers:?}");

    eventually("every refund final", DEADLINE, || async {
        (pending_refunds(&pool).await == 0).then_some(())
    })
    .await;
    let succeeded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM refunds WHERE status = 'succeeded'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(succeeded, 50);
    assert_eq!(app.balance("carol", &wallet).await, (50, 0));
    let stats = gateway_stats(&gw).await;
    assert_eq!(stats["refunded_amount"], 50, "{stats}");
    assert_money_conserved(&pool).await;
    proc.stop().await;
    app.stop().await;
}
