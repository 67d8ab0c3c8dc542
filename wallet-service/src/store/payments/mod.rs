//! Payments: accepting one (the hold, `accept`), finalizing one (capture or release,
//! `finalize`), and reading them back.

mod accept;
mod finalize;

pub use accept::{accept, AcceptOutcome, NewPayment};
pub use finalize::{finalize, record_conflict, Applied, Conflict};

use super::cursor::TimeCursor;
use super::window::Window;
use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::ids::{PaymentId, WalletId};
use shared::money::Currency;
use shared::status::PaymentStatus;
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
pub(super) struct PaymentRow {
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
        // A literal from a closed set, not a parameter: a parameter would let PostgreSQL
        // settle on a generic plan for the prepared statement after a few runs, and a
        // generic plan cannot use the partial indexes (`payments_pending_idx`,
        // `payments_failed_idx`) that keep a list by a rare status from walking history.
        q.push(format_args!(" AND status = '{}'", status.as_str()));
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

/// The plan PostgreSQL runs for [`list`] (`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`: the
/// read is made), with the rows and pages each step read.
pub async fn explain_list(
    conn: &mut PgConnection,
    f: &ListFilter,
) -> Result<serde_json::Value, sqlx::Error> {
    let (plan,) = list_query("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)", f)
        .build_query_as::<(serde_json::Value,)>()
        .fetch_one(conn)
        .await?;
    Ok(plan)
}
