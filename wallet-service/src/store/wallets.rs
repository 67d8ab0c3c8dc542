//! Wallets and deposits.

use super::ledger::{self, EntryKind};
use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::ids::WalletId;
use shared::money::{Amount, Currency};
use shared::notifications::{BalanceAfter, DepositFact, Deposited, WalletDeposited};
use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Wallet {
    pub id: Uuid,
    pub owner_id: String,
    #[sqlx(try_from = "String")]
    pub currency: Currency,
    pub available: i64,
    pub held: i64,
    pub created_at: DateTime<Utc>,
}

const WALLET_COLUMNS: &str = "id, owner_id, currency, available, held, created_at";

pub async fn create(
    conn: &mut PgConnection,
    owner_id: &str,
    currency: Currency,
) -> Result<Wallet, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO wallets (id, owner_id, currency) VALUES ($1, $2, $3) RETURNING {WALLET_COLUMNS}"
    ))
    .bind(WalletId::new().0)
    .bind(owner_id)
    .bind(currency.as_str())
    .fetch_one(conn)
    .await
}

/// Creates the wallet with a caller-chosen id unless one with that id exists; returns the
/// wallet with that id either way, and whether it was created now (the bulk import).
pub async fn create_with_id(
    conn: &mut PgConnection,
    id: WalletId,
    owner_id: &str,
    currency: Currency,
) -> Result<(Wallet, bool), sqlx::Error> {
    let created: Option<Wallet> = sqlx::query_as(&format!(
        "INSERT INTO wallets (id, owner_id, currency) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO NOTHING RETURNING {WALLET_COLUMNS}"
    ))
    .bind(id.0)
    .bind(owner_id)
    .bind(currency.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    match created {
        Some(w) => Ok((w, true)),
        None => Ok((get(conn, id).await?.ok_or(sqlx::Error::RowNotFound)?, false)),
    }
}

pub async fn get(conn: &mut PgConnection, id: WalletId) -> Result<Option<Wallet>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {WALLET_COLUMNS} FROM wallets WHERE id = $1"
    ))
    .bind(id.0)
    .fetch_optional(conn)
    .await
}

#[derive(Debug, Clone, Serialize)]
pub struct Balance {
    pub available: i64,
    pub held: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Deposit {
    pub id: Uuid,
    pub wallet_id: Uuid,
    pub amount: Amount,
    pub currency: Currency,
    pub reference: Option<String>,
    pub created_at: DateTime<Utc>,
    pub balance: Balance,
}

#[derive(Debug)]
pub enum DepositOutcome {
    Done(Deposit),
    WalletNotFound,
    CurrencyMismatch {
        wallet: Currency,
    },
    /// The balance would leave the range a bigint can hold.
    BalanceLimit,
}

/// Credits `amount` to the wallet and records the ledger entry and the `wallet.deposited`
/// event. `id` becomes the deposit's id (its ledger entry's). Refusals write nothing.
pub async fn deposit(
    conn: &mut PgConnection,
    id: Uuid,
    wallet_id: WalletId,
    amount: Amount,
    currency: Currency,
    reference: Option<&str>,
) -> Result<DepositOutcome, sqlx::Error> {
    let credited: Option<(i64, i64)> = sqlx::query_as(
        "UPDATE wallets SET available = available + $2, updated_at = now()
         WHERE id = $1 AND currency = $3 AND $2 <= 9223372036854775807 - available - held
         RETURNING available, held",
    )
    .bind(wallet_id.0)
    .bind(amount.minor_units())
    .bind(currency.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    let Some((available, held)) = credited else {
        return Ok(match get(conn, wallet_id).await? {
            None => DepositOutcome::WalletNotFound,
            Some(w) if w.currency != currency => {
                DepositOutcome::CurrencyMismatch { wallet: w.currency }
            }
            Some(_) => DepositOutcome::BalanceLimit,
        });
    };
    let entry = ledger::append(
        &mut *conn,
        ledger::NewEntry {
            id,
            wallet_id,
            kind: EntryKind::Deposit,
            amount,
            payment_id: None,
            reference,
            available_after: available,
            held_after: held,
        },
    )
    .await?;
    let event = WalletDeposited::new(
        wallet_id,
        entry.created_at,
        Deposited {
            deposit: DepositFact {
                id: entry.id,
                amount,
                currency,
                reference: reference.map(str::to_owned),
            },
            balance: BalanceAfter { available, held },
        },
    );
    crate::outbox::enqueue_notification(&mut *conn, &event, None).await?;
    Ok(DepositOutcome::Done(Deposit {
        id: entry.id,
        wallet_id: wallet_id.0,
        amount,
        currency,
        reference: reference.map(str::to_owned),
        created_at: entry.created_at,
        balance: Balance { available, held },
    }))
}

/// A deposit as the ledger holds it (the bulk import compares re-imported records with it).
#[derive(Debug, sqlx::FromRow)]
pub struct StoredDeposit {
    pub wallet_id: Uuid,
    pub amount: i64,
    pub reference: Option<String>,
}

pub async fn find_deposit(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<StoredDeposit>, sqlx::Error> {
    sqlx::query_as(
        "SELECT wallet_id, amount, reference FROM ledger_entries WHERE id = $1 AND kind = 'deposit'",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}
