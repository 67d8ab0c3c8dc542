//! Refunds: accepting one (the amount reserved against its payment, `accept`), applying the
//! gateway's answer (`finalize`), and reading them back.
//!
//! Nothing is credited before the gateway said yes: accepting only reserves the amount on
//! the payment (`payments.refund_reserved`), so that concurrent refunds cannot together
//! exceed what was captured (the `payments_refunds_within_captured` CHECK backs this); the
//! wallet is credited, with a `refund` ledger entry, when the success is applied.

use crate::outbox;
use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::events::{RefundRequested, RequestedRefund};
use shared::ids::{EventId, PaymentId, RefundId, WalletId};
use shared::money::{Amount, Currency};
use shared::notifications::{BalanceAfter, PaymentRefunded, RefundFact, Refunded};
use shared::status::{FailureReason, Outcome, PaymentStatus, RefundStatus};
use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Refund {
    pub id: Uuid,
    pub payment_id: Uuid,
    pub wallet_id: Uuid,
    pub amount: i64,
    #[sqlx(try_from = "String")]
    pub currency: Currency,
    pub reason: Option<String>,
    #[sqlx(try_from = "String")]
    pub status: RefundStatus,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finalized_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub owner_id: String,
}

const REFUND_COLUMNS: &str = "id, payment_id, wallet_id, amount, currency, reason, status, \
     failure_reason, created_at, finalized_at, owner_id";

/// The payment a refund is asked for, locked for the rest of the transaction.
#[derive(sqlx::FromRow)]
struct Refundable {
    wallet_id: Uuid,
    owner_id: String,
    amount: i64,
    currency: String,
    merchant_id: String,
    status: String,
    refunded: i64,
    refund_reserved: i64,
}

#[derive(Debug)]
pub enum AcceptOutcome {
    Accepted(Refund),
    PaymentNotFound,
    /// Only a succeeded payment has anything to refund.
    NotRefundable {
        status: PaymentStatus,
    },
    /// More than what is left of the capture (refunded and pending refunds deducted).
    ExceedsCaptured {
        refundable: i64,
    },
}

pub struct NewRefund<'a> {
    pub id: RefundId,
    pub payment_id: PaymentId,
    /// `None`: whatever is left to refund.
    pub amount: Option<Amount>,
    pub reason: Option<&'a str>,
}

/// Reserves the amount against the payment and writes the refund and its
/// `refund.requested` outbox row, in the caller's transaction.
///
/// The payment row is locked first (`FOR UPDATE`), so concurrent refunds of one payment
/// queue behind each other and each sees what the previous ones reserved.
pub async fn accept(
    conn: &mut PgConnection,
    new: NewRefund<'_>,
    traceparent: &str,
) -> Result<AcceptOutcome, sqlx::Error> {
    let payment: Option<Refundable> = sqlx::query_as(
        "SELECT wallet_id, owner_id, amount, currency, merchant_id, status, refunded,
                refund_reserved
         FROM payments WHERE id = $1 FOR UPDATE",
    )
    .bind(new.payment_id.0)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(p) = payment else {
        return Ok(AcceptOutcome::PaymentNotFound);
    };
    let status = PaymentStatus::try_from(p.status).map_err(|e| sqlx::Error::Decode(e.into()))?;
    if status != PaymentStatus::Succeeded {
        return Ok(AcceptOutcome::NotRefundable { status });
    }
    let refundable = p.amount - p.refunded - p.refund_reserved;
    let amount = match new.amount {
        Some(a) if a.minor_units() <= refundable => a,
        None if refundable > 0 => Amount::new(refundable).map_err(|e| decode(e.to_string()))?,
        _ => return Ok(AcceptOutcome::ExceedsCaptured { refundable }),
    };

    let refund: Refund = sqlx::query_as(&format!(
        "WITH reserve AS (
            UPDATE payments SET refund_reserved = refund_reserved + $4, updated_at = now()
            WHERE id = $2
         )
         INSERT INTO refunds (id, payment_id, wallet_id, owner_id, amount, currency, reason)
         VALUES ($1, $2, $3, $5, $4, $6, $7)
         RETURNING {REFUND_COLUMNS}"
    ))
    .bind(new.id.0)
    .bind(new.payment_id.0)
    .bind(p.wallet_id)
    .bind(amount.minor_units())
    .bind(&p.owner_id)
    .bind(&p.currency)
    .bind(new.reason)
    .fetch_one(&mut *conn)
    .await?;

    let currency: Currency = p.currency.parse().map_err(|e| decode(format!("{e}")))?;
    let event = RefundRequested::new(
        EventId::new(),
        refund.created_at,
        RequestedRefund {
            id: new.id,
            payment_id: new.payment_id,
            wallet_id: WalletId(p.wallet_id),
            amount,
            currency,
            merchant_id: p.merchant_id,
        },
    );
    outbox::enqueue_refund(&mut *conn, &event, traceparent).await?;
    Ok(AcceptOutcome::Accepted(refund))
}

fn decode(e: String) -> sqlx::Error {
    sqlx::Error::Decode(e.into())
}

pub async fn get(conn: &mut PgConnection, id: RefundId) -> Result<Option<Refund>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE id = $1"
    ))
    .bind(id.0)
    .fetch_optional(conn)
    .await
}

/// The most refunds one payment's list returns. A payment can only be split into so many
/// refunds of at least one cent, but the list is bounded by a constant, not by the amount.
pub const LIST_LIMIT: i64 = 100;

/// A payment's refunds, oldest first (at most [`LIST_LIMIT`]).
pub async fn list_for_payment(
    conn: &mut PgConnection,
    payment_id: PaymentId,
) -> Result<Vec<Refund>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE payment_id = $1
         ORDER BY created_at, id LIMIT $2"
    ))
    .bind(payment_id.0)
    .bind(LIST_LIMIT)
    .fetch_all(conn)
    .await
}

/// What applying one refund result did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The refund moved from pending to its final status.
    Finalized {
        status: RefundStatus,
        amount: i64,
        pending_for: chrono::Duration,
    },
    /// This event id was applied before.
    DuplicateEvent,
    /// The refund was already final; the result changes nothing.
    AlreadyFinal { status: RefundStatus },
    /// No such refund.
    UnknownRefund,
}

/// What the finalizing statement returns (see [`finalize`]).
#[derive(sqlx::FromRow)]
struct Finalizing {
    fresh: bool,
    payment_id: Option<Uuid>,
    wallet_id: Option<Uuid>,
    amount: Option<i64>,
    currency: Option<String>,
    reason: Option<String>,
    created_at: Option<DateTime<Utc>>,
    finalized_at: Option<DateTime<Utc>>,
    available_after: Option<i64>,
    held_after: Option<i64>,
    refunded_total: Option<i64>,
}

/// The result of one refund, as the finalizer read it.
pub struct RefundOutcome<'a> {
    pub event_id: EventId,
    pub refund_id: RefundId,
    pub payment_id: PaymentId,
    pub outcome: Outcome,
    pub failure_reason: Option<FailureReason>,
    pub gateway_reference: Option<&'a str>,
}

/// Applies one refund result: exactly once per event id (the inbox) and at most one
/// transition per refund (`WHERE status = 'pending'`). A success moves the amount from the
/// payment's reservation to its `refunded`, credits `available` with a `refund` ledger
/// entry, and writes `payment.refunded`; a failure only drops the reservation.
pub async fn finalize(
    conn: &mut PgConnection,
    r: &RefundOutcome<'_>,
) -> Result<Applied, sqlx::Error> {
    let status = PaymentStatus::from(r.outcome);
    let succeeded = r.outcome == Outcome::Succeeded;
    // One statement, like the payment's finalization: data-modifying CTEs share one
    // snapshot, and everything after the guard reads only the row it moved.
    let row: Finalizing = sqlx::query_as(
        "WITH moved AS (
            UPDATE refunds
            SET status = $2, failure_reason = $3, gateway_reference = $4, finalized_at = now(),
                updated_at = now()
            WHERE id = $1 AND status = 'pending'
            RETURNING id, payment_id, wallet_id, amount, currency, reason, created_at, finalized_at
        ), inbox AS (
            INSERT INTO processed_events (event_id, payment_id, refund_id, outcome, applied)
            SELECT $5, $6, $1, $7, EXISTS (SELECT 1 FROM moved)
            ON CONFLICT (event_id) DO NOTHING
            RETURNING event_id
        ), payment AS (
            UPDATE payments p
            SET refund_reserved = p.refund_reserved - m.amount,
                refunded = p.refunded + CASE WHEN $8 THEN m.amount ELSE 0 END,
                updated_at = now()
            FROM moved m
            WHERE p.id = m.payment_id
            RETURNING p.refunded
        ), balance AS (
            UPDATE wallets w
            SET available = w.available + m.amount, updated_at = now()
            FROM moved m
            WHERE $8 AND w.id = m.wallet_id
            RETURNING w.available, w.held
        ), entry AS (
            INSERT INTO ledger_entries
                (id, wallet_id, kind, amount, payment_id, refund_id, reference, available_after, held_after)
            SELECT $9, m.wallet_id, 'refund', m.amount, m.payment_id, m.id, $4, b.available, b.held
            FROM moved m, balance b
        )
        SELECT EXISTS (SELECT 1 FROM inbox) AS fresh,
               m.payment_id, m.wallet_id, m.amount, m.currency::text AS currency, m.reason,
               m.created_at, m.finalized_at, b.available AS available_after,
               b.held AS held_after, pay.refunded AS refunded_total
        FROM (SELECT 1) AS one LEFT JOIN moved m ON true LEFT JOIN balance b ON true
             LEFT JOIN payment pay ON true",
    )
    .bind(r.refund_id.0)
    .bind(status.as_str())
    .bind(r.failure_reason.map(FailureReason::as_str))
    .bind(r.gateway_reference)
    .bind(r.event_id.0)
    .bind(r.payment_id.0)
    .bind(r.outcome.as_str())
    .bind(succeeded)
    .bind(Uuid::now_v7())
    .fetch_one(&mut *conn)
    .await?;

    let moved = row.amount.is_some();
    match (row.fresh, moved) {
        (false, false) => return Ok(Applied::DuplicateEvent),
        (false, true) => {
            return Err(sqlx::Error::Protocol(format!(
                "event {} applied twice",
                r.event_id
            )))
        }
        (true, false) => {
            let current: Option<(String,)> =
                sqlx::query_as("SELECT status FROM refunds WHERE id = $1")
                    .bind(r.refund_id.0)
                    .fetch_optional(&mut *conn)
                    .await?;
            return Ok(match current.and_then(|(s,)| PaymentStatus::parse(&s)) {
                Some(status) => Applied::AlreadyFinal { status },
                None => Applied::UnknownRefund,
            });
        }
        (true, true) => {}
    }
    let (Some(payment_id), Some(wallet_id), Some(amount), Some(created_at), Some(finalized_at)) = (
        row.payment_id,
        row.wallet_id,
        row.amount,
        row.created_at,
        row.finalized_at,
    ) else {
        return Err(sqlx::Error::Protocol("refund moved without its row".into()));
    };
    if row.refunded_total.is_none() || (succeeded && row.available_after.is_none()) {
        // The guard moved a refund whose payment or wallet row is gone: roll back.
        return Err(sqlx::Error::Protocol(format!(
            "refund {} moved without its payment or wallet",
            r.refund_id
        )));
    }
    if let (true, Some(available), Some(held)) = (succeeded, row.available_after, row.held_after) {
        let currency: Currency = row
            .currency
            .unwrap_or_default()
            .parse()
            .map_err(|e| decode(format!("{e}")))?;
        let event = PaymentRefunded::new(
            WalletId(wallet_id),
            finalized_at,
            Refunded {
                refund: RefundFact {
                    id: r.refund_id,
                    payment_id: PaymentId(payment_id),
                    amount: Amount::new(amount).map_err(|e| decode(e.to_string()))?,
                    currency,
                    reason: row.reason,
                    gateway_reference: r.gateway_reference.map(str::to_owned),
                    payment_refunded_total: row.refunded_total.unwrap_or_default(),
                    created_at,
                    finalized_at,
                },
                balance: BalanceAfter { available, held },
            },
        );
        outbox::enqueue_notification(conn, &event, None).await?;
    }
    Ok(Applied::Finalized {
        status,
        amount,
        pending_for: finalized_at - created_at,
    })
}
