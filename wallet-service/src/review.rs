//! `wallet-service review`: what needs an operator. Payments and refunds the reconciler gave
//! up on (still pending after their re-drive budget: a payment's funds held, a refund's
//! amount reserved), results that contradict a payment's final status, and events for other
//! systems that Kafka refused for good. Each line says what to check; the actions are
//! explicit flags.

use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, sqlx::FromRow)]
pub struct NeedsAttention {
    pub id: Uuid,
    pub wallet_id: Uuid,
    pub amount: i64,
    pub currency: String,
    pub merchant_id: String,
    pub redrive_count: i32,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub attention_since: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, sqlx::FromRow)]
pub struct RefundNeedsAttention {
    pub id: Uuid,
    pub payment_id: Uuid,
    pub amount: i64,
    pub currency: String,
    pub redrive_count: i32,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub attention_since: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, sqlx::FromRow)]
pub struct OpenConflict {
    pub event_id: Uuid,
    pub payment_id: Uuid,
    pub recorded_status: String,
    pub recorded_reference: Option<String>,
    pub reported_outcome: String,
    pub reported_reason: Option<String>,
    pub reported_reference: Option<String>,
    pub detected_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, sqlx::FromRow)]
pub struct ParkedEvent {
    pub id: Uuid,
    pub wallet_id: Uuid,
    pub event_type: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub parked_at: chrono::DateTime<chrono::Utc>,
    pub reason: String,
}

/// Pending payments flagged by the reconciler, oldest first (at most `limit`).
pub async fn needing_attention(
    pool: &PgPool,
    limit: i64,
) -> Result<Vec<NeedsAttention>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, wallet_id, amount, currency, merchant_id, redrive_count, created_at, attention_since
         FROM payments WHERE status = 'pending' AND attention_since IS NOT NULL
         ORDER BY attention_since LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Pending refunds flagged by the reconciler, oldest first (at most `limit`).
pub async fn refunds_needing_attention(
    pool: &PgPool,
    limit: i64,
) -> Result<Vec<RefundNeedsAttention>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, payment_id, amount, currency, redrive_count, created_at, attention_since
         FROM refunds WHERE status = 'pending' AND attention_since IS NOT NULL
         ORDER BY attention_since LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Unresolved contradicting results, oldest first (at most `limit`).
pub async fn open_conflicts(pool: &PgPool, limit: i64) -> Result<Vec<OpenConflict>, sqlx::Error> {
    sqlx::query_as(
        "SELECT event_id, payment_id, recorded_status, recorded_reference, reported_outcome,
                reported_reason, reported_reference, detected_at
         FROM payment_outcome_conflicts WHERE resolved_at IS NULL
         ORDER BY detected_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Events the relay parked, oldest first (at most `limit`).
pub async fn parked_events(pool: &PgPool, limit: i64) -> Result<Vec<ParkedEvent>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, aggregate_id AS wallet_id, event_type, created_at, parked_at, reason
         FROM outbox_parked ORDER BY parked_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Moves a parked event back into the outbox, at the end of the line (a new `seq`, and
/// `created_at` now, so the outbox lag gauges measure its new wait, not its age), and wakes
/// the relays. False when no event with this id is parked. The event keeps its `event_id`
/// and its payload's `occurred_at`.
pub async fn requeue_event(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let moved = sqlx::query(
        "WITH moved AS (DELETE FROM outbox_parked WHERE id = $1 RETURNING *)
         INSERT INTO outbox (id, aggregate_id, event_type, channel, payload, traceparent)
         SELECT id, aggregate_id, event_type, channel, payload, traceparent FROM moved",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    // An operator's one-off: the notification's commit-time lock costs nothing here.
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(crate::outbox::Channel::Events.notify_channel())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(moved == 1)
}

/// What `--redrive ID` reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redriven {
    Payment,
    Refund,
    /// No pending, flagged payment or refund has this id.
    Nothing,
}

/// Gives a flagged payment or refund a fresh re-drive budget (after the gateway is known to
/// be back).
pub async fn redrive(pool: &PgPool, id: Uuid) -> Result<Redriven, sqlx::Error> {
    let reset = |table: &str| {
        format!(
            "UPDATE {table} SET attention_since = NULL, redrive_count = 0, last_redrive_at = NULL
             WHERE id = $1 AND status = 'pending' AND attention_since IS NOT NULL"
        )
    };
    if sqlx::query(&reset("payments"))
        .bind(id)
        .execute(pool)
        .await?
        .rows_affected()
        == 1
    {
        return Ok(Redriven::Payment);
    }
    if sqlx::query(&reset("refunds"))
        .bind(id)
        .execute(pool)
        .await?
        .rows_affected()
        == 1
    {
        return Ok(Redriven::Refund);
    }
    Ok(Redriven::Nothing)
}

/// Marks a conflict as dealt with (what was done is recorded outside, e.g. a ticket).
pub async fn resolve_conflict(pool: &PgPool, event: Uuid) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE payment_outcome_conflicts SET resolved_at = now()
         WHERE event_id = $1 AND resolved_at IS NULL",
    )
    .bind(event)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// The report `wallet-service review` prints.
pub async fn report(pool: &PgPool, limit: i64) -> Result<String, sqlx::Error> {
    use std::fmt::Write;
    let stuck = needing_attention(pool, limit).await?;
    let refunds = refunds_needing_attention(pool, limit).await?;
    let conflicts = open_conflicts(pool, limit).await?;
    let parked = parked_events(pool, limit).await?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} pending payment(s) need attention (re-drive budget spent, funds still held):",
        stuck.len()
    );
    for p in &stuck {
        let _ = writeln!(
            out,
            "  payment {} wallet {} {} {} merchant {} accepted {} re-driven {}x, flagged {}\n    ask the gateway for charge key {}; then `wallet-service review --redrive {}` once it answers",
            p.id,
            p.wallet_id,
            p.amount,
            p.currency,
            p.merchant_id,
            p.created_at,
            p.redrive_count,
            p.attention_since,
            p.id,
            p.id
        );
    }
    let _ = writeln!(
        out,
        "{} pending refund(s) need attention (re-drive budget spent, amount still reserved):",
        refunds.len()
    );
    for r in &refunds {
        let _ = writeln!(
            out,
            "  refund {} of payment {} {} {} accepted {} re-driven {}x, flagged {}\n    ask the gateway for the refunds of charge key {}; then `wallet-service review --redrive {}` once it answers",
            r.id,
            r.payment_id,
            r.amount,
            r.currency,
            r.created_at,
            r.redrive_count,
            r.attention_since,
            r.payment_id,
            r.id
        );
    }
    let _ = writeln!(
        out,
        "{} contradicting result(s) (gateway and wallet disagree; nothing was changed):",
        conflicts.len()
    );
    for c in &conflicts {
        let _ = writeln!(
            out,
            "  payment {} is {} (ref {}) but event {} reports {}{} (ref {}), detected {}\n    settle it with the gateway, then `wallet-service review --resolve {}`",
            c.payment_id,
            c.recorded_status,
            c.recorded_reference.as_deref().unwrap_or("-"),
            c.event_id,
            c.reported_outcome,
            c.reported_reason.as_deref().map(|r| format!("/{r}")).unwrap_or_default(),
            c.reported_reference.as_deref().unwrap_or("-"),
            c.detected_at,
            c.event_id
        );
    }
    let _ = writeln!(
        out,
        "{} event(s) Kafka refused for good (parked; consumers have not seen them):",
        parked.len()
    );
    for e in &parked {
        let _ = writeln!(
            out,
            "  {} {} of wallet {} written {} parked {}: {}\n    fix the cause, then `wallet-service review --requeue-event {}`",
            e.event_type, e.id, e.wallet_id, e.created_at, e.parked_at, e.reason, e.id
        );
    }
    Ok(out)
}
