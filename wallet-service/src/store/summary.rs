//! Per-wallet totals over a time window, computed from the ledger alone so they agree with
//! it exactly.
//!
//! For entries created in `[from, to)`: deposits, captures, releases and refunds counted and
//! summed;
//! `pending` is the holds placed in the window that had neither a capture nor a release
//! before `to`; `min_payment`/`max_payment` range over the holds placed in the window (every
//! accepted payment, whatever became of it).

use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::ids::WalletId;
use sqlx::PgConnection;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub count: i64,
    pub total: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub deposits: Tally,
    pub captured: Tally,
    pub released: Tally,
    pub refunded: Tally,
    pub pending: Tally,
    pub min_payment: Option<i64>,
    pub max_payment: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct Row {
    deposits_count: i64,
    deposits_total: i64,
    captured_count: i64,
    captured_total: i64,
    released_count: i64,
    released_total: i64,
    refunded_count: i64,
    refunded_total: i64,
    pending_count: i64,
    pending_total: i64,
    min_payment: Option<i64>,
    max_payment: Option<i64>,
}

/// One statement, so every figure comes from the same snapshot.
const SUMMARY_SQL: &str = "
    WITH w AS (
        SELECT kind, amount, payment_id FROM ledger_entries
        WHERE wallet_id = $1 AND created_at >= $2 AND created_at < $3
    )
    SELECT
        count(*) FILTER (WHERE kind = 'deposit') AS deposits_count,
        COALESCE(sum(amount) FILTER (WHERE kind = 'deposit'), 0)::bigint AS deposits_total,
        count(*) FILTER (WHERE kind = 'capture') AS captured_count,
        COALESCE(sum(amount) FILTER (WHERE kind = 'capture'), 0)::bigint AS captured_total,
        count(*) FILTER (WHERE kind = 'release') AS released_count,
        COALESCE(sum(amount) FILTER (WHERE kind = 'release'), 0)::bigint AS released_total,
        count(*) FILTER (WHERE kind = 'refund') AS refunded_count,
        COALESCE(sum(amount) FILTER (WHERE kind = 'refund'), 0)::bigint AS refunded_total,
        count(*) FILTER (WHERE kind = 'hold' AND NOT settled) AS pending_count,
        COALESCE(sum(amount) FILTER (WHERE kind = 'hold' AND NOT settled), 0)::bigint AS pending_total,
        min(amount) FILTER (WHERE kind = 'hold') AS min_payment,
        max(amount) FILTER (WHERE kind = 'hold') AS max_payment
    FROM (
        SELECT w.kind, w.amount,
            w.kind = 'hold' AND EXISTS (
                SELECT 1 FROM ledger_entries s
                WHERE s.payment_id = w.payment_id AND s.kind IN ('capture', 'release')
                  AND s.created_at < $3
            ) AS settled
        FROM w
    ) t";

pub async fn totals(
    conn: &mut PgConnection,
    wallet_id: WalletId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Totals, sqlx::Error> {
    let r: Row = sqlx::query_as(SUMMARY_SQL)
        .bind(wallet_id.0)
        .bind(from)
        .bind(to)
        .fetch_one(conn)
        .await?;
    Ok(Totals {
        deposits: Tally {
            count: r.deposits_count,
            total: r.deposits_total,
        },
        captured: Tally {
            count: r.captured_count,
            total: r.captured_total,
        },
        released: Tally {
            count: r.released_count,
            total: r.released_total,
        },
        refunded: Tally {
            count: r.refunded_count,
            total: r.refunded_total,
        },
        pending: Tally {
            count: r.pending_count,
            total: r.pending_total,
        },
        min_payment: r.min_payment,
        max_payment: r.max_payment,
    })
}

/// The plan PostgreSQL runs for [`totals`] (`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`: the
/// read is made), with the rows and pages each step read.
pub async fn explain_totals(
    conn: &mut PgConnection,
    wallet_id: WalletId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<serde_json::Value, sqlx::Error> {
    let (plan,): (serde_json::Value,) = sqlx::query_as(&format!(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {SUMMARY_SQL}"
    ))
    .bind(wallet_id.0)
    .bind(from)
    .bind(to)
    .fetch_one(conn)
    .await?;
    Ok(plan)
}
