//! The gateway client: charge with retries under one idempotency key, and decide only what
//! is certain.

use serde::Deserialize;
use shared::backoff::Backoff;
use shared::events::{RequestedPayment, RequestedRefund};
use shared::gateway::{
    refund_refusal, ChargeReply, ChargeStatus, RefundReply, RefundRequest, RefundStatus,
};
use shared::text::GatewayReference;
use std::time::{Duration, Instant};

/// What the gateway did with a payment, as far as we know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Charged {
        reference: GatewayReference,
    },
    Declined {
        reference: GatewayReference,
    },
    /// The gateway voided the key without a charge: the charge certainly did not happen
    /// and never will.
    NotCharged,
    /// We cannot tell (timeouts, in-progress answers): the payment must stay pending.
    Unknown(String),
}

impl Decision {
    /// Its `decision` label on `gateway_decisions_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Charged { .. } => "charged",
            Self::Declined { .. } => "declined",
            Self::NotCharged => "not_charged",
            Self::Unknown(_) => "unknown",
        }
    }
}

/// What the gateway did with a refund, as far as we know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundDecision {
    Refunded {
        reference: GatewayReference,
    },
    Declined {
        reference: GatewayReference,
    },
    /// The gateway refused it for good (no refundable charge, more than was charged): it
    /// certainly did not happen.
    Refused(String),
    /// We cannot tell: the refund must stay pending and be asked again later. A refund is
    /// never failed for an outage, because the customer is owed the money.
    Unknown(String),
}

impl RefundDecision {
    /// Its `decision` label on `gateway_refund_decisions_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Refunded { .. } => "refunded",
            Self::Declined { .. } => "declined",
            Self::Refused(_) => "refused",
            Self::Unknown(_) => "unknown",
        }
    }
}

#[derive(Debug, Deserialize)]
struct GatewayError {
    error: String,
}

pub struct GatewayClient {
    http: reqwest::Client,
    base_url: String,
    attempts: u32,
    backoff: Backoff,
}

/// Describes the client's metrics and starts their series at 0.
pub fn describe_metrics() {
    metrics::describe_histogram!(
        "gateway_request_duration_seconds",
        metrics::Unit::Seconds,
        "Latency of gateway calls, by operation and result."
    );
    metrics::describe_counter!(
        "gateway_retries_total",
        "Gateway calls retried after a timeout or error."
    );
    metrics::describe_counter!(
        "gateway_decisions_total",
        "Final gateway decisions per payment, by decision."
    );
    // Series exist from the start (at 0), so rate() and alerts see their first increment.
    metrics::describe_counter!(
        "gateway_refund_decisions_total",
        "Final gateway decisions per refund, by decision."
    );
    metrics::counter!("gateway_retries_total").increment(0);
    for decision in ["charged", "declined", "not_charged", "unknown"] {
        metrics::counter!("gateway_decisions_total", "decision" => decision).increment(0);
    }
    for decision in ["refunded", "declined", "refused", "unknown"] {
        metrics::counter!("gateway_refund_decisions_total", "decision" => decision).increment(0);
    }
}

impl GatewayClient {
    pub fn new(
        base_url: &str,
        timeout: Duration,
        attempts: u32,
        backoff_base: Duration,
    ) -> reqwest::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(1)))
                .pool_max_idle_per_host(256)
                .build()?,
            base_url: base_url.trim_end_matches('/').to_owned(),
            attempts: attempts.max(1),
            backoff: Backoff::new(backoff_base, Duration::from_secs(5)),
        })
    }

    pub async fn ready(&self) -> Result<(), String> {
        let r = self
            .http
            .get(format!("{}/healthz", self.base_url))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(format!("gateway answered {}", r.status()))
        }
    }

    /// Charges `payment`, retrying with backoff under the same key. When the budget is spent
    /// the key is voided at the gateway, which answers the charge if one exists and otherwise
    /// guarantees none ever will: only then is "not charged" certain. A void refused because
    /// a request with the key is still being processed leaves the outcome unknown.
    pub async fn charge(&self, payment: &RequestedPayment) -> Decision {
        let key = payment.id.to_string();
        let last_error = match self.with_retries(&key, || self.post_charge(payment)).await {
            Ok(d) => return d,
            Err(e) => e,
        };
        // Out of attempts: close the key at the gateway; its answer is final.
        match self.void(payment).await {
            Ok(d) => d,
            Err(e) => Decision::Unknown(format!("{last_error}; void failed: {e}")),
        }
    }

    /// One charge call: the decision if the gateway's answer decides, otherwise (503,
    /// timeout, no connection, in progress, unreadable answer) why not, to retry.
    async fn post_charge(&self, p: &RequestedPayment) -> Result<Decision, String> {
        let start = Instant::now();
        let body = serde_json::json!({
            "amount": p.amount,
            "currency": p.currency,
            "merchant_id": p.merchant_id,
            "reference": p.id,
        });
        let sent = self
            .http
            .post(format!("{}/v1/charges", self.base_url))
            .header("Idempotency-Key", p.id.to_string())
            .json(&body)
            .send()
            .await;
        // Only a charge or a void decides. Every failure is retried under the same key, even a
        // connection never established (an earlier attempt may have reached the gateway);
        // the result label only tells failures apart in the metrics.
        let (result, attempt) = match sent {
            Err(e) => {
                let (label, why) = unanswered(&e);
                (label, Err(why))
            }
            Ok(r) => match r.status().as_u16() {
                200 => match r.json::<ChargeReply>().await {
                    Ok(c) => match decision_of(c) {
                        Decision::Unknown(why) => ("undecided", Err(why)),
                        d => ("ok", Ok(d)),
                    },
                    Err(e) => ("bad_body", Err(format!("unreadable charge: {e}"))),
                },
                503 => ("unavailable", Err("gateway answered 503".into())),
                409 => match r.json::<GatewayError>().await {
                    // Someone gave up on this key and voided it: certainly not charged.
                    Ok(e) if e.error == "charge_voided" => ("voided", Ok(Decision::NotCharged)),
                    _ => (
                        "in_progress",
                        Err("a request with this key is in progress".into()),
                    ),
                },
                status => ("http_error", Err(format!("gateway answered {status}"))),
            },
        };
        metrics::histogram!(
            "gateway_request_duration_seconds",
            "operation" => "charge",
            "result" => result
        )
        .record(start.elapsed().as_secs_f64());
        attempt
    }

    /// Refunds `refund` of its payment's charge, retrying with backoff under the refund id.
    /// Out of attempts the outcome is unknown (there is no void for refunds): the caller
    /// leaves the refund pending and asks again later.
    pub async fn refund(&self, refund: &RequestedRefund) -> RefundDecision {
        let key = refund.id.to_string();
        self.with_retries(&key, || self.post_refund(refund))
            .await
            .unwrap_or_else(RefundDecision::Unknown)
    }

    /// Calls `call` until it decides or the attempts run out, backing off in between; every
    /// attempt carries the same idempotency key `key`. Returns the decision or the last
    /// error.
    async fn with_retries<T, F, Fut>(&self, key: &str, mut call: F) -> Result<T, String>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let mut last_error = String::new();
        for attempt in 0..self.attempts {
            if attempt > 0 {
                metrics::counter!("gateway_retries_total").increment(1);
                tokio::time::sleep(self.backoff.delay(attempt - 1)).await;
            }
            match call().await {
                Ok(d) => return Ok(d),
                Err(e) => last_error = e,
            }
            if attempt + 1 < self.attempts {
                // Every call fails this way while the gateway is down.
                shared::warn_throttled!(
                    idempotency_key = key,
                    attempt = attempt + 1,
                    error = %last_error,
                    "gateway call failed; retrying with the same idempotency key",
                );
            }
        }
        // The caller says what an unknown outcome means for the request (it is requeued).
        Err(last_error)
    }

    /// One refund call: the decision if the answer decides, otherwise why not, to retry.
    async fn post_refund(&self, r: &RequestedRefund) -> Result<RefundDecision, String> {
        let start = Instant::now();
        let sent = self
            .http
            .post(format!(
                "{}/v1/charges/{}/refunds",
                self.base_url, r.payment_id
            ))
            .header("Idempotency-Key", r.id.to_string())
            .json(&RefundRequest {
                amount: r.amount.minor_units(),
            })
            .send()
            .await;
        let (result, attempt) = match sent {
            Err(e) => {
                let (label, why) = unanswered(&e);
                (label, Err(why))
            }
            Ok(r) => match r.status().as_u16() {
                200 => match r.json::<RefundReply>().await {
                    Ok(reply) => match refund_decision_of(reply) {
                        RefundDecision::Unknown(why) => ("undecided", Err(why)),
                        d => ("ok", Ok(d)),
                    },
                    Err(e) => ("bad_body", Err(format!("unreadable refund: {e}"))),
                },
                503 => ("unavailable", Err("gateway answered 503".into())),
                409 | 422 => match r.json::<GatewayError>().await {
                    Ok(e) if is_refusal(&e.error) => {
                        ("refused", Ok(RefundDecision::Refused(e.error)))
                    }
                    Ok(e) => ("in_progress", Err(format!("gateway answered {}", e.error))),
                    Err(e) => ("bad_body", Err(format!("unreadable refusal: {e}"))),
                },
                status => ("http_error", Err(format!("gateway answered {status}"))),
            },
        };
        metrics::histogram!(
            "gateway_request_duration_seconds",
            "operation" => "refund",
            "result" => result
        )
        .record(start.elapsed().as_secs_f64());
        attempt
    }

    /// `POST /v1/charges/{key}/void`: the key's final state.
    async fn void(&self, p: &RequestedPayment) -> Result<Decision, String> {
        let start = Instant::now();
        let r = self
            .http
            .post(format!("{}/v1/charges/{}/void", self.base_url, p.id))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        metrics::histogram!(
            "gateway_request_duration_seconds",
            "operation" => "void",
            "result" => r.status().as_u16().to_string()
        )
        .record(start.elapsed().as_secs_f64());
        match r.status().as_u16() {
            200 => r
                .json::<ChargeReply>()
                .await
                .map(decision_of)
                .map_err(|e| format!("unreadable void answer: {e}")),
            s => Err(format!("void answered {s}")),
        }
    }
}

/// Only a status the contract knows decides. Anything else (`pending`, `processing`, a word
/// added by a newer gateway) means the gateway has not decided: reading it as a decline would
/// release the funds of a charge that may still complete.
fn decision_of(c: ChargeReply) -> Decision {
    match ChargeStatus::parse(&c.status) {
        Some(ChargeStatus::Succeeded) => Decision::Charged { reference: c.id },
        Some(ChargeStatus::Declined) => Decision::Declined { reference: c.id },
        Some(ChargeStatus::Voided) => Decision::NotCharged,
        None => Decision::Unknown(format!(
            "gateway reports charge {} as {:?}: not decided yet",
            c.id, c.status
        )),
    }
}

/// A call that got no answer (connection, timeout, transport): its `result` label and why.
/// Retried like any other failure, since an earlier attempt may have reached the gateway.
fn unanswered(e: &reqwest::Error) -> (&'static str, String) {
    if e.is_connect() {
        ("connect_error", e.to_string())
    } else if e.is_timeout() {
        ("timeout", format!("timed out: {e}"))
    } else {
        ("error", e.to_string())
    }
}

/// A refusal of a refund that no retry changes.
fn is_refusal(code: &str) -> bool {
    matches!(
        code,
        refund_refusal::CHARGE_NOT_REFUNDABLE
            | refund_refusal::EXCEEDS_CHARGE
            | refund_refusal::KEY_REUSED
    )
}

/// As [`decision_of`]: only a status the contract knows decides.
fn refund_decision_of(r: RefundReply) -> RefundDecision {
    match RefundStatus::parse(&r.status) {
        Some(RefundStatus::Succeeded) => RefundDecision::Refunded { reference: r.id },
        Some(RefundStatus::Declined) => RefundDecision::Declined { reference: r.id },
        None => RefundDecision::Unknown(format!(
            "gateway reports refund {} as {:?}: not decided yet",
            r.id, r.status
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: &str) -> ChargeReply {
        ChargeReply {
            id: "ch_1".try_into().unwrap(),
            status: status.into(),
        }
    }

    #[test]
    fn only_known_refund_statuses_and_refusals_decide() {
        let reply = |status: &str| RefundReply {
            id: "re_1".try_into().unwrap(),
            status: status.into(),
        };
        assert_eq!(refund_decision_of(reply("succeeded")).label(), "refunded");
        assert_eq!(refund_decision_of(reply("declined")).label(), "declined");
        for s in ["pending", "voided", ""] {
            assert_eq!(refund_decision_of(reply(s)).label(), "unknown", "{s}");
        }
        assert!(is_refusal("refund_exceeds_charge"));
        assert!(is_refusal("charge_not_refundable"));
        assert!(!is_refusal("request_in_progress"));
    }

    #[test]
    fn only_known_statuses_decide() {
        assert_eq!(decision_of(reply("succeeded")).label(), "charged");
        assert_eq!(decision_of(reply("declined")).label(), "declined");
        assert_eq!(decision_of(reply("voided")), Decision::NotCharged);
        for s in ["pending", "processing", "requires_action", ""] {
            assert_eq!(decision_of(reply(s)).label(), "unknown", "{s}");
        }
    }
}
