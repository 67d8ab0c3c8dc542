//! Refunds during the load: a payment of the refund share, once the poller saw it succeed,
//! is refunded by the admin (in full, or for odd `n` in two parts: a third, then the rest),
//! and each refund is polled until final.

use super::calls::with_retries;
use super::{lock, Ctx};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One refund the generator asked for, as it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RefundRecord {
    pub payment_id: String,
    pub wallet: usize,
    /// The refunded payment's amount.
    pub payment_amount: i64,
    /// The refund's id, once it was accepted (202).
    pub id: Option<String>,
    /// What the server reserved (the amount asked for, or what was left).
    pub amount: i64,
    /// The last status seen: `succeeded`, `failed`, `pending` (not final by the deadline),
    /// or the definitive refusal (`STATUS code`) or error that ended the request.
    pub status: String,
}

/// The bodies of a payment's refunds: all of it at once, or (odd `n`) a third and then
/// whatever is left.
pub fn plan(n: u64, amount: i64) -> Vec<Value> {
    if n % 2 == 1 && amount >= 3 {
        vec![
            json!({"amount": amount / 3, "reason": "partial"}),
            json!({}),
        ]
    } else {
        vec![json!({"reason": "full"})]
    }
}

impl Ctx {
    /// Starts the refunds of one payment in the background; [`Ctx::wait_refunds`] awaits them.
    pub(super) fn start_refunds(
        self: &Arc<Self>,
        payment: &str,
        wallet: usize,
        n: u64,
        amount: i64,
    ) {
        let (ctx, payment) = (self.clone(), payment.to_owned());
        lock(&self.refund_tasks).spawn(async move {
            for (i, body) in plan(n, amount).into_iter().enumerate() {
                let record = ctx.refund(&payment, wallet, amount, n, i, &body).await;
                lock(&ctx.refunds).push(record);
            }
        });
    }

    /// Waits until every refund started is final (or given up at its deadline).
    pub async fn wait_refunds(&self) {
        loop {
            let next = {
                let mut tasks = lock(&self.refund_tasks);
                if tasks.is_empty() {
                    return;
                }
                // Taken out of the lock to be awaited; new ones cannot start any more (the
                // poller is done when this is called).
                std::mem::take(&mut *tasks)
            };
            next.join_all().await;
        }
    }

    async fn refund(
        &self,
        payment: &str,
        wallet: usize,
        payment_amount: i64,
        n: u64,
        part: usize,
        body: &Value,
    ) -> RefundRecord {
        let key = format!("lt-{}-r{n}-{part}", self.run_id);
        let path = format!("/v1/payments/{payment}/refunds");
        let (answer, d) = with_retries(self.args.attempts, || {
            self.api.post(&path, &self.admin, &key, body)
        })
        .await;
        let mut record = RefundRecord {
            payment_id: payment.to_owned(),
            wallet,
            payment_amount,
            id: None,
            amount: 0,
            status: String::new(),
        };
        {
            let mut rec = lock(&self.rec);
            rec.latency("refund", d);
            let at = self.since_start(Instant::now());
            match &answer {
                Ok(r) if r.status == StatusCode::ACCEPTED => {}
                Ok(r) => rec.error(format!("refund {}", r.describe()), at),
                Err(e) => rec.error(format!("refund {}", e.describe()), at),
            }
        }
        let reply = match answer {
            Ok(r) if r.status == StatusCode::ACCEPTED => r,
            Ok(r) => {
                record.status = r.describe();
                return record;
            }
            Err(e) => {
                record.status = e.describe();
                return record;
            }
        };
        record.amount = reply.body["amount"].as_i64().unwrap_or(0);
        let Some(id) = reply.body["id"].as_str().map(str::to_owned) else {
            record.status = "202 without an id".into();
            return record;
        };
        record.status = self.final_refund_status(&id, wallet).await;
        record.id = Some(id);
        record
    }

    /// Polls the refund (as the payment's owner) until it leaves `pending`, up to the drain
    /// timeout; returns the last status seen.
    async fn final_refund_status(&self, id: &str, wallet: usize) -> String {
        let token = &self.wallets[wallet].token;
        let deadline = Instant::now() + self.args.drain_timeout;
        let mut status = "pending".to_owned();
        while Instant::now() < deadline {
            let t = Instant::now();
            let r = self.api.get(&format!("/v1/refunds/{id}"), token).await;
            lock(&self.rec).latency("refund_poll", t.elapsed());
            if let Ok(reply) = r {
                if reply.status == StatusCode::OK {
                    status = reply.body["status"].as_str().unwrap_or("?").to_owned();
                    if status != "pending" {
                        return status;
                    }
                }
            }
            tokio::time::sleep(self.args.poll_interval.max(Duration::from_millis(25))).await;
        }
        let at = self.since_start(Instant::now());
        lock(&self.rec).error("refund still pending at the deadline".into(), at);
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_payments_are_refunded_in_full_odd_ones_in_two_parts() {
        assert_eq!(plan(4, 900), vec![json!({"reason": "full"})]);
        assert_eq!(
            plan(5, 900),
            vec![json!({"amount": 300, "reason": "partial"}), json!({})]
        );
        // Too small to split: in full.
        assert_eq!(plan(5, 2), vec![json!({"reason": "full"})]);
    }
}
