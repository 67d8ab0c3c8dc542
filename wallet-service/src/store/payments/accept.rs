//! Accepting a payment: the hold, the payment row, its ledger entry and its outbox event
//! in the caller's transaction.

use super::{Payment, PaymentRow};
use crate::outbox;
use crate::store::ledger::EntryKind;
use shared::events::{PaymentRequested, RequestedPayment};
use shared::ids::{EventId, PaymentId, WalletId};
use shared::money::{Amount, Currency};
use shared::notifications::{AlertedPayment, LargePayment, PaymentAlert};
use sqlx::PgConnection;
use uuid::Uuid;

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
/// The wallet UPDATE is the only write that can refuse, and the payment and its entry are
/// inserted from its result in the same statement, so a refused payment leaves nothing
/// behind in the caller's transaction. `available >= amount` is
/// re-checked by PostgreSQL on the locked row, so concurrent payments cannot overdraw, and
/// the CHECK constraint would stop the update even if this condition were wrong.
pub async fn accept(
    conn: &mut PgConnection,
    new: NewPayment<'_>,
    caller_is_admin: bool,
    traceparent: &str,
) -> Result<AcceptOutcome, sqlx::Error> {
    let amount = new.amount.minor_units();
    // The hold, the payment and its `hold` entry in one statement: the inserts take their
    // rows from the hold's RETURNING, so a refused hold inserts nothing.
    let payment_id = new.id;
    let accepted = sqlx::query_as!(
        PaymentRow,
        r#"WITH held AS (
            UPDATE wallets SET available = available - $4, held = held + $4, updated_at = now()
            WHERE id = $2 AND owner_id = $3 AND currency = $5 AND available >= $4
            RETURNING available, held
         ), entry AS (
            INSERT INTO ledger_entries (id, wallet_id, kind, amount, payment_id, available_after, held_after)
            SELECT $8::uuid, $2, $9::text, $4, $1, available, held FROM held
         )
         INSERT INTO payments (id, wallet_id, owner_id, amount, currency, merchant_id, description)
         SELECT $1::uuid, $2, $3, $4, $5, $6::text, $7::text FROM held
         RETURNING id, wallet_id, amount, currency, merchant_id, description, status,
                   failure_reason, created_at, updated_at, finalized_at, owner_id"#,
        payment_id.0,
        new.wallet_id.0,
        new.owner_id,
        amount,
        new.currency.as_str(),
        new.merchant_id,
        new.description,
        Uuid::now_v7(),
        EntryKind::Hold.as_str(),
    )
    .fetch_optional(&mut *conn)
    .await?;

    let Some(payment) = accepted else {
        return Ok(
            match crate::store::wallets::get(conn, new.wallet_id).await? {
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
            },
        );
    };
    let payment: Payment = payment.try_into()?;

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
