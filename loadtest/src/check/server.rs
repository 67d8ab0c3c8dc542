//! What the server holds for the run's wallets, read through the API with each owner's
//! token: balances (polled until nothing is held), payments and ledger entries.

use super::{progress, Balance};
use crate::run::{Ctx, Wallet};
use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt};
use reqwest::StatusCode;
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A payment as the server lists it.
#[derive(Debug, Clone)]
pub struct ServerPayment {
    pub id: String,
    pub wallet_id: String,
    pub amount: i64,
    pub status: String,
    pub failure_reason: Option<String>,
    pub description: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub finalized_at: Option<DateTime<Utc>>,
}

impl ServerPayment {
    pub fn from_json(v: &Value) -> Option<Self> {
        let time = |k: &str| {
            v[k].as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        Some(Self {
            id: v["id"].as_str()?.to_owned(),
            wallet_id: v["wallet_id"].as_str()?.to_owned(),
            amount: v["amount"].as_i64()?,
            status: v["status"].as_str()?.to_owned(),
            failure_reason: v["failure_reason"].as_str().map(str::to_owned),
            description: v["description"].as_str().map(str::to_owned),
            created_at: time("created_at"),
            finalized_at: time("finalized_at"),
        })
    }
}

pub async fn balances(ctx: &Ctx) -> Vec<Option<Balance>> {
    stream::iter(&ctx.wallets)
        .map(|w| async move {
            let r = ctx
                .api
                .get_patiently(&format!("/v1/wallets/{}/balance", w.id), &w.token)
                .await
                .ok()?;
            if r.status != StatusCode::OK {
                return None;
            }
            Some(Balance {
                available: r.body["available"].as_i64()?,
                held: r.body["held"].as_i64()?,
            })
        })
        .buffered(ctx.args.setup_concurrency as usize)
        .collect()
        .await
}

/// Waits until no wallet holds anything: each pending payment holds its amount (>= 1),
/// so `held == 0` everywhere means every accepted payment is final.
pub async fn drain(ctx: &Ctx, load_end: Instant) -> (bool, Duration, Vec<Option<Balance>>) {
    let deadline = load_end + ctx.args.drain_timeout;
    let mut last_note = Instant::now();
    loop {
        let b = balances(ctx).await;
        let holding = b.iter().filter(|b| b.is_none_or(|b| b.held > 0)).count();
        if holding == 0 {
            return (true, load_end.elapsed(), b);
        }
        if Instant::now() >= deadline {
            return (false, load_end.elapsed(), b);
        }
        if last_note.elapsed() >= Duration::from_secs(2) {
            let held: i64 = b.iter().flatten().map(|b| b.held).sum();
            progress(
                ctx,
                &format!(
                    "waiting for payments to finish: {holding} wallets still hold {held} ({:.0}s of {:.0}s)",
                    load_end.elapsed().as_secs_f64(),
                    ctx.args.drain_timeout.as_secs_f64()
                ),
            );
            last_note = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every item of a paged list (`{data, next_cursor}`), following the cursor.
async fn list_all(ctx: &Ctx, path: &str, token: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut page = format!(
            "{path}{}limit=100",
            if path.contains('?') { '&' } else { '?' }
        );
        if let Some(c) = &cursor {
            page.push_str("&cursor=");
            page.push_str(&percent_encode(c));
        }
        let r = ctx
            .api
            .get_patiently(&page, token)
            .await
            .map_err(|e| anyhow::anyhow!("GET {page}: {}", e.describe()))?;
        anyhow::ensure!(r.status == StatusCode::OK, "GET {page}: {}", r.describe());
        out.extend(r.body["data"].as_array().into_iter().flatten().cloned());
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(out),
        }
    }
}

/// A wallet's payments and ledger entries (newest first), as the API lists them.
/// Read with the owner's token: the service limits requests per principal.
pub async fn wallet_records(
    ctx: &Ctx,
    w: &Wallet,
) -> anyhow::Result<(Vec<ServerPayment>, Vec<Entry>)> {
    let wallet_id = &w.id;
    let payments = list_all(
        ctx,
        &format!("/v1/payments?wallet_id={wallet_id}"),
        &w.token,
    )
    .await?
    .iter()
    .map(|p| ServerPayment::from_json(p).ok_or_else(|| anyhow::anyhow!("unreadable payment {p}")))
    .collect::<anyhow::Result<Vec<_>>>()?;
    let entries = list_all(
        ctx,
        &format!("/v1/wallets/{wallet_id}/transactions"),
        &w.token,
    )
    .await?
    .iter()
    .map(|e| Entry::from_json(e).ok_or_else(|| anyhow::anyhow!("unreadable ledger entry {e}")))
    .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((payments, entries))
}

/// A ledger entry as the API lists it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub kind: String,
    pub amount: i64,
    pub payment_id: Option<String>,
    pub available_after: i64,
    pub held_after: i64,
}

impl Entry {
    pub fn from_json(v: &Value) -> Option<Self> {
        Some(Self {
            id: v["id"].as_str()?.to_owned(),
            kind: v["kind"].as_str()?.to_owned(),
            amount: v["amount"].as_i64()?,
            payment_id: v["payment_id"].as_str().map(str::to_owned),
            available_after: v["available_after"].as_i64()?,
            held_after: v["held_after"].as_i64()?,
        })
    }
}

/// Every payment of the run's wallets by id, and each wallet's ledger (in wallet order).
pub struct Holdings {
    pub payments: HashMap<String, ServerPayment>,
    pub ledgers: Vec<Vec<Entry>>,
}

pub async fn holdings(ctx: &Ctx) -> anyhow::Result<Holdings> {
    let listed: Vec<anyhow::Result<(Vec<ServerPayment>, Vec<Entry>)>> = stream::iter(&ctx.wallets)
        .map(|w| wallet_records(ctx, w))
        .buffered(ctx.args.setup_concurrency as usize)
        .collect()
        .await;
    let mut payments = HashMap::new();
    let mut ledgers = Vec::with_capacity(listed.len());
    for l in listed {
        let (list, entries) = l?;
        for p in list {
            payments.insert(p.id.clone(), p);
        }
        ledgers.push(entries);
    }
    Ok(Holdings { payments, ledgers })
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_payment_parses() {
        let v = serde_json::json!({
            "id": "p1", "wallet_id": "w1", "amount": 250, "currency": "EUR",
            "merchant_id": "m", "description": "lt-x-p3", "status": "succeeded",
            "failure_reason": null, "created_at": "2026-01-01T00:00:00.100Z",
            "updated_at": "2026-01-01T00:00:00.150Z", "finalized_at": "2026-01-01T00:00:00.150Z"
        });
        let p = ServerPayment::from_json(&v).unwrap();
        assert_eq!(p.amount, 250);
        assert_eq!(
            (p.finalized_at.unwrap() - p.created_at.unwrap()).num_milliseconds(),
            50
        );
        assert!(p.failure_reason.is_none());
        assert!(ServerPayment::from_json(&serde_json::json!({"id": "x"})).is_none());
    }

    #[test]
    fn cursor_encoding() {
        assert_eq!(percent_encode("abc-_9"), "abc-_9");
        assert_eq!(percent_encode("a+b/c="), "a%2Bb%2Fc%3D");
    }
}
