//! The read side against a real PostgreSQL: summaries that agree with the ledger (`summary`),
//! time and kind filters, cursors that stay stable while rows arrive and the indexes behind
//! them, by their plans (`lists`), and the bulk import (`import`).

use crate::common::*;
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::Value;
use shared::ids::{EventId, PaymentId};
use shared::status::{FailureReason, Outcome};
use sqlx::PgPool;

mod import;
mod lists;
mod summary;

async fn finalize(pool: &PgPool, id: &str, outcome: Outcome) {
    let reason = (outcome == Outcome::Failed).then_some(FailureReason::Declined);
    let mut tx = pool.begin().await.unwrap();
    let pid: PaymentId = id.parse().unwrap();
    wallet_service::store::payments::finalize(&mut tx, EventId::new(), pid, outcome, reason, None)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// A payment at "shop", which must be accepted; its id.
async fn accepted(app: &TestApp, owner: &str, wallet: &str, amount: i64) -> String {
    let (status, id) = app.pay_id(owner, wallet, amount, "shop").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    id
}

/// Every entry of the wallet through the paginated API, newest first.
async fn all_entries(app: &TestApp, owner: &str, wallet: &str, query: &str) -> Vec<Value> {
    let path = format!("/v1/wallets/{wallet}/transactions?limit=3{query}");
    app.all_pages(owner, &path, true).await
}

fn rfc3339(t: DateTime<Utc>) -> String {
    // `+00:00` would need escaping in a query string; `Z` does not.
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
