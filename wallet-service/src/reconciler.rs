//! The reconciler: a payment or a refund still `pending` past a deadline is sent through
//! the outbox again.
//!
//! A request can be lost downstream (dead-lettered after repeated unknown outcomes, a queue
//! purged by an operator); re-driving is always safe because the gateway charges a payment
//! id at most once and the wallet finalizes a payment at most once. Several wallet-service
//! instances share the work through `SKIP LOCKED`.
//!
//! Re-drives of one payment back off exponentially (deadline, 2×, 4×, … up to a cap), and
//! after a budget of re-drives the payment is flagged for an operator instead of being sent
//! again: during a long gateway outage the messages sent stay bounded by pending payments ×
//! budget, rather than growing with pending payments × minutes of outage.

use crate::outbox::{self, Channel};
use shared::events::{PaymentRequested, RefundRequested, RequestedPayment, RequestedRefund};
use shared::ids::{EventId, PaymentId, RefundId, WalletId};
use shared::money::{Amount, Currency};
use shared::shutdown::Shutdown;
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

pub struct Reconciler {
    pub pool: PgPool,
    pub policy: RedrivePolicy,
    pub batch_size: i64,
    /// Rung after a pass that re-drove something.
    pub doorbell: crate::outbox::Doorbell,
}

/// When a pending payment is sent again, and when the reconciler gives up on it.
#[derive(Debug, Clone, Copy)]
pub struct RedrivePolicy {
    /// How long a payment may stay pending before its first re-drive.
    pub deadline: Duration,
    /// The longest wait between two re-drives of one payment.
    pub max_backoff: Duration,
    /// Re-drives before the payment is flagged for an operator instead.
    pub max_redrives: i32,
}

impl RedrivePolicy {
    /// The wait after the `n`th re-drive (0 = since acceptance) before the next one.
    pub fn wait_after(&self, n: i32) -> Duration {
        let factor = 2f64.powi(n.clamp(0, 30));
        Duration::from_secs_f64(
            (self.deadline.as_secs_f64() * factor).min(self.max_backoff.as_secs_f64()),
        )
    }
}

pub fn describe_metrics() {
    metrics::describe_counter!(
        "payments_redriven_total",
        "Pending payments re-sent through the outbox after the reconciler deadline."
    );
    metrics::describe_gauge!(
        "payments_pending",
        "Payments accepted and not yet finalized."
    );
    metrics::describe_counter!(
        "payments_redrive_exhausted_total",
        "Pending payments flagged for an operator after their re-drive budget was spent."
    );
    metrics::describe_gauge!(
        "payments_needing_attention",
        "Pending payments flagged for an operator (listed by `wallet-service review`)."
    );
    metrics::describe_gauge!(
        "payment_outcome_conflicts_open",
        "Contradicting results not yet resolved by an operator (payment_outcome_conflicts)."
    );
    metrics::describe_gauge!(
        "payments_pending_oldest_age_seconds",
        metrics::Unit::Seconds,
        "Age of the oldest pending payment."
    );
    metrics::describe_gauge!("refunds_pending", "Refunds accepted and not yet finalized.");
    metrics::describe_gauge!(
        "refunds_pending_oldest_age_seconds",
        metrics::Unit::Seconds,
        "Age of the oldest pending refund."
    );
    metrics::describe_counter!(
        "refunds_redriven_total",
        "Pending refunds re-sent through the outbox after the reconciler deadline."
    );
    metrics::describe_gauge!(
        "refunds_needing_attention",
        "Pending refunds flagged for an operator after their re-drive budget was spent."
    );
}

impl Reconciler {
    pub async fn run(self, mut shutdown: Shutdown) {
        let period =
            (self.policy.deadline / 4).clamp(Duration::from_millis(100), Duration::from_secs(15));
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait() => break,
            }
            // The gauges are for operators; failing to refresh them must not stop re-drives.
            if let Err(e) = self.export_pending().await {
                tracing::warn!(error = %e, "reconciler cannot count pending payments");
            }
            match self.redrive_batch().await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(
                        payments = n,
                        "re-drove payments pending past their deadline"
                    )
                }
                Err(e) => tracing::warn!(error = %e, "reconciler pass failed; will retry"),
            }
            match self.redrive_refunds().await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(refunds = n, "re-drove refunds pending past their deadline")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reconciler pass over refunds failed; will retry")
                }
            }
        }
        tracing::info!("reconciler stopped");
    }

    async fn export_pending(&self) -> Result<(), sqlx::Error> {
        // Each figure from the partial index that holds just its rows, read alone (an
        // index-only count, the first entry for the oldest): no pending row is read from the
        // table, however many an outage leaves flagged for an operator.
        let (redrivable, age, attention, conflicts): (i64, f64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM payments
                     WHERE status = 'pending' AND attention_since IS NULL),
                    COALESCE(EXTRACT(EPOCH FROM now() - (SELECT min(created_at) FROM payments
                                                         WHERE status = 'pending'))::float8, 0),
                    (SELECT count(*) FROM payments
                     WHERE status = 'pending' AND attention_since IS NOT NULL),
                    (SELECT count(*) FROM payment_outcome_conflicts WHERE resolved_at IS NULL)",
        )
        .fetch_one(&self.pool)
        .await?;
        let count = redrivable + attention;
        metrics::gauge!("payments_pending").set(count as f64);
        metrics::gauge!("payments_pending_oldest_age_seconds").set(age);
        metrics::gauge!("payments_needing_attention").set(attention as f64);
        metrics::gauge!("payment_outcome_conflicts_open").set(conflicts as f64);
        let (count, age, redrivable): (i64, f64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM refunds WHERE status = 'pending'),
                    COALESCE(EXTRACT(EPOCH FROM now() - (SELECT min(created_at) FROM refunds
                                                         WHERE status = 'pending'))::float8, 0),
                    (SELECT count(*) FROM refunds
                     WHERE status = 'pending' AND attention_since IS NULL)",
        )
        .fetch_one(&self.pool)
        .await?;
        let attention = count - redrivable;
        metrics::gauge!("refunds_pending").set(count as f64);
        metrics::gauge!("refunds_pending_oldest_age_seconds").set(age);
        metrics::gauge!("refunds_needing_attention").set(attention as f64);
        Ok(())
    }

    /// Re-drives one batch of overdue payments, flagging those whose budget is spent.
    /// Returns how many were re-driven.
    pub async fn redrive_batch(&self) -> Result<usize, sqlx::Error> {
        let p = self.policy;
        let mut tx = self.pool.begin().await?;
        // Due: the wait after the last re-drive (deadline × 2^count, capped) has passed.
        let overdue: Vec<Overdue> = sqlx::query_as(
            "SELECT id, wallet_id, amount, currency, merchant_id, redrive_count FROM payments
             WHERE status = 'pending' AND attention_since IS NULL
               AND COALESCE(last_redrive_at, created_at)
                   + make_interval(secs => LEAST($1 * power(2, LEAST(redrive_count, 30)), $2)) < now()
             ORDER BY created_at LIMIT $3
             FOR UPDATE SKIP LOCKED",
        )
        .bind(p.deadline.as_secs_f64())
        .bind(p.max_backoff.as_secs_f64())
        .bind(self.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        let (exhausted, due): (Vec<&Overdue>, Vec<&Overdue>) = overdue
            .iter()
            .partition(|o| o.redrive_count >= p.max_redrives);
        let mut redriven = Vec::with_capacity(due.len());
        for o in due {
            let (Ok(amount), Ok(currency)) =
                (Amount::new(o.amount), o.currency.parse::<Currency>())
            else {
                tracing::error!(
                    payment_id = %o.id,
                    "pending payment has an invalid amount or currency; not re-driven",
                );
                continue;
            };
            let event = PaymentRequested::new(
                EventId::new(),
                chrono::Utc::now(),
                RequestedPayment {
                    id: PaymentId(o.id),
                    wallet_id: WalletId(o.wallet_id),
                    amount,
                    currency,
                    merchant_id: o.merchant_id.clone(),
                },
            );
            outbox::enqueue(&mut tx, &event, &shared::trace::new_traceparent()).await?;
            // Every pending payment comes here during a gateway outage; the pass's own line
            // below counts them all.
            shared::warn_throttled!(
                payment_id = %o.id,
                redrive = o.redrive_count + 1,
                of = p.max_redrives,
                next_in_secs = p.wait_after(o.redrive_count + 1).as_secs_f64(),
                "payment still pending past its deadline; re-driving it"
            );
            redriven.push(o.id);
        }
        let flagged: Vec<Uuid> = exhausted.iter().map(|o| o.id).collect();
        mark(&mut tx, "payments", &redriven, &flagged).await?;
        tx.commit().await?;
        if !redriven.is_empty() {
            self.doorbell.ring(Channel::Payments);
        }
        for id in &flagged {
            tracing::error!(
                payment_id = %id,
                redrives = p.max_redrives,
                "payment still pending after its last re-drive; no more re-drives, funds stay held: an operator must check it with the gateway (wallet-service review)"
            );
        }
        metrics::counter!("payments_redriven_total").increment(redriven.len() as u64);
        metrics::counter!("payments_redrive_exhausted_total").increment(flagged.len() as u64);
        Ok(redriven.len())
    }
}

/// Counts a re-drive on the `redriven` rows of `table` (payments or refunds) and flags the
/// `flagged` ones for an operator.
async fn mark(
    conn: &mut sqlx::PgConnection,
    table: &'static str,
    redriven: &[Uuid],
    flagged: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "UPDATE {table} SET redrive_count = redrive_count + 1, last_redrive_at = now() \
         WHERE id = ANY($1)"
    ))
    .bind(redriven)
    .execute(&mut *conn)
    .await?;
    if !flagged.is_empty() {
        sqlx::query(&format!(
            "UPDATE {table} SET attention_since = now() WHERE id = ANY($1)"
        ))
        .bind(flagged)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

impl Reconciler {
    /// [`Reconciler::redrive_batch`] for refunds: the same policy, on the refunds table.
    /// Re-driving a refund is safe for the same reasons: the gateway refunds a refund id at
    /// most once and the wallet applies a refund's result at most once.
    pub async fn redrive_refunds(&self) -> Result<usize, sqlx::Error> {
        let p = self.policy;
        let mut tx = self.pool.begin().await?;
        let overdue: Vec<OverdueRefund> = sqlx::query_as(
            "SELECT r.id, r.payment_id, r.wallet_id, r.amount, r.currency, p.merchant_id,
                    r.redrive_count
             FROM refunds r JOIN payments p ON p.id = r.payment_id
             WHERE r.status = 'pending' AND r.attention_since IS NULL
               AND COALESCE(r.last_redrive_at, r.created_at)
                   + make_interval(secs => LEAST($1 * power(2, LEAST(r.redrive_count, 30)), $2)) < now()
             ORDER BY r.created_at LIMIT $3
             FOR UPDATE OF r SKIP LOCKED",
        )
        .bind(p.deadline.as_secs_f64())
        .bind(p.max_backoff.as_secs_f64())
        .bind(self.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        let mut redriven = Vec::new();
        let mut flagged = Vec::new();
        for o in &overdue {
            if o.redrive_count >= p.max_redrives {
                flagged.push(o.id);
                continue;
            }
            let (Ok(amount), Ok(currency)) =
                (Amount::new(o.amount), o.currency.parse::<Currency>())
            else {
                tracing::error!(refund_id = %o.id, "pending refund has an invalid amount or currency; not re-driven");
                continue;
            };
            let event = RefundRequested::new(
                EventId::new(),
                chrono::Utc::now(),
                RequestedRefund {
                    id: RefundId(o.id),
                    payment_id: PaymentId(o.payment_id),
                    wallet_id: WalletId(o.wallet_id),
                    amount,
                    currency,
                    merchant_id: o.merchant_id.clone(),
                },
            );
            outbox::enqueue_refund(&mut tx, &event, &shared::trace::new_traceparent()).await?;
            tracing::warn!(
                refund_id = %o.id,
                payment_id = %o.payment_id,
                redrive = o.redrive_count + 1,
                of = p.max_redrives,
                "refund still pending past its deadline; re-driving it"
            );
            redriven.push(o.id);
        }
        mark(&mut tx, "refunds", &redriven, &flagged).await?;
        tx.commit().await?;
        if !redriven.is_empty() {
            self.doorbell.ring(Channel::Payments);
        }
        for id in &flagged {
            tracing::error!(
                refund_id = %id,
                redrives = p.max_redrives,
                "refund still pending after its last re-drive; no more re-drives, its amount stays reserved on the payment: an operator must check it with the gateway"
            );
        }
        metrics::counter!("refunds_redriven_total").increment(redriven.len() as u64);
        Ok(redriven.len())
    }
}

#[derive(sqlx::FromRow)]
struct OverdueRefund {
    id: Uuid,
    payment_id: Uuid,
    wallet_id: Uuid,
    amount: i64,
    currency: String,
    merchant_id: String,
    redrive_count: i32,
}

#[derive(sqlx::FromRow)]
struct Overdue {
    id: Uuid,
    wallet_id: Uuid,
    amount: i64,
    currency: String,
    merchant_id: String,
    redrive_count: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap() {
        let p = RedrivePolicy {
            deadline: Duration::from_secs(60),
            max_backoff: Duration::from_secs(600),
            max_redrives: 8,
        };
        let waits: Vec<u64> = (0..7).map(|n| p.wait_after(n).as_secs()).collect();
        assert_eq!(waits, [60, 120, 240, 480, 600, 600, 600]);
        assert_eq!(p.wait_after(i32::MAX).as_secs(), 600);
    }
}
