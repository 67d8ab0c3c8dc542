//! Refunds under faults: a share of the payments is refunded by the admin as soon as it is
//! seen succeeded (through whatever fault is running), and afterwards the refunds are
//! checked against the payments, the ledger and the gateway.

use crate::load::Load;
use reqwest::StatusCode;
use serde_json::{json, Value};
use shared::backoff::Backoff;
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Merchant whose charges succeed and whose refunds the gateway always declines.
pub const DECLINES_REFUNDS: &str = "test_refund_decline";
/// How long one refund (or the wait for its payment) keeps trying through faults.
const GIVE_UP_AFTER: Duration = Duration::from_secs(240);
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

/// A refund the load asked for and the server accepted.
#[derive(Debug, Clone)]
pub struct Asked {
    pub id: Uuid,
    pub payment: Uuid,
    /// Its payment went to [`DECLINES_REFUNDS`]: the refund must end failed/declined.
    pub declines: bool,
}

/// The refunds of payment `n` to `merchant`: `None` to refund what is left. Payments to
/// [`DECLINES_REFUNDS`] are refunded in full; one ordinary payment in nine is refunded, in
/// full (even `n`) or in two halves (odd `n`).
pub fn plan(n: u64, merchant: &str, amount: i64) -> Vec<Option<i64>> {
    match merchant {
        DECLINES_REFUNDS => vec![None],
        "shop" if n % 9 == 4 && n % 2 == 1 && amount >= 2 => vec![Some(amount / 2), None],
        "shop" if n % 9 == 4 => vec![None],
        _ => vec![],
    }
}

/// What a refund of a payment that ended `status` must end as.
pub fn expected(declines: bool) -> (&'static str, Option<&'static str>) {
    if declines {
        ("failed", Some("declined"))
    } else {
        ("succeeded", None)
    }
}

impl Load {
    /// Waits until the payment is final (through faults), then asks for its refunds.
    pub async fn refund(
        &self,
        n: u64,
        payment: Uuid,
        token: &str,
        parts: &[Option<i64>],
        declines: bool,
    ) -> anyhow::Result<()> {
        if self.final_status(payment, token).await? != "succeeded" {
            return Ok(());
        }
        for (i, amount) in parts.iter().enumerate() {
            let body = match amount {
                Some(a) => json!({"amount": a, "reason": "chaos"}),
                None => json!({"reason": "chaos"}),
            };
            let key = format!("{}-r{n}-{i}", self.run());
            let (status, answer) = self.refund_post(payment, &key, &body).await?;
            anyhow::ensure!(
                status == StatusCode::ACCEPTED,
                "refund {key} of succeeded payment {payment} answered {status}: {answer}"
            );
            if n.is_multiple_of(3) {
                // The same request again: the first answer, replayed.
                let again = self.refund_post(payment, &key, &body).await?;
                self.compare_replay(&(status, answer.clone()), &again);
            }
            let id = answer["id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("refund 202 without an id: {answer}"))?;
            self.asked_refund(Asked {
                id,
                payment,
                declines,
            });
        }
        Ok(())
    }

    /// Polls the payment as its owner until it is final.
    async fn final_status(&self, payment: Uuid, token: &str) -> anyhow::Result<String> {
        let start = Instant::now();
        let mut attempt = 0;
        loop {
            let r = self
                .http()
                .get(format!("{}/v1/payments/{payment}", self.url()))
                .bearer_auth(token)
                .send()
                .await;
            if let Ok(r) = r {
                if r.status() == StatusCode::OK {
                    if let Ok(p) = r.json::<Value>().await {
                        match p["status"].as_str() {
                            Some("pending") | None => {}
                            Some(s) => return Ok(s.to_owned()),
                        }
                    }
                }
            }
            anyhow::ensure!(
                start.elapsed() < GIVE_UP_AFTER,
                "payment {payment} not final after {GIVE_UP_AFTER:?}"
            );
            tokio::time::sleep(BACKOFF.ceiling(attempt)).await;
            attempt += 1;
        }
    }

    /// POSTs a refund until a definitive answer: transport errors, 5xx, 429 and 409
    /// `idempotency_key_in_use` are asked again; 409 `payment_not_refundable` is an answer.
    async fn refund_post(
        &self,
        payment: Uuid,
        key: &str,
        body: &Value,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let start = Instant::now();
        let mut attempt = 0;
        loop {
            let sent = self
                .http()
                .post(format!("{}/v1/payments/{payment}/refunds", self.url()))
                .bearer_auth(self.admin())
                .header("Idempotency-Key", key)
                .json(body)
                .send()
                .await;
            if let Ok(r) = sent {
                let status = r.status();
                if status.as_u16() == 500 {
                    self.count_internal_error();
                }
                if let Ok(answer) = r.json::<Value>().await {
                    let retry = status.is_server_error()
                        || status == StatusCode::TOO_MANY_REQUESTS
                        || answer["code"] == "idempotency_key_in_use";
                    if !retry {
                        return Ok((status, answer));
                    }
                }
            }
            anyhow::ensure!(
                start.elapsed() < GIVE_UP_AFTER,
                "no definitive answer to refund {key} after {GIVE_UP_AFTER:?}"
            );
            tokio::time::sleep(BACKOFF.ceiling(attempt)).await;
            attempt += 1;
        }
    }
}

/// The sum of the refunds the gateway made (`/v1/stats` `refunded_amount`; it is rebuilt
/// from the gateway's data file when the gateway restarts).
pub async fn gateway_refunded(http: &reqwest::Client, gateway: &str) -> anyhow::Result<i64> {
    let stats: Value = http
        .get(format!("{gateway}/v1/stats"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    stats["refunded_amount"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("the gateway's stats have no refunded_amount: {stats}"))
}

/// Waits until no refund of the run is pending unless flagged for an operator; returns how
/// many are still pending (unflagged) at the deadline.
pub async fn wait_refunds(pool: &PgPool, ids: &[Uuid], deadline: Duration) -> anyhow::Result<i64> {
    let start = Instant::now();
    loop {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM refunds
             WHERE id = ANY($1) AND status = 'pending' AND attention_since IS NULL",
        )
        .bind(ids)
        .fetch_one(pool)
        .await?;
        if pending == 0 || start.elapsed() > deadline {
            return Ok(pending);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Payments whose refund columns disagree with their refunds or their ledger (the query the
/// integration tests' money check runs too), one line each.
pub async fn payments_disagreeing(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(include_str!(
        "../../wallet-service/sql/refunds_disagreeing.sql"
    ))
    .fetch_all(pool)
    .await?)
}

/// How the run's refunds ended: (succeeded, failed as expected, flagged), and the ones that
/// ended otherwise than expected or disagree with the gateway's record.
pub struct Outcomes {
    pub succeeded: usize,
    pub declined: usize,
    pub flagged: usize,
    pub refunded_total: i64,
    pub wrong: Vec<String>,
}

/// The gateway's refunds of one payment's charge: refund key → (status, amount).
async fn gateway_refunds_of(
    http: &reqwest::Client,
    gateway: &str,
    payment: Uuid,
) -> anyhow::Result<HashMap<String, (String, i64)>> {
    let list: Value = http
        .get(format!("{gateway}/v1/charges/{payment}/refunds"))
        .send()
        .await?
        .json()
        .await?;
    Ok(list["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let key = r["idempotency_key"].as_str()?.to_owned();
            Some((
                key,
                (r["status"].as_str()?.to_owned(), r["amount"].as_i64()?),
            ))
        })
        .collect())
}

/// Each refund's final status against what it should be and against the gateway's list of
/// its payment's refunds (`GET /v1/charges/{payment}/refunds`).
pub async fn outcomes(
    http: &reqwest::Client,
    gateway: &str,
    pool: &PgPool,
    asked: &[Asked],
) -> anyhow::Result<Outcomes> {
    let ids: Vec<Uuid> = asked.iter().map(|a| a.id).collect();
    let rows: Vec<(Uuid, String, Option<String>, i64, bool)> = sqlx::query_as(
        "SELECT id, status, failure_reason, amount, attention_since IS NOT NULL
         FROM refunds WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let rows: HashMap<Uuid, _> = rows.into_iter().map(|r| (r.0, r)).collect();
    let mut at_gateway: HashMap<Uuid, HashMap<String, (String, i64)>> = HashMap::new();
    let mut o = Outcomes {
        succeeded: 0,
        declined: 0,
        flagged: 0,
        refunded_total: 0,
        wrong: Vec::new(),
    };
    for a in asked {
        let Some((_, status, reason, amount, flagged)) = rows.get(&a.id) else {
            o.wrong
                .push(format!("refund {} unknown to the wallet", a.id));
            continue;
        };
        if let std::collections::hash_map::Entry::Vacant(slot) = at_gateway.entry(a.payment) {
            slot.insert(gateway_refunds_of(http, gateway, a.payment).await?);
        }
        let gw = at_gateway[&a.payment].get(&a.id.to_string());
        if status == "pending" && *flagged {
            // Waiting for an operator: the gateway must not have refunded it.
            o.flagged += 1;
            if gw.is_some_and(|g| g.0 == "succeeded") {
                o.wrong.push(format!(
                    "refund {} flagged but refunded at the gateway",
                    a.id
                ));
            }
            continue;
        }
        let want = expected(a.declines);
        let gw_want = if a.declines { "declined" } else { "succeeded" };
        let agrees = (status.as_str(), reason.as_deref()) == want
            && gw.is_some_and(|(s, amt)| s == gw_want && amt == amount);
        if !agrees {
            o.wrong.push(format!(
                "refund {} of {}: wallet {status}/{reason:?} {amount}, gateway {gw:?}, expected {want:?}",
                a.id, a.payment
            ));
        } else if a.declines {
            o.declined += 1;
        } else {
            o.succeeded += 1;
            o.refunded_total += amount;
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_refunds_a_ninth_of_shop_payments_and_every_declining_one() {
        assert_eq!(plan(4, "shop", 1_000), vec![None]);
        assert_eq!(plan(13, "shop", 1_000), vec![Some(500), None]);
        assert!(plan(5, "shop", 1_000).is_empty());
        assert!(plan(4, "test_decline", 1_000).is_empty());
        assert_eq!(plan(7, DECLINES_REFUNDS, 10), vec![None]);
        let refunded = (0..900u64)
            .filter(|n| !plan(*n, "shop", 100).is_empty())
            .count();
        assert_eq!(refunded, 100);
        assert_eq!(expected(true), ("failed", Some("declined")));
        assert_eq!(expected(false), ("succeeded", None));
    }
}
