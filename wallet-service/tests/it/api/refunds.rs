//! Refunds at the API: who may refund, what a refund reserves, and every refusal, each of
//! which changes nothing. Payments are finalized here through the store (the pipeline's
//! own path is `pipeline::refunds`).

use super::{count, problem};
use crate::common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use shared::ids::{EventId, PaymentId};
use shared::status::{FailureReason, Outcome};
use sqlx::PgPool;

/// A wallet of `alice` with 10,000 and a payment of `amount` finalized with `outcome`.
async fn finalized_payment(app: &TestApp, pool: &PgPool, amount: i64, outcome: Outcome) -> String {
    let wallet = app.create_wallet("alice", "EUR").await;
    app.deposit(&wallet, 10_000, "EUR").await;
    let (status, id) = app.pay_id("alice", &wallet, amount, "shop").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let reason = (outcome == Outcome::Failed).then_some(FailureReason::Declined);
    let mut conn = pool.acquire().await.unwrap();
    wallet_service::store::payments::finalize(
        &mut conn,
        EventId::new(),
        id.parse::<PaymentId>().unwrap(),
        outcome,
        reason,
        Some("ch_test"),
    )
    .await
    .unwrap();
    id
}

async fn refund(app: &TestApp, payment: &str, key: &str, body: Value) -> reqwest::Response {
    app.post(
        &format!("/v1/payments/{payment}/refunds"),
        &admin_token(),
        Some(key),
        &body,
    )
    .await
}

/// (refunded, refund_reserved) of a payment.
async fn refund_columns(pool: &PgPool, payment: &str) -> (i64, i64) {
    sqlx::query_as("SELECT refunded, refund_reserved FROM payments WHERE id = $1::uuid")
        .bind(payment)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn accepting_a_refund_reserves_it_and_writes_refund_and_outbox_together(pool: PgPool) {
    let app = spawn(pool.clone(), Opts::default()).await;
    let payment = finalized_payment(&app, &pool, 5_000, Outcome::Succeeded).await;
    let wallet = app.payment("alice", &payment).await["wallet_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.balance("alice", &wallet).await, (5_000, 0));

    let r = refund(
        &app,
        &payment,
        "r-1",
        json!({"amount": 2_000, "reason": "damaged"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "pending");
    assert_eq!(body["amount"], 2_000);
    assert_eq!(body["currency"], "EUR");
    assert_eq!(body["reason"], "damaged");
    assert_eq!(body["payment_id"], payment.as_str());
    assert_eq!(body["wallet_id"], wallet.as_str());
    assert_eq!(body["failure_reason"], Value::Null);
    assert_eq!(body["finalized_at"], Value::Null);
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "amount",
            "created_at",
            "currency",
            "failure_reason",
            "finalized_at",
            "id",
            "payment_id",
            "reason",
            "status",
            "wallet_id"
        ]
    );
    // Nothing is credited before the gateway said yes: only the reservation moved.
    assert_eq!(app.balance("alice", &wallet).await, (5_000, 0));
    assert_eq!(refund_columns(&pool, &payment).await, (0, 2_000));
    let (payload,): (Value,) = sqlx::query_as(
        "SELECT payload FROM outbox WHERE event_type = 'refund.requested' AND aggregate_id = $1::uuid",
    )
    .bind(&payment)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(payload["version"], 1);
    assert_eq!(payload["refund"]["id"], body["id"]);
    assert_eq!(payload["refund"]["payment_id"], payment.as_str());
    assert_eq!(payload["refund"]["amount"], 2_000);
    assert_eq!(payload["refund"]["merchant_id"], "shop");

    // Without an amount: whatever is left (5,000 - 2,000 reserved).
    let r = refund(&app, &payment, "r-2", json!({})).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.json::<Value>().await.unwrap()["amount"], 3_000);
    assert_eq!(refund_columns(&pool, &payment).await, (0, 5_000));

    // Read back: by id (admin and owner), and the payment's list, oldest first.
    let id = body["id"].as_str().unwrap();
    for tok in [admin_token(), token("alice")] {
        let r = app.get(&format!("/v1/refunds/{id}"), &tok).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.json::<Value>().await.unwrap(), body);
    }
    let r = app
        .get(&format!("/v1/payments/{payment}/refunds"), &token("alice"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let list: Value = r.json().await.unwrap();
    let amounts: Vec<i64> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["amount"].as_i64().unwrap())
        .collect();
    assert_eq!(amounts, [2_000, 3_000]);
    assert_money_conserved(&pool).await;
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn refusals_are_precise_and_change_nothing(pool: PgPool) {
    let app = spawn(pool.clone(), Opts::default()).await;
    let paid = finalized_payment(&app, &pool, 5_000, Outcome::Succeeded).await;
    let failed = finalized_payment(&app, &pool, 700, Outcome::Failed).await;
    let wallet = app.create_wallet("alice", "EUR").await;
    app.deposit(&wallet, 1_000, "EUR").await;
    let (_, pending) = app.pay_id("alice", &wallet, 300, "shop").await;
    let outbox_before = count(&pool, "outbox").await;

    // Who may refund: the owner is told why (403); a stranger learns nothing (404).
    let path = format!("/v1/payments/{paid}/refunds");
    let r = app
        .post(&path, &token("alice"), Some("k"), &json!({}))
        .await;
    problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = app
        .post(&path, &token("mallory"), Some("k"), &json!({}))
        .await;
    problem(r, StatusCode::NOT_FOUND, "payment_not_found").await;
    let r = app.post(&path, &admin_token(), None, &json!({})).await;
    problem(r, StatusCode::BAD_REQUEST, "idempotency_key_missing").await;
    let unknown = uuid::Uuid::now_v7();
    for p in [unknown.to_string(), "not-a-uuid".to_owned()] {
        let r = refund(&app, &p, &format!("k-{p}"), json!({})).await;
        problem(r, StatusCode::NOT_FOUND, "payment_not_found").await;
    }

    // Only a succeeded payment is refundable.
    for p in [&pending, &failed] {
        let r = refund(&app, p, &format!("k-{p}"), json!({})).await;
        let body = problem(r, StatusCode::CONFLICT, "payment_not_refundable").await;
        assert!(body["detail"].as_str().unwrap().contains("pending") || p == &failed);
    }

    // Bad amounts: 422 for a bad value, 400 for a bad type.
    for bad in [json!(0), json!(-5), json!(1.5), json!(1_000_000_000_001i64)] {
        let r = refund(&app, &paid, &format!("k-{bad}"), json!({ "amount": bad })).await;
        problem(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    }
    let r = refund(&app, &paid, "k-str", json!({"amount": "5"})).await;
    problem(r, StatusCode::BAD_REQUEST, "malformed_request").await;
    let r = refund(&app, &paid, "k-reason", json!({"reason": "x".repeat(501)})).await;
    problem(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;

    // More than captured names what is left.
    let r = refund(&app, &paid, "k-big", json!({"amount": 5_001})).await;
    let body = problem(
        r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "refund_exceeds_captured",
    )
    .await;
    assert_eq!(body["refundable"], 5_000);

    assert_eq!(count(&pool, "refunds").await, 0);
    assert_eq!(count(&pool, "outbox").await, outbox_before);
    assert_eq!(refund_columns(&pool, &paid).await, (0, 0));

    // The same key: the same body replays, another body is refused.
    let first = refund(&app, &paid, "k-same", json!({"amount": 1_000})).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    let again = refund(&app, &paid, "k-same", json!({"amount": 1_000})).await;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let r = refund(&app, &paid, "k-same", json!({"amount": 2_000})).await;
    problem(
        r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(count(&pool, "refunds").await, 1);

    // What is left is now 4,000.
    let r = refund(&app, &paid, "k-big-2", json!({"amount": 4_001})).await;
    let body = problem(
        r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "refund_exceeds_captured",
    )
    .await;
    assert_eq!(body["refundable"], 4_000);

    // Reads: a stranger's and unknown refunds are not found.
    let id = first["id"].as_str().unwrap();
    let r = app
        .get(&format!("/v1/refunds/{id}"), &token("mallory"))
        .await;
    problem(r, StatusCode::NOT_FOUND, "refund_not_found").await;
    for other in [uuid::Uuid::now_v7().to_string(), "nope".to_owned()] {
        let r = app
            .get(&format!("/v1/refunds/{other}"), &admin_token())
            .await;
        problem(r, StatusCode::NOT_FOUND, "refund_not_found").await;
    }
    let r = app.get(&path, &token("mallory")).await;
    problem(r, StatusCode::NOT_FOUND, "payment_not_found").await;
    assert_money_conserved(&pool).await;
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn the_database_refuses_reservations_beyond_the_capture(pool: PgPool) {
    let app = spawn(pool.clone(), Opts::default()).await;
    let paid = finalized_payment(&app, &pool, 50, Outcome::Succeeded).await;
    // Whatever the code does, the CHECK stops a reservation past the capture...
    let e = sqlx::query("UPDATE payments SET refund_reserved = 51 WHERE id = $1::uuid")
        .bind(&paid)
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("payments_refunds_within_captured"),
        "{e}"
    );
    // ...and a refund of a payment that did not succeed.
    let wallet = app.create_wallet("bob", "EUR").await;
    app.deposit(&wallet, 100, "EUR").await;
    let (_, pending) = app.pay_id("bob", &wallet, 10, "shop").await;
    let e = sqlx::query("UPDATE payments SET refunded = 1 WHERE id = $1::uuid")
        .bind(&pending)
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("payments_refunds_within_captured"),
        "{e}"
    );
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn a_refund_left_pending_is_redriven_then_flagged_for_an_operator(pool: PgPool) {
    use wallet_service::reconciler::{Reconciler, RedrivePolicy};
    use wallet_service::review::{self, Redriven};
    let app = spawn(pool.clone(), Opts::default()).await;
    let paid = finalized_payment(&app, &pool, 5_000, Outcome::Succeeded).await;
    let r = refund(&app, &paid, "r-lost", json!({"amount": 700})).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let id: uuid::Uuid = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let requests = || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_type = 'refund.requested'")
                .fetch_one(&pool)
                .await
                .unwrap();
        n
    };
    assert_eq!(requests().await, 1);
    let reconciler = Reconciler {
        pool: pool.clone(),
        policy: RedrivePolicy {
            deadline: std::time::Duration::from_secs(60),
            max_backoff: std::time::Duration::from_secs(60),
            max_redrives: 1,
        },
        batch_size: 10,
        doorbell: Default::default(),
    };
    // Not yet due: nothing is sent.
    assert_eq!(reconciler.redrive_refunds().await.unwrap(), 0);
    let age = |column: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query(&format!(
                "UPDATE refunds SET {column} = now() - interval '1 hour' WHERE id = $1"
            ))
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    age("created_at").await;
    assert_eq!(reconciler.redrive_refunds().await.unwrap(), 1);
    assert_eq!(requests().await, 2);
    // Its budget (one re-drive) is spent: the next time it is flagged, not sent.
    age("last_redrive_at").await;
    assert_eq!(reconciler.redrive_refunds().await.unwrap(), 0);
    assert_eq!(requests().await, 2);
    let flagged = review::refunds_needing_attention(&pool, 10).await.unwrap();
    assert_eq!(flagged.len(), 1);
    assert_eq!((flagged[0].id, flagged[0].amount), (id, 700));
    let report = review::report(&pool, 10).await.unwrap();
    assert!(
        report.contains("1 pending refund(s) need attention"),
        "{report}"
    );
    assert!(report.contains(&format!("--redrive {id}")), "{report}");
    // The reservation stays until the gateway answers.
    assert_eq!(refund_columns(&pool, &paid).await, (0, 700));

    assert_eq!(review::redrive(&pool, id).await.unwrap(), Redriven::Refund);
    assert!(review::refunds_needing_attention(&pool, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(review::redrive(&pool, id).await.unwrap(), Redriven::Nothing);
    assert_money_conserved(&pool).await;
}
