//! The append-only ledger: one entry per change of a balance, with the balances after it.

use super::window::Window;
use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::ids::{PaymentId, WalletId};
use shared::money::Amount;
use sqlx::{PgConnection, Postgres, QueryBuilder};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Deposit,
    Hold,
    Capture,
    Release,
    /// A refund the gateway made, credited to `available`.
    Refund,
}

impl EntryKind {
    pub fn parse(s: &str) -> Option<Self> {
        Self::try_from(s.to_owned()).ok()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deposit => "deposit",
            Self::Hold => "hold",
            Self::Capture => "capture",
            Self::Release => "release",
            Self::Refund => "refund",
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
            "refund" => Self::Refund,
            _ => return Err(format!("unknown ledger entry kind {s:?}")),
        })
    }
}

pub struct NewEntry<'a> {
    pub id: Uuid,
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
    /// Set on `refund` entries only.
    pub refund_id: Option<Uuid>,
    pub available_after: i64,
    pub held_after: i64,
    pub created_at: DateTime<Utc>,
}

const ENTRY_COLUMNS: &str =
    "seq, id, kind, amount, payment_id, refund_id, available_after, held_after, created_at";

pub async fn append(conn: &mut PgConnection, e: NewEntry<'_>) -> Result<Entry, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO ledger_entries (id, wallet_id, kind, amount, payment_id, reference, available_after, held_after)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {ENTRY_COLUMNS}"
    ))
    .bind(e.id)
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

/// Where a page of a wallet's entries ends: the last entry a client was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub created_at: DateTime<Utc>,
    pub seq: i64,
}

/// The position of the entry with sequence number `seq` in the wallet's ledger; `None` when
/// the wallet has no such entry. Cursors carry the sequence number alone (so cursors handed
/// out before the list was ordered by time still work); this finds its place by time.
pub async fn position(
    conn: &mut PgConnection,
    wallet_id: WalletId,
    seq: i64,
) -> Result<Option<Position>, sqlx::Error> {
    let row: Option<(DateTime<Utc>,)> =
        sqlx::query_as("SELECT created_at FROM ledger_entries WHERE seq = $1 AND wallet_id = $2")
            .bind(seq)
            .bind(wallet_id.0)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(created_at,)| Position { created_at, seq }))
}

pub struct PageFilter {
    pub wallet_id: WalletId,
    pub kind: Option<EntryKind>,
    pub window: Window,
    /// Only entries older than this one (the cursor).
    pub before: Option<Position>,
    pub limit: i64,
}

/// Newest first by (`created_at`, `seq`), the order of `ledger_wallet_time_idx` and
/// `ledger_wallet_kind_time_idx`, so a page or a window reads its own entries and no others.
fn page_query<'a>(head: &str, f: &'a PageFilter) -> QueryBuilder<'a, Postgres> {
    let mut q = QueryBuilder::new(head);
    q.push(format_args!(
        " SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE wallet_id = "
    ))
    .push_bind(f.wallet_id.0);
    if let Some(kind) = f.kind {
        q.push(" AND kind = ").push_bind(kind.as_str());
    }
    f.window.push_predicates(&mut q, "created_at");
    if let Some(before) = f.before {
        q.push(" AND (created_at, seq) < (")
            .push_bind(before.created_at)
            .push(", ")
            .push_bind(before.seq)
            .push(")");
    }
    q.push(" ORDER BY created_at DESC, seq DESC LIMIT ")
        .push_bind(f.limit);
    q
}

/// A page of a wallet's entries, newest first. Keyset pagination on (`created_at`, `seq`):
/// a wallet's entries are stamped in the order they commit, so entries written while a
/// client pages land before its first page and never shift later ones.
pub async fn page(conn: &mut PgConnection, f: &PageFilter) -> Result<Vec<Entry>, sqlx::Error> {
    page_query("", f).build_query_as().fetch_all(conn).await
}

/// The plan PostgreSQL runs for [`page`] (`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`: the
/// read is made), with the rows and pages each step read.
pub async fn explain_page(
    conn: &mut PgConnection,
    f: &PageFilter,
) -> Result<serde_json::Value, sqlx::Error> {
    let (plan,) = page_query("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)", f)
        .build_query_as::<(serde_json::Value,)>()
        .fetch_one(conn)
        .await?;
    Ok(plan)
}
