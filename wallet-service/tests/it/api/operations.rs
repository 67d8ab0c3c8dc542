//! Operations: health, readiness, the OpenAPI document and metrics, unknown routes and
//! malformed ids; a request past its deadline and a lock timeout in the database (both a
//! retryable 503); housekeeping of what is past its retention.

use super::{count, problem};
use crate::common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

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
