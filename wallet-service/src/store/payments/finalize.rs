//! Finalizing a payment: one statement that records the result in the inbox, moves the
//! payment out of pending at most once, and writes its ledger entry and event.

use crate::outbox;
use crate::store::ledger::EntryKind;
use chrono::{DateTime, Utc};
use shared::ids::{EventId, PaymentId, WalletId};
use shared::money::{Amount, Currency};
use shared::notifications::{BalanceAfter, Finalized, FinalizedPayment, PaymentFinalized};
use shared::status::{FailureReason, Outcome, PaymentStatus};
use sqlx::PgConnection;
use uuid::Uuid;

/// What applying one result did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The payment moved from pending to its final status.
    Finalized {
        status: PaymentStatus,
        pending_for: chrono::Duration,
    },
    /// This event id was applied before.
    DuplicateEvent,
    /// The payment was already final; the result changes nothing. When `status` is not the
    /// result's outcome, the two disagree: see [`record_conflict`].
    AlreadyFinal {
        status: PaymentStatus,
        gateway_reference: Option<String>,
    },
    /// No such payment.
    UnknownPayment,
}

/// What the finalizing statement returns: whether the inbox row is new, and, when the
/// status guard moved the payment, the payment and the wallet's balances after it.
struct Finalizing {
    fresh: bool,
    wallet_id: Option<Uuid>,
    amount: Option<i64>,
    currency: Option<String>,
    merchant_id: Option<String>,
    created_at: Option<DateTime<Utc>>,
    finalized_at: Option<DateTime<Utc>>,
    available_after: Option<i64>,
    held_after: Option<i64>,
}

/// The payment the status guard moved, with the wallet's balances after it.
struct Moved {
    wallet_id: Uuid,
    amount: i64,
    currency: String,
    merchant_id: String,
    created_at: DateTime<Utc>,
    finalized_at: DateTime<Utc>,
    available_after: i64,
    held_after: i64,
}

impl Finalizing {
    /// What the guard moved: every column or none (the joins are on one row each).
    fn moved(self) -> Option<Moved> {
        Some(Moved {
            wallet_id: self.wallet_id?,
            amount: self.amount?,
            currency: self.currency?,
            merchant_id: self.merchant_id?,
            created_at: self.created_at?,
            finalized_at: self.finalized_at?,
            available_after: self.available_after?,
            held_after: self.held_after?,
        })
    }
}

/// Applies one gateway result. Exactly once per event id (the inbox), and at most one
/// transition per payment (`WHERE status = 'pending'`), however often results arrive; the
/// transition writes its ledger entry and its `payment.finalized` event.
pub async fn finalize(
    conn: &mut PgConnection,
    event_id: EventId,
    payment_id: PaymentId,
    outcome: Outcome,
    failure_reason: Option<FailureReason>,
    gateway_reference: Option<&str>,
) -> Result<Applied, sqlx::Error> {
    let status = PaymentStatus::from(outcome);
    let kind = match outcome {
        Outcome::Succeeded => EntryKind::Capture,
        Outcome::Failed => EntryKind::Release,
    };
    // The status guard (a pending payment moves once), the inbox row (was this event id
    // seen before?), the balance change and its ledger entry, as one statement: one round
    // trip on the path every result takes instead of four. Data-modifying CTEs all run, in
    // one snapshot; the later ones read the rows the guard moved, so nothing but the inbox
    // row is written when the payment was not pending. Capture removes the amount from
    // `held`; release (`$7`) also moves it back to `available`.
    let row = sqlx::query_as!(
        Finalizing,
        r#"WITH moved AS (
            UPDATE payments
            SET status = $2, failure_reason = $3, gateway_reference = $4, finalized_at = now(), updated_at = now()
            WHERE id = $1 AND status = 'pending'
            RETURNING wallet_id, amount, currency, merchant_id, created_at, finalized_at
        ), inbox AS (
            INSERT INTO processed_events (event_id, payment_id, outcome, applied)
            SELECT $5, $1, $6, EXISTS (SELECT 1 FROM moved)
            ON CONFLICT (event_id) DO NOTHING
            RETURNING event_id
        ), balance AS (
            UPDATE wallets w
            SET held = w.held - m.amount,
                available = w.available + CASE WHEN $7 THEN m.amount ELSE 0 END,
                updated_at = now()
            FROM moved m
            WHERE w.id = m.wallet_id
            RETURNING w.available, w.held
        ), entry AS (
            INSERT INTO ledger_entries (id, wallet_id, kind, amount, payment_id, reference, available_after, held_after)
            SELECT $8, m.wallet_id, $9, m.amount, $1, $4, b.available, b.held FROM moved m, balance b
        )
        SELECT EXISTS (SELECT 1 FROM inbox) AS "fresh!",
               m.wallet_id AS "wallet_id?", m.amount AS "amount?", m.currency AS "currency?",
               m.merchant_id AS "merchant_id?", m.created_at AS "created_at?",
               m.finalized_at AS "finalized_at?", b.available AS "available_after?",
               b.held AS "held_after?"
        FROM (SELECT 1) AS one LEFT JOIN moved m ON true LEFT JOIN balance b ON true"#,
        payment_id.0,
        status.as_str(),
        failure_reason.map(FailureReason::as_str),
        gateway_reference,
        event_id.0,
        outcome.as_str(),
        kind == EntryKind::Release,
        Uuid::now_v7(),
        kind.as_str(),
    )
    .fetch_one(&mut *conn)
    .await?;

    if row.wallet_id.is_some() && row.available_after.is_none() {
        // The guard moved a payment whose wallet row is gone: refuse, roll back.
        return Err(sqlx::Error::Protocol(format!(
            "payment {payment_id} moved without its wallet"
        )));
    }
    let fresh = row.fresh;
    let moved = row.moved();
    match (fresh, moved.is_some()) {
        (false, false) => return Ok(Applied::DuplicateEvent),
        // An event already applied cannot find its payment pending: refuse, roll back.
        (false, true) => {
            return Err(sqlx::Error::Protocol(format!(
                "event {event_id} applied twice"
            )))
        }
        _ => {}
    }

    let Some(Moved {
        wallet_id,
        amount,
        currency,
        merchant_id,
        created_at,
        finalized_at,
        available_after,
        held_after,
    }) = moved
    else {
        let current = sqlx::query!(
            "SELECT status, gateway_reference FROM payments WHERE id = $1",
            payment_id.0,
        )
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| (r.status, r.gateway_reference));
        return Ok(match current {
            Some((s, gateway_reference)) => match PaymentStatus::parse(&s) {
                Some(status) => Applied::AlreadyFinal {
                    status,
                    gateway_reference,
                },
                None => Applied::UnknownPayment,
            },
            None => Applied::UnknownPayment,
        });
    };
    let currency = Currency::try_from(currency).map_err(|e| sqlx::Error::Decode(e.into()))?;
    let amount = Amount::new(amount).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let event = PaymentFinalized::new(
        WalletId(wallet_id),
        finalized_at,
        Finalized {
            payment: FinalizedPayment {
                id: payment_id,
                amount,
                currency,
                merchant_id,
                status,
                failure_reason,
                gateway_reference: gateway_reference.map(str::to_owned),
                created_at,
                finalized_at,
            },
            balance: BalanceAfter {
                available: available_after,
                held: held_after,
            },
        },
    );
    outbox::enqueue_notification(conn, &event, None).await?;
    Ok(Applied::Finalized {
        status,
        pending_for: finalized_at - created_at,
    })
}

/// A result that contradicts a payment's final status, as operators list it
/// (`payment_outcome_conflicts`).
pub struct Conflict<'a> {
    pub event_id: EventId,
    pub payment_id: PaymentId,
    pub recorded_status: PaymentStatus,
    pub recorded_reference: Option<&'a str>,
    pub reported_outcome: Outcome,
    pub reported_reason: Option<FailureReason>,
    pub reported_reference: Option<&'a str>,
}

/// Keeps a contradicting result for operators. Nothing about the payment changes: which side
/// is right is for a person to find out with the gateway.
pub async fn record_conflict(conn: &mut PgConnection, c: &Conflict<'_>) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO payment_outcome_conflicts
           (event_id, payment_id, recorded_status, reported_outcome, reported_reason,
            reported_reference, recorded_reference)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (event_id) DO NOTHING",
        c.event_id.0,
        c.payment_id.0,
        c.recorded_status.as_str(),
        c.reported_outcome.as_str(),
        c.reported_reason.map(FailureReason::as_str),
        c.reported_reference,
        c.recorded_reference,
    )
    .execute(conn)
    .await?;
    Ok(())
}
