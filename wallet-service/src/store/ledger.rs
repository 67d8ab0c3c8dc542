//! The append-only ledger: one entry per change of a balance, with the balances after it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::ids::{PaymentId, WalletId};
use shared::money::Amount;
use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Deposit,
    Hold,
    Capture,
    Release,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deposit => "deposit",
            Self::Hold => "hold",
            Self::Capture => "capture",
            Self::Release => "release",
        }
    }
}

impl TryFrom<String> for EntryKind {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Ok(match s.as_str() {
            "deposit" => Self::Deposit,
            "hold" => Self::Hold,
            "capture" => Self::Capture,
            "release" => Self::Release,
            _ => return Err(format!("unknown ledger entry kind {s:?}")),
        })
    }
}

pub struct NewEntry<'a> {
    pub wallet_id: WalletId,
    pub kind: EntryKind,
    pub amount: Amount,
    pub payment_id: Option<PaymentId>,
    pub reference: Option<&'a str>,
    pub available_after: i64,
    pub held_after: i64,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Entry {
    #[serde(skip)]
    pub seq: i64,
    pub id: Uuid,
    #[sqlx(try_from = "String")]
    pub kind: EntryKind,
    pub amount: i64,
    pub payment_id: Option<Uuid>,
    pub available_after: i64,
    pub held_after: i64,
    pub created_at: DateTime<Utc>,
}

const ENTRY_COLUMNS: &str =
    "seq, id, kind, amount, payment_id, available_after, held_after, created_at";

pub async fn append(conn: &mut PgConnection, e: NewEntry<'_>) -> Result<Entry, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO ledger_entries (id, wallet_id, kind, amount, payment_id, reference, available_after, held_after)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {ENTRY_COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(e.wallet_id.0)
    .bind(e.kind.as_str())
    .bind(e.amount.minor_units())
    .bind(e.payment_id.map(|p| p.0))
    .bind(e.reference)
    .bind(e.available_after)
    .bind(e.held_after)
    .fetch_one(conn)
    .await
}

/// A page of a wallet's entries, newest first, after the `before` sequence number.
pub async fn page(
    conn: &mut PgConnection,
    wallet_id: WalletId,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Entry>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {ENTRY_COLUMNS} FROM ledger_entries
         WHERE wallet_id = $1 AND ($2::bigint IS NULL OR seq < $2)
         ORDER BY seq DESC LIMIT $3"
    ))
    .bind(wallet_id.0)
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await
}
