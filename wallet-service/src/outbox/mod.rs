//! The transactional outbox: events are written in the same transaction as the change that
//! caused them, then relayed by the [`dispatcher`] (payment requests, to RabbitMQ) and the
//! [`relay`] (events for other systems, to Kafka).

pub mod dispatcher;
pub mod relay;

use serde::Serialize;
use shared::events::PaymentRequested;
use shared::notifications::{PaymentAlert, PaymentFinalized, WalletDeposited};
use sqlx::PgConnection;
use uuid::Uuid;

/// The `LISTEN`/`NOTIFY` channel that wakes the relays.
pub const NOTIFY_CHANNEL: &str = "outbox";

/// Where an outbox row is relayed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// `payment.requested` to RabbitMQ, for the processor.
    Payments,
    /// `payment.finalized` / `wallet.deposited` to Kafka `payment.events`.
    Events,
    /// `payment.alert` to Kafka `payment.alerts`.
    Alerts,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Payments => "payments",
            Self::Events => "events",
            Self::Alerts => "alerts",
        }
    }
}

/// One row to write: `aggregate_id` is the payment id for payment requests (their
/// correlation id) and the wallet id for Kafka events (their message key).
struct Row<'a, E> {
    channel: Channel,
    id: Uuid,
    aggregate_id: Uuid,
    kind: &'a str,
    event: &'a E,
    traceparent: Option<&'a str>,
}

/// Writes the row and notifies the relays; both take effect at commit.
async fn write<E: Serialize>(conn: &mut PgConnection, row: Row<'_, E>) -> Result<(), sqlx::Error> {
    let payload = serde_json::to_value(row.event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "WITH ins AS (
            INSERT INTO outbox (id, aggregate_id, event_type, payload, traceparent, channel)
            VALUES ($1, $2, $3, $4, $5, $6)
         )
         SELECT pg_notify($7, '')",
    )
    .bind(row.id)
    .bind(row.aggregate_id)
    .bind(row.kind)
    .bind(payload)
    .bind(row.traceparent)
    .bind(row.channel.as_str())
    .bind(NOTIFY_CHANNEL)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn enqueue(
    conn: &mut PgConnection,
    event: &PaymentRequested,
    traceparent: &str,
) -> Result<(), sqlx::Error> {
    write(
        conn,
        Row {
            channel: Channel::Payments,
            id: event.event_id.0,
            aggregate_id: event.payment.id.0,
            kind: &event.kind,
            event,
            traceparent: Some(traceparent),
        },
    )
    .await
}

pub async fn enqueue_finalized(
    conn: &mut PgConnection,
    event: &PaymentFinalized,
) -> Result<(), sqlx::Error> {
    write(
        conn,
        Row {
            channel: Channel::Events,
            id: event.event_id.0,
            aggregate_id: event.wallet_id.0,
            kind: &event.kind,
            event,
            traceparent: None,
        },
    )
    .await
}

pub async fn enqueue_deposited(
    conn: &mut PgConnection,
    event: &WalletDeposited,
) -> Result<(), sqlx::Error> {
    write(
        conn,
        Row {
            channel: Channel::Events,
            id: event.event_id.0,
            aggregate_id: event.wallet_id.0,
            kind: &event.kind,
            event,
            traceparent: None,
        },
    )
    .await
}

pub async fn enqueue_alert(
    conn: &mut PgConnection,
    event: &PaymentAlert,
    traceparent: &str,
) -> Result<(), sqlx::Error> {
    write(
        conn,
        Row {
            channel: Channel::Alerts,
            id: event.event_id.0,
            aggregate_id: event.wallet_id.0,
            kind: &event.kind,
            event,
            traceparent: Some(traceparent),
        },
    )
    .await
}

/// Per channel: unpublished rows and the age in seconds of the oldest one.
pub async fn backlog(pool: &sqlx::PgPool) -> Result<Vec<(String, i64, f64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.channel, count(o.id), COALESCE(EXTRACT(EPOCH FROM now() - min(o.created_at))::float8, 0)
         FROM unnest(ARRAY['payments', 'events', 'alerts']) AS c(channel)
         LEFT JOIN outbox o ON o.channel = c.channel AND o.published_at IS NULL
         GROUP BY c.channel",
    )
    .fetch_all(pool)
    .await
}

/// Deletes published rows older than the retention, and expired idempotency keys.
pub async fn prune(pool: &sqlx::PgPool, retention_secs: i64) -> Result<u64, sqlx::Error> {
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
