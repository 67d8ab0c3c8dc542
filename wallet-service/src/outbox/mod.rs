//! The transactional outbox: events are written in the same transaction as the change that
//! caused them, then relayed to RabbitMQ by the [`dispatcher`].

pub mod dispatcher;

use shared::events::PaymentRequested;
use sqlx::{PgConnection, PgPool};

/// The `LISTEN`/`NOTIFY` channel that wakes the dispatcher.
pub const NOTIFY_CHANNEL: &str = "outbox";

/// Writes the event and notifies the dispatcher; both take effect at commit.
pub async fn enqueue(
    conn: &mut PgConnection,
    event: &PaymentRequested,
    traceparent: &str,
) -> Result<(), sqlx::Error> {
    let payload = serde_json::to_value(event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "WITH ins AS (
            INSERT INTO outbox (id, aggregate_id, event_type, payload, traceparent)
            VALUES ($1, $2, $3, $4, $5)
         )
         SELECT pg_notify($6, '')",
    )
    .bind(event.event_id.0)
    .bind(event.payment.id.0)
    .bind(&event.kind)
    .bind(payload)
    .bind(traceparent)
    .bind(NOTIFY_CHANNEL)
    .execute(conn)
    .await?;
    Ok(())
}

/// Unpublished rows and the age in seconds of the oldest one.
pub async fn backlog(pool: &PgPool) -> Result<(i64, f64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0)
         FROM outbox WHERE published_at IS NULL",
    )
    .fetch_one(pool)
    .await
}

/// Deletes published rows older than the retention, and expired idempotency keys.
pub async fn prune(pool: &PgPool, retention_secs: i64) -> Result<u64, sqlx::Error> {
    let outbox = sqlx::query(
        "DELETE FROM outbox WHERE id IN (
            SELECT id FROM outbox WHERE published_at < now() - make_interval(secs => $1::float8) LIMIT 10000)",
    )
    .bind(retention_secs as f64)
    .execute(pool)
    .await?;
    let keys = sqlx::query(
        "DELETE FROM idempotency_keys WHERE (principal, key) IN (
            SELECT principal, key FROM idempotency_keys WHERE expires_at < now() LIMIT 10000)",
    )
    .execute(pool)
    .await?;
    Ok(outbox.rows_affected() + keys.rows_affected())
}
