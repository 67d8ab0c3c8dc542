//! Payments: accepting one (the hold) and finalizing one (capture or release).

use super::cursor::TimeCursor;
use super::ledger::EntryKind;
use super::window::Window;
use crate::outbox;
use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::events::{PaymentRequested, RequestedPayment};
use shared::ids::{EventId, PaymentId, WalletId};
use shared::money::{Amount, Currency};
use shared::notifications::{
    AlertedPayment, BalanceAfter, Finalized, FinalizedPayment, LargePayment, PaymentAlert,
    PaymentFinalized,
};
use shared::status::{FailureReason, Outcome, PaymentStatus};
use sqlx::{PgConnection, Postgres, QueryBuilder};
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Payment {
    pub id: Uuid,
    pub wallet_id: Uuid,
    pub amount: i64,
    #[sqlx(try_from = "String")]
    pub currency: Currency,
    pub merchant_id: String,
    pub description: Option<String>,
    #[sqlx(try_from = "String")]
    pub status: PaymentStatus,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finalized_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub owner_id: String,
}

const PAYMENT_COLUMNS: &str = "id, wallet_id, amount, currency, merchant_id, description, status, \
     failure_reason, created_at, updated_at, finalized_at, owner_id";

/// A `payments` row as the compile-time checked statements return it (`query_as!` fills
/// fields of the column types; [`Payment`] is the checked, typed form).
struct PaymentRow {
    id: Uuid,
    wallet_id: Uuid,
    amount: i64,
    currency: String,
    merchant_id: String,
    description: Option<String>,
    status: String,
    failure_reason: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finalized_at: Option<DateTime<Utc>>,
    owner_id: String,
}

impl TryFrom<PaymentRow> for Payment {
    type Error = sqlx::Error;

    fn try_from(r: PaymentRow) -> Result<Self, Self::Error> {
        let decode = |e: String| sqlx::Error::Decode(e.into());
        Ok(Self {
            id: r.id,
            wallet_id: r.wallet_id,
            amount: r.amount,
            currency: Currency::try_from(r.currency).map_err(|e| decode(e.to_string()))?,
            merchant_id: r.merchant_id,
            description: r.description,
            status: PaymentStatus::try_from(r.status).map_err(|e| decode(e.to_string()))?,
            failure_reason: r.failure_reason,
            created_at: r.created_at,
            updated_at: r.updated_at,
            finalized_at: r.finalized_at,
            owner_id: r.owner_id,
        })
    }
}

pub struct NewPayment<'a> {
    /// Chosen by the caller, so that its span names the payment from the start.
    pub id: PaymentId,
    pub wallet_id: WalletId,
    pub owner_id: &'a str,
    pub amount: Amount,
    pub currency: Currency,
    pub merchant_id: &'a str,
    pub description: Option<&'a str>,
    /// The large-payment alert threshold for this currency, if alerts are on.
    pub alert_threshold: Option<Amount>,
}

#[derive(Debug)]
pub enum AcceptOutcome {
    Accepted(Payment),
    WalletNotFound,
    /// The wallet exists and the caller may see it, but it is not theirs to spend.
    NotOwner,
    CurrencyMismatch {
        wallet: Currency,
    },
    InsufficientFunds {
        available: i64,
    },
}

/// Holds the amount and writes the payment, its `hold` entry and its outbox event (plus a
/// `payment.alert` when the amount reaches the alert threshold).
///
/// The wallet UPDATE is the first write and the only one that can refuse, so a refused
/// payment leaves nothing behind in the caller's transaction. `available >= amount` is
/// re-checked by PostgreSQL on the locked row, so concurrent payments cannot overdraw, and
/// the CHECK constraint would stop the update even if this condition were wrong.
pub async fn accept(
    conn: &mut PgConnection,
    new: NewPayment<'_>,
    caller_is_admin: bool,
    traceparent: &str,
) -> Result<AcceptOutcome, sqlx::Error> {
    let amount = new.amount.minor_units();
    let held = sqlx::query!(
        "UPDATE wallets SET available = available - $2, held = held + $2, updated_at = now()
         WHERE id = $1 AND owner_id = $3 AND currency = $4 AND available >= $2
         RETURNING available, held",
        new.wallet_id.0,
        amount,
        new.owner_id,
        new.currency.as_str(),
    )
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| (r.available, r.held));

    let Some((available_after, held_after)) = held else {
        return Ok(match super::wallets::get(conn, new.wallet_id).await? {
            None => AcceptOutcome::WalletNotFound,
            Some(w) if w.owner_id != new.owner_id => {
                if caller_is_admin {
                    AcceptOutcome::NotOwner
                } else {
                    AcceptOutcome::WalletNotFound
                }
            }
            Some(w) if w.currency != new.currency => {
                AcceptOutcome::CurrencyMismatch { wallet: w.currency }
            }
            Some(w) => AcceptOutcome::InsufficientFunds {
                available: w.available,
            },
        });
    };

    // The payment and its `hold` entry in one statement (one round trip fewer).
    let payment_id = new.id;
    let payment: Payment = sqlx::query_as!(
        PaymentRow,
        "WITH entry AS (
            INSERT INTO ledger_entries (id, wallet_id, kind, amount, payment_id, available_after, held_after)
            VALUES ($8, $2, $9, $4, $1, $10, $11)
         )
         INSERT INTO payments (id, wallet_id, owner_id, amount, currency, merchant_id, description)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         RETURNING id, wallet_id, amount, currency, merchant_id, description, status,
                   failure_reason, created_at, updated_at, finalized_at, owner_id",
        payment_id.0,
        new.wallet_id.0,
        new.owner_id,
        amount,
        new.currency.as_str(),
        new.merchant_id,
        new.description,
        Uuid::now_v7(),
        EntryKind::Hold.as_str(),
        available_after,
        held_after,
    )
    .fetch_one(&mut *conn)
    .await?
    .try_into()?;

    let event = PaymentRequested::new(
        EventId::new(),
        payment.created_at,
        RequestedPayment {
            id: payment_id,
            wallet_id: new.wallet_id,
            amount: new.amount,
            currency: new.currency,
            merchant_id: new.merchant_id.to_owned(),
        },
    );
    outbox::enqueue(&mut *conn, &event, traceparent).await?;
    if let Some(threshold) = new.alert_threshold.filter(|t| new.amount >= *t) {
        let alert = PaymentAlert::new(
            new.wallet_id,
            payment.created_at,
            LargePayment::new(
                threshold,
                AlertedPayment {
                    id: payment_id,
                    amount: new.amount,
                    currency: new.currency,
                    merchant_id: new.merchant_id.to_owned(),
                },
            ),
        );
        outbox::enqueue_notification(&mut *conn, &alert, Some(traceparent)).await?;
    }
    Ok(AcceptOutcome::Accepted(payment))
}

pub async fn get(conn: &mut PgConnection, id: PaymentId) -> Result<Option<Payment>, sqlx::Error> {
    sqlx::query_as!(
        PaymentRow,
        "SELECT id, wallet_id, amount, currency, merchant_id, description, status,
                failure_reason, created_at, updated_at, finalized_at, owner_id
         FROM payments WHERE id = $1",
        id.0,
    )
    .fetch_optional(conn)
    .await?
    .map(Payment::try_from)
    .transpose()
}

pub struct ListFilter {
    /// Only this owner's payments; `None` for an admin listing everything.
    pub owner_id: Option<String>,
    pub wallet_id: Option<WalletId>,
    pub status: Option<PaymentStatus>,
    /// Created within this window.
    pub window: Window,
    pub after: Option<TimeCursor>,
    pub limit: i64,
}

/// The list query with only the predicates in use, so the planner picks the index that
/// fits them (see `tests/it/read_side/lists.rs` for the plans).
fn list_query<'a>(head: &str, f: &'a ListFilter) -> QueryBuilder<'a, Postgres> {
    let mut q = QueryBuilder::new(head);
    q.push(format_args!(
        " SELECT {PAYMENT_COLUMNS} FROM payments WHERE true"
    ));
    if let Some(owner) = &f.owner_id {
        q.push(" AND owner_id = ").push_bind(owner.as_str());
    }
    if let Some(wallet) = f.wallet_id {
        q.push(" AND wallet_id = ").push_bind(wallet.0);
    }
    if let Some(status) = f.status {
        q.push(" AND status = ").push_bind(status.as_str());
    }
    f.window.push_predicates(&mut q, "created_at");
    if let Some(c) = f.after {
        q.push(" AND (created_at, id) < (")
            .push_bind(c.created_at)
            .push(", ")
            .push_bind(c.id)
            .push(")");
    }
    q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .push_bind(f.limit);
    q
}

/// A page of payments, newest first. Keyset pagination on `(created_at, id)`: rows that
/// arrive while a client pages are newer than its cursor and never shift later pages.
pub async fn list(conn: &mut PgConnection, f: &ListFilter) -> Result<Vec<Payment>, sqlx::Error> {
    list_query("", f).build_query_as().fetch_all(conn).await
}

/// The plan PostgreSQL picks for [`list`] (`EXPLAIN (FORMAT JSON)`).
pub async fn explain_list(
    conn: &mut PgConnection,
    f: &ListFilter,
) -> Result<serde_json::Value, sqlx::Error> {
    let (plan,) = list_query("EXPLAIN (FORMAT JSON)", f)
        .build_query_as::<(serde_json::Value,)>()
        .fetch_one(conn)
        .await?;
    Ok(plan)
}

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
