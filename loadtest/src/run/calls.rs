//! The calls of the load phase: a payment (with recovery and the deliberate client
//! retry), a read, and how each answer is judged against the mix.

use super::{lock, Ctx, PayAnswer, PayRecord, PollJob};
use crate::api::{CallResult, Reply};
use crate::mix::{PayKind, PayOp, ReadOp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Calls `f` until it gets a definitive answer or the attempts run out (rate limiting,
/// 429, is waited out as long as Retry-After says, for up to a minute, without using up
/// an attempt); returns the last result and the time of the last call.
pub(super) async fn with_retries<F, Fut>(attempts: u32, mut f: F) -> (CallResult, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = CallResult>,
{
    let mut attempt = 1;
    let limited_until = Instant::now() + Duration::from_secs(60);
    loop {
        let t = Instant::now();
        let r = f().await;
        let d = t.elapsed();
        match &r {
            Ok(reply) if reply.status == StatusCode::TOO_MANY_REQUESTS => {
                let wait = reply.retry_after.unwrap_or(Duration::from_millis(500));
                if Instant::now() + wait < limited_until {
                    tokio::time::sleep(wait).await;
                    continue;
                }
                return (r, d);
            }
            Ok(reply) if !reply.transient() => return (r, d),
            _ if attempt >= attempts => return (r, d),
            _ => {}
        }
        tokio::time::sleep(backoff(attempt)).await;
        attempt += 1;
    }
}

fn backoff(attempt: u32) -> Duration {
    let base = 100u64 << attempt.min(6);
    Duration::from_millis(base + fastrand::u64(0..=base / 2))
}

/// How a payment's answer compares with what the mix intended.
enum Judged {
    Expected,
    Unexpected(String),
    Transient(String),
}

fn judge(kind: PayKind, r: &CallResult) -> Judged {
    match r {
        Err(e) => Judged::Transient(e.describe()),
        Ok(reply) if reply.transient() => Judged::Transient(reply.describe()),
        Ok(reply) => {
            let expected = match kind {
                PayKind::Refuse => {
                    reply.status == StatusCode::UNPROCESSABLE_ENTITY
                        && reply.code() == Some("insufficient_funds")
                }
                _ => reply.status == StatusCode::ACCEPTED && reply.body["id"].is_string(),
            };
            if expected {
                Judged::Expected
            } else {
                Judged::Unexpected(reply.describe())
            }
        }
    }
}

impl Ctx {
    /// One payment: the POST (latency from `intended`), recovery attempts if the answer
    /// was lost, the deliberate client retry, and hand-off to the poller.
    pub(super) async fn pay(&self, op: PayOp, intended: Instant) {
        let w = &self.wallets[op.wallet];
        let key = self.key(op.n);
        let body = json!({
            "wallet_id": w.id,
            "amount": op.amount,
            "currency": self.args.currency,
            "merchant_id": op.merchant,
            "description": key,
        });
        let label = op.kind.label();
        let sent = Instant::now();
        let mut last = self.api.post("/v1/payments", &w.token, &key, &body).await;
        let now = Instant::now();
        // From the intended start; from the send if that came (slightly) earlier.
        let latency = now - intended.min(sent);
        let at = self.since_start(now);
        let intended_at = self.since_start(intended);
        let mut judged = judge(op.kind, &last);
        {
            let mut rec = lock(&self.rec);
            let ok = matches!(judged, Judged::Expected);
            rec.also("pay_service", now - sent);
            rec.pay(latency, intended_at, at, ok, self.step_at(intended_at));
            rec.outages.answer(
                self.since_start(sent),
                at,
                !matches!(judged, Judged::Transient(_)),
            );
            match &judged {
                Judged::Expected => {}
                Judged::Unexpected(d) | Judged::Transient(d) => {
                    rec.error(format!("{label} {d}"), at)
                }
            }
        }
        // The answer was lost or transient: ask again under the same key.
        let mut attempt = 1;
        while matches!(judged, Judged::Transient(_)) && attempt < self.args.attempts {
            let hint = last.as_ref().ok().and_then(|r| r.retry_after);
            tokio::time::sleep(hint.unwrap_or_default().max(backoff(attempt))).await;
            attempt += 1;
            let t = Instant::now();
            last = self.api.post("/v1/payments", &w.token, &key, &body).await;
            judged = judge(op.kind, &last);
            let mut rec = lock(&self.rec);
            rec.latency("retry", t.elapsed());
            let at = self.since_start(Instant::now());
            let transient = matches!(judged, Judged::Transient(_));
            rec.outages.answer(self.since_start(t), at, !transient);
            match &judged {
                Judged::Expected => rec.late_ok(at, self.step_at(intended_at)),
                Judged::Unexpected(d) | Judged::Transient(d) => rec.error(format!("retry {d}"), at),
            }
        }
        // What the answer means for the money, whatever the mix intended.
        let (outcome, surprise) = match (judged, &last) {
            (Judged::Transient(d), _) => (PayAnswer::Unresolved(d), None),
            (judged, Ok(r)) => {
                let surprise = match judged {
                    Judged::Unexpected(d) => Some(d),
                    _ => None,
                };
                let outcome = match r.body["id"].as_str() {
                    Some(id) if r.status == StatusCode::ACCEPTED => {
                        PayAnswer::Accepted { id: id.to_owned() }
                    }
                    _ if r.code() == Some("insufficient_funds") => PayAnswer::Refused,
                    _ => PayAnswer::Rejected(r.describe()),
                };
                (outcome, surprise)
            }
            (_, Err(e)) => (PayAnswer::Unresolved(e.describe()), None),
        };
        let accepted_at = Instant::now();
        if op.retry {
            if let Ok(first) = &last {
                if !matches!(outcome, PayAnswer::Unresolved(_)) {
                    self.replay(&key, &w.token, &body, first).await;
                }
            }
        }
        if let PayAnswer::Accepted { id } = &outcome {
            {
                let mut recent = lock(&self.recent);
                if recent.len() >= 1024 {
                    recent.pop_front();
                }
                recent.push_back((id.clone(), op.wallet));
            }
            if op.poll {
                if let Some(tx) = lock(&self.poll_tx).as_ref() {
                    let _ = tx.send(PollJob {
                        id: id.clone(),
                        wallet: op.wallet,
                        n: op.n,
                        amount: op.amount,
                        refund: op.refund,
                        accepted: accepted_at,
                        next: accepted_at,
                    });
                }
            }
        }
        lock(&self.payments).push(PayRecord {
            op,
            outcome,
            surprise,
        });
    }

    /// Sends the same request under the same key again: the answer must be the first one.
    async fn replay(&self, key: &str, token: &str, body: &Value, first: &Reply) {
        let t = Instant::now();
        let (again, _) = with_retries(self.args.attempts, || {
            self.api.post("/v1/payments", token, key, body)
        })
        .await;
        let d = t.elapsed();
        // A replay that never got a definitive answer (connection lost, 429 or 503 after
        // every attempt) says nothing about idempotency: an error of the run, not a mismatch.
        let problem = match &again {
            Err(e) => Err(e.describe()),
            Ok(r) if r.transient() => Err(r.describe()),
            Ok(r) if r.status != first.status => Ok(Some(format!(
                "{key}: replay status {} differs from first {}",
                r.status, first.status
            ))),
            Ok(r) if r.body != first.body => Ok(Some(format!(
                "{key}: replay body differs: first {} then {}",
                first.body, r.body
            ))),
            Ok(r) if !r.replayed => Ok(Some(format!(
                "{key}: replay without Idempotent-Replayed: true"
            ))),
            Ok(_) => Ok(None),
        };
        {
            let mut rec = lock(&self.rec);
            rec.latency("replay", d);
            let at = self.since_start(Instant::now());
            match &problem {
                Err(why) => rec.error(format!("replay unanswered: {why}"), at),
                Ok(Some(_)) => rec.error("replay mismatch".into(), at),
                Ok(None) => {}
            }
        }
        let Ok(problem) = problem else { return };
        let mut replays = lock(&self.replays);
        replays.checked += 1;
        if let Some(p) = problem {
            replays.mismatched += 1;
            if replays.examples.len() < 5 {
                replays.examples.push(p);
            }
        }
    }

    /// A balance or payment read, latency from `intended`.
    pub(super) async fn read(&self, op: ReadOp, intended: Instant) {
        let (payment, wallet) = match op {
            ReadOp::Balance { wallet } => (None, wallet),
            ReadOp::Payment { pick } => {
                let recent = lock(&self.recent);
                if recent.is_empty() {
                    (None, (pick % self.wallets.len() as u64) as usize)
                } else {
                    let (id, w) = &recent[(pick % recent.len() as u64) as usize];
                    (Some(id.clone()), *w)
                }
            }
        };
        let w = &self.wallets[wallet];
        let (label, kind, path) = match &payment {
            Some(id) => ("read-payment", "read_payment", format!("/v1/payments/{id}")),
            None => (
                "read-balance",
                "read_balance",
                format!("/v1/wallets/{}/balance", w.id),
            ),
        };
        let sent = Instant::now();
        let r = self.api.get(&path, &w.token).await;
        let now = Instant::now();
        let d = now - intended.min(sent);
        let mut rec = lock(&self.rec);
        rec.latency("read", d);
        rec.also(kind, d);
        rec.reads += 1;
        let problem = match &r {
            Ok(reply) if reply.status == StatusCode::OK => None,
            Ok(reply) => Some(reply.describe()),
            Err(e) => Some(e.describe()),
        };
        if let Some(p) = problem {
            rec.error(format!("{label} {p}"), self.since_start(now));
        }
    }
}
