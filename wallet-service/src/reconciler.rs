//! The reconciler: a payment still `pending` past a deadline is sent through the outbox
//! again.
//!
//! A request can be lost downstream (dead-lettered after repeated unknown outcomes, a queue
//! purged by an operator); re-driving is always safe because the gateway charges a payment
//! id at most once and the wallet finalizes a payment at most once. Each payment is re-driven
//! at most once per deadline, and several wallet-service instances share the work through
//! `SKIP LOCKED`.

use crate::outbox;
use shared::events::{PaymentRequested, RequestedPayment};
use shared::ids::{EventId, PaymentId, WalletId};
use shared::money::{Amount, Currency};
use shared::shutdown::Shutdown;
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

pub struct Reconciler {
    pub pool: PgPool,
    /// How long a payment may stay pending before it is re-driven.
    pub deadline: Duration,
    pub batch_size: i64,
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
    metrics::describe_gauge!(
        "payments_pending_oldest_age_seconds",
        metrics::Unit::Seconds,
        "Age of the oldest pending payment."
    );
}

impl Reconciler {
    pub async fn run(self, mut shutdown: Shutdown) {
        let period = (self.deadline / 4).clamp(Duration::from_millis(200), Duration::from_secs(15));
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait() => break,
            }
            if let Err(e) = self.export_pending().await {
                tracing::warn!(error = %e, "reconciler cannot read pending payments");
                continue;
            }
            match self.redrive_batch().await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(payments = n, "re-drove payments pending past the deadline")
                }
                Err(e) => tracing::warn!(error = %e, "reconciler pass failed; will retry"),
            }
        }
        tracing::info!("reconciler stopped");
    }

    async fn export_pending(&self) -> Result<(), sqlx::Error> {
        let (count, age): (i64, f64) = sqlx::query_as(
            "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0)
             FROM payments WHERE status = 'pending'",
        )
        .fetch_one(&self.pool)
        .await?;
        metrics::gauge!("payments_pending").set(count as f64);
        metrics::gauge!("payments_pending_oldest_age_seconds").set(age);
        Ok(())
    }

    /// Re-drives one batch of overdue payments. Returns how many.
    pub async fn redrive_batch(&self) -> Result<usize, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let overdue: Vec<(Uuid, Uuid, i64, String, String)> = sqlx::query_as(
            "SELECT id, wallet_id, amount, currency, merchant_id FROM payments
             WHERE status = 'pending'
               AND COALESCE(last_redrive_at, created_at) < now() - make_interval(secs => $1)
             ORDER BY created_at LIMIT $2
             FOR UPDATE SKIP LOCKED",
        )
        .bind(self.deadline.as_secs_f64())
        .bind(self.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        for (id, wallet_id, amount, currency, merchant_id) in &overdue {
            let (Ok(amount), Ok(currency)) = (Amount::new(*amount), currency.parse::<Currency>())
            else {
                tracing::error!(payment_id = %id, "pending payment has an invalid amount or currency; not re-driven");
                continue;
            };
            let event = PaymentRequested::new(
                EventId::new(),
                chrono::Utc::now(),
                RequestedPayment {
                    id: PaymentId(*id),
                    wallet_id: WalletId(*wallet_id),
                    amount,
                    currency,
                    merchant_id: merchant_id.clone(),
                },
            );
            outbox::enqueue(&mut tx, &event, &shared::trace::new_traceparent()).await?;
            tracing::warn!(payment_id = %id, "payment still pending past the deadline; re-driving it");
        }
        let ids: Vec<Uuid> = overdue.iter().map(|r| r.0).collect();
        sqlx::query("UPDATE payments SET redrive_count = redrive_count + 1, last_redrive_at = now() WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        metrics::counter!("payments_redriven_total").increment(ids.len() as u64);
        Ok(ids.len())
    }
}
