//! Wallets and deposits.

use super::ledger::{self, EntryKind};
use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::ids::WalletId;
use shared::money::{Amount, Currency};
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

/// Credits `amount` to the wallet and records the ledger entry. Refusals write nothing.
pub async fn deposit(
    conn: &mut PgConnection,
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
