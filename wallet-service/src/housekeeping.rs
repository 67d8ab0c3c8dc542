//! Housekeeping: the tables that grow with every payment are pruned at least as fast as they
//! are written, and their sizes are exported, so that a service that has run for months
//! costs what it cost on its first day.
//!
//! Pruned: published outbox rows past `OUTBOX_RETENTION_SECS`, idempotency keys past their
//! expiry, and inbox rows (`processed_events`) past `INBOX_RETENTION_SECS`. A pass deletes
//! in batches until a table is caught up (or its time budget is spent, so one pass never
//! holds the pool for long); several instances share the work through `SKIP LOCKED`.
//! Runs in `serve` and in `dispatch`, whichever way the services are deployed.

use crate::outbox;
use shared::shutdown::Shutdown;
use sqlx::PgPool;
use std::time::{Duration, Instant};

/// Rows deleted per statement: large enough to keep up with thousands of payments per
/// second, small enough to keep each statement short.
const BATCH: i64 = 5_000;
/// The longest one pass spends on one table.
const BUDGET: Duration = Duration::from_secs(2);
/// Gauges every this often.
const GAUGE_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub outbox_secs: i64,
    pub inbox_secs: i64,
    /// Time between two pruning passes.
    pub every: Duration,
}

pub fn describe_metrics() {
    metrics::describe_counter!(
        "housekeeping_pruned_rows_total",
        "Rows deleted by housekeeping, by table."
    );
    metrics::describe_gauge!(
        "outbox_parked_events",
        "Events Kafka refused for good, parked in outbox_parked until an operator requeues them."
    );
    metrics::describe_gauge!(
        "table_rows_estimate",
        "Rows in the tables that grow with traffic (PostgreSQL's estimate), by table."
    );
    for table in TABLES {
        metrics::counter!("housekeeping_pruned_rows_total", "table" => table.name).increment(0);
    }
}

struct Table {
    name: &'static str,
    /// Deletes at most $2 rows more than $1 seconds past their end, skipping rows another
    /// instance is deleting.
    delete: &'static str,
    /// How long after its end a row is kept.
    keep_secs: fn(&Retention) -> i64,
}

const TABLES: [Table; 3] = [
    Table {
        name: "outbox",
        delete: "DELETE FROM outbox WHERE id IN (
                   SELECT id FROM outbox
                   WHERE published_at < now() - make_interval(secs => $1::float8)
                   LIMIT $2 FOR UPDATE SKIP LOCKED)",
        keep_secs: |r| r.outbox_secs,
    },
    Table {
        name: "idempotency_keys",
        delete: "DELETE FROM idempotency_keys WHERE (principal, key) IN (
                   SELECT principal, key FROM idempotency_keys
                   WHERE expires_at < now() - make_interval(secs => $1::float8)
                   LIMIT $2 FOR UPDATE SKIP LOCKED)",
        // Keys carry their own expiry.
        keep_secs: |_| 0,
    },
    Table {
        name: "processed_events",
        delete: "DELETE FROM processed_events WHERE event_id IN (
                   SELECT event_id FROM processed_events
                   WHERE processed_at < now() - make_interval(secs => $1::float8)
                   LIMIT $2 FOR UPDATE SKIP LOCKED)",
        keep_secs: |r| r.inbox_secs,
    },
];

/// One pass over every table. Returns rows deleted per table.
pub async fn prune(
    pool: &PgPool,
    retention: &Retention,
) -> Result<Vec<(&'static str, u64)>, sqlx::Error> {
    let mut out = Vec::with_capacity(TABLES.len());
    for table in &TABLES {
        let start = Instant::now();
        let mut deleted = 0;
        loop {
            let n = sqlx::query(table.delete)
                .bind((table.keep_secs)(retention) as f64)
                .bind(BATCH)
                .execute(pool)
                .await?
                .rows_affected();
            deleted += n;
            if (n as i64) < BATCH || start.elapsed() > BUDGET {
                break;
            }
        }
        metrics::counter!("housekeeping_pruned_rows_total", "table" => table.name)
            .increment(deleted);
        out.push((table.name, deleted));
    }
    Ok(out)
}

/// Exports the outbox backlog and the size of each growing table.
async fn export_gauges(pool: &PgPool) {
    if let Ok(channels) = outbox::backlog(pool, outbox::BACKLOG_COUNTED_UP_TO).await {
        for (channel, count, age) in channels {
            metrics::gauge!("outbox_backlog", "channel" => channel.clone()).set(count as f64);
            metrics::gauge!("outbox_oldest_unpublished_age_seconds", "channel" => channel).set(age);
        }
    }
    // Exact: each parked event needs an operator. The table holds only those.
    if let Ok(parked) = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox_parked")
        .fetch_one(pool)
        .await
    {
        metrics::gauge!("outbox_parked_events").set(parked as f64);
    }
    let sizes: Result<Vec<(String, f64)>, _> = sqlx::query_as(
        "SELECT relname::text, GREATEST(reltuples, 0)::float8 FROM pg_class
         WHERE relkind = 'r' AND relname = ANY($1)",
    )
    .bind([
        "outbox",
        "idempotency_keys",
        "processed_events",
        "payments",
        "ledger_entries",
        "refunds",
        "payment_outcome_conflicts",
    ])
    .fetch_all(pool)
    .await;
    if let Ok(sizes) = sizes {
        for (table, rows) in sizes {
            metrics::gauge!("table_rows_estimate", "table" => table).set(rows);
        }
    }
}

pub async fn run(pool: PgPool, retention: Retention, mut shutdown: Shutdown) {
    let mut gauges = tokio::time::interval(GAUGE_EVERY);
    let mut passes = tokio::time::interval(retention.every);
    gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    passes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = gauges.tick() => export_gauges(&pool).await,
            _ = passes.tick() => match prune(&pool, &retention).await {
                Ok(counts) => {
                    if counts.iter().any(|(_, n)| *n > 0) {
                        let [(_, outbox), (_, keys), (_, inbox)] = counts[..] else { continue };
                        tracing::info!(
                            outbox,
                            idempotency_keys = keys,
                            processed_events = inbox,
                            "pruned rows past their retention",
                        );
                    }
                }
                Err(e) => tracing::warn!(error = %e, "pruning failed; will retry at the next pass"),
            },
            _ = shutdown.wait() => return,
        }
    }
}
