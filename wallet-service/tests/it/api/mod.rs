//! The HTTP contract of API.md, against a real PostgreSQL (a fresh database per test), a
//! module per area: wallets, payments, idempotency, access (authentication, ownership, rate
//! limits), operations (operational endpoints, deadlines, lock timeouts, housekeeping),
//! refunds (who may refund, reservations, refusals) and contract (every constraint the
//! OpenAPI document states, tried at its edges).

use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;

mod access;
mod contract;
mod idempotency;
mod operations;
mod payments;
mod refunds;
mod wallets;

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
