//! The pipeline's wire messages and how to tell a good one from a poison one.
//!
//! Every message carries `type` and `version`. A consumer accepts only the versions it
//! understands; anything else is poison and goes to a dead-letter destination instead of
//! blocking the messages behind it.

use crate::ids::{EventId, PaymentId, RefundId, WalletId};
use crate::money::{Amount, Currency};
use crate::status::{FailureReason, Outcome};
use crate::text::{self, GatewayReference};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub const PAYMENT_REQUESTED: &str = "payment.requested";
pub const PAYMENT_RESULT: &str = "payment.result";
pub const REFUND_REQUESTED: &str = "refund.requested";
pub const REFUND_RESULT: &str = "refund.result";
pub const VERSION: u32 = 1;

/// Published by the wallet service's outbox to RabbitMQ when a payment is accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentRequested {
    pub event_id: EventId,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    pub occurred_at: DateTime<Utc>,
    pub payment: RequestedPayment,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestedPayment {
    pub id: PaymentId,
    pub wallet_id: WalletId,
    pub amount: Amount,
    pub currency: Currency,
    pub merchant_id: String,
}

impl PaymentRequested {
    pub fn new(event_id: EventId, occurred_at: DateTime<Utc>, payment: RequestedPayment) -> Self {
        Self {
            event_id,
            kind: PAYMENT_REQUESTED.to_owned(),
            version: VERSION,
            occurred_at,
            payment,
        }
    }
}

/// Published by the processor to Kafka once the gateway decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentResult {
    pub event_id: EventId,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    pub payment_id: PaymentId,
    pub outcome: Outcome,
    pub failure_reason: Option<FailureReason>,
    pub gateway_reference: Option<GatewayReference>,
    pub occurred_at: DateTime<Utc>,
}

impl PaymentResult {
    pub fn new(
        event_id: EventId,
        payment_id: PaymentId,
        outcome: Outcome,
        failure_reason: Option<FailureReason>,
        gateway_reference: Option<GatewayReference>,
    ) -> Self {
        Self {
            event_id,
            kind: PAYMENT_RESULT.to_owned(),
            version: VERSION,
            payment_id,
            outcome,
            failure_reason,
            gateway_reference,
            occurred_at: Utc::now(),
        }
    }
}

/// Published by the wallet service's outbox to RabbitMQ when a refund is accepted. It
/// travels the payment requests' exchange and queue (routing key `refund.requested`), so
/// one consumer, one prefetch budget and one dead-letter queue serve both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefundRequested {
    pub event_id: EventId,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    pub occurred_at: DateTime<Utc>,
    pub refund: RequestedRefund,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestedRefund {
    /// The refund id: the gateway's idempotency key for this refund.
    pub id: RefundId,
    /// The refunded payment: the gateway's key of the charge.
    pub payment_id: PaymentId,
    pub wallet_id: WalletId,
    pub amount: Amount,
    pub currency: Currency,
    pub merchant_id: String,
}

impl RefundRequested {
    pub fn new(event_id: EventId, occurred_at: DateTime<Utc>, refund: RequestedRefund) -> Self {
        Self {
            event_id,
            kind: REFUND_REQUESTED.to_owned(),
            version: VERSION,
            occurred_at,
            refund,
        }
    }
}

/// Published by the processor to `payment.results` (key: the payment id) once the gateway
/// decided a refund.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefundResult {
    pub event_id: EventId,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    pub refund_id: RefundId,
    pub payment_id: PaymentId,
    pub outcome: Outcome,
    pub failure_reason: Option<FailureReason>,
    pub gateway_reference: Option<GatewayReference>,
    pub occurred_at: DateTime<Utc>,
}

impl RefundResult {
    pub fn new(
        event_id: EventId,
        refund: &RequestedRefund,
        outcome: Outcome,
        failure_reason: Option<FailureReason>,
        gateway_reference: Option<GatewayReference>,
    ) -> Self {
        Self {
            event_id,
            kind: REFUND_RESULT.to_owned(),
            version: VERSION,
            refund_id: refund.id,
            payment_id: refund.payment_id,
            outcome,
            failure_reason,
            gateway_reference,
            occurred_at: Utc::now(),
        }
    }
}

/// A message on the request queue: a payment to charge or a refund to make.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Payment(PaymentRequested),
    Refund(RefundRequested),
}

/// A message on the results topic: a charge's or a refund's outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum Decided {
    Payment(PaymentResult),
    Refund(RefundResult),
}

impl Decided {
    /// The payment it concerns (the message key).
    pub fn payment_id(&self) -> PaymentId {
        match self {
            Self::Payment(r) => r.payment_id,
            Self::Refund(r) => r.payment_id,
        }
    }

    pub fn event_id(&self) -> EventId {
        match self {
            Self::Payment(r) => r.event_id,
            Self::Refund(r) => r.event_id,
        }
    }
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Poison {
    #[error("not valid JSON: {0}")]
    NotJson(String),
    #[error("unexpected message type {0:?}")]
    WrongType(Option<String>),
    #[error("unsupported version {0:?}")]
    UnsupportedVersion(Option<u64>),
    #[error("invalid {kind} message: {detail}")]
    Invalid { kind: &'static str, detail: String },
}

impl Poison {
    /// A short, stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotJson(_) => "not_json",
            Self::WrongType(_) => "wrong_type",
            Self::UnsupportedVersion(_) => "unsupported_version",
            Self::Invalid { .. } => "invalid",
        }
    }
}

/// The message's JSON and its `type`, once its `version` is one this code understands.
fn envelope(bytes: &[u8]) -> Result<(serde_json::Value, Option<String>), Poison> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| Poison::NotJson(e.to_string()))?;
    let ty = value
        .get("type")
        .and_then(|t| t.as_str())
        .map(str::to_owned);
    Ok((value, ty))
}

fn typed<T: DeserializeOwned>(value: serde_json::Value, kind: &'static str) -> Result<T, Poison> {
    let version = value.get("version").and_then(|v| v.as_u64());
    if version != Some(u64::from(VERSION)) {
        return Err(Poison::UnsupportedVersion(version));
    }
    serde_json::from_value(value).map_err(|e| Poison::Invalid {
        kind,
        detail: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(bytes: &[u8], kind: &'static str) -> Result<T, Poison> {
    let (value, ty) = envelope(bytes)?;
    if ty.as_deref() != Some(kind) {
        return Err(Poison::WrongType(ty));
    }
    typed(value, kind)
}

/// The longest `merchant_id` the API accepts, so the longest a request can carry.
pub const MERCHANT_ID_MAX_CHARS: usize = 64;

/// Text goes on to the gateway and into logs: refuse what the API would have refused.
fn check_merchant(merchant_id: &str, kind: &'static str) -> Result<(), Poison> {
    text::check("merchant_id", merchant_id, 1, MERCHANT_ID_MAX_CHARS).map_err(|e| Poison::Invalid {
        kind,
        detail: e.to_string(),
    })
}

/// A failure must say why, and a success must not carry a reason.
fn check_outcome(
    outcome: Outcome,
    reason: Option<FailureReason>,
    kind: &'static str,
) -> Result<(), Poison> {
    let detail = match (outcome, reason) {
        (Outcome::Failed, None) => "failed outcome without failure_reason",
        (Outcome::Succeeded, Some(_)) => "succeeded outcome with a failure_reason",
        _ => return Ok(()),
    };
    Err(Poison::Invalid {
        kind,
        detail: detail.into(),
    })
}

pub fn decode_requested(bytes: &[u8]) -> Result<PaymentRequested, Poison> {
    let request: PaymentRequested = decode(bytes, PAYMENT_REQUESTED)?;
    check_merchant(&request.payment.merchant_id, PAYMENT_REQUESTED)?;
    Ok(request)
}

/// A message from the request queue: `payment.requested` or `refund.requested`.
pub fn decode_request(bytes: &[u8]) -> Result<Request, Poison> {
    let (value, ty) = envelope(bytes)?;
    match ty.as_deref() {
        Some(PAYMENT_REQUESTED) => {
            let request: PaymentRequested = typed(value, PAYMENT_REQUESTED)?;
            check_merchant(&request.payment.merchant_id, PAYMENT_REQUESTED)?;
            Ok(Request::Payment(request))
        }
        Some(REFUND_REQUESTED) => {
            let request: RefundRequested = typed(value, REFUND_REQUESTED)?;
            check_merchant(&request.refund.merchant_id, REFUND_REQUESTED)?;
            Ok(Request::Refund(request))
        }
        _ => Err(Poison::WrongType(ty)),
    }
}

pub fn decode_result(bytes: &[u8]) -> Result<PaymentResult, Poison> {
    let result: PaymentResult = decode(bytes, PAYMENT_RESULT)?;
    check_outcome(result.outcome, result.failure_reason, PAYMENT_RESULT)?;
    Ok(result)
}

/// A message from the results topic: `payment.result` or `refund.result`.
pub fn decode_decided(bytes: &[u8]) -> Result<Decided, Poison> {
    let (value, ty) = envelope(bytes)?;
    match ty.as_deref() {
        Some(PAYMENT_RESULT) => {
            let r: PaymentResult = typed(value, PAYMENT_RESULT)?;
            check_outcome(r.outcome, r.failure_reason, PAYMENT_RESULT)?;
            Ok(Decided::Payment(r))
        }
        Some(REFUND_RESULT) => {
            let r: RefundResult = typed(value, REFUND_RESULT)?;
            check_outcome(r.outcome, r.failure_reason, REFUND_RESULT)?;
            Ok(Decided::Refund(r))
        }
        _ => Err(Poison::WrongType(ty)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requested() -> PaymentRequested {
        PaymentRequested::new(
            EventId::new(),
            Utc::now(),
            RequestedPayment {
                id: PaymentId::new(),
                wallet_id: WalletId::new(),
                amount: Amount::new(500).unwrap(),
                currency: "EUR".parse().unwrap(),
                merchant_id: "m_1".into(),
            },
        )
    }

    #[test]
    fn requested_round_trips_with_contract_field_names() {
        let msg = requested();
        let json = serde_json::to_value(&msg).unwrap();
        assert_eq!(json["type"], "payment.requested");
        assert_eq!(json["version"], 1);
        assert_eq!(json["payment"]["amount"], 500);
        assert_eq!(json["payment"]["currency"], "EUR");
        let back = decode_requested(&serde_json::to_vec(&msg).unwrap()).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn poison_is_classified() {
        assert!(matches!(
            decode_requested(b"{not json"),
            Err(Poison::NotJson(_))
        ));
        let mut v = serde_json::to_value(requested()).unwrap();
        v["version"] = 2.into();
        assert_eq!(
            decode_requested(&serde_json::to_vec(&v).unwrap()),
            Err(Poison::UnsupportedVersion(Some(2)))
        );
        v["version"] = 1.into();
        v["payment"]["amount"] = 0.into();
        assert!(matches!(
            decode_requested(&serde_json::to_vec(&v).unwrap()),
            Err(Poison::Invalid { .. })
        ));
        assert!(matches!(
            decode_result(&serde_json::to_vec(&v).unwrap()),
            Err(Poison::WrongType(_))
        ));
    }

    fn succeeded() -> PaymentResult {
        PaymentResult::new(
            EventId::new(),
            PaymentId::new(),
            Outcome::Succeeded,
            None,
            Some("ch_1".try_into().unwrap()),
        )
    }

    #[test]
    fn text_the_database_would_refuse_is_poison() {
        let ok = succeeded();
        let mut v = serde_json::to_value(&ok).unwrap();
        v["gateway_reference"] = "ch_\u{0}1".into();
        assert!(matches!(
            decode_result(&serde_json::to_vec(&v).unwrap()),
            Err(Poison::Invalid { .. })
        ));
        let mut r = serde_json::to_value(requested()).unwrap();
        r["payment"]["merchant_id"] = "shop\u{0}".into();
        assert!(matches!(
            decode_requested(&serde_json::to_vec(&r).unwrap()),
            Err(Poison::Invalid { .. })
        ));
        r["payment"]["merchant_id"] = "m".repeat(MERCHANT_ID_MAX_CHARS + 1).into();
        assert!(decode_requested(&serde_json::to_vec(&r).unwrap()).is_err());
    }

    #[test]
    fn result_outcome_and_reason_must_agree() {
        let ok = succeeded();
        assert!(decode_result(&serde_json::to_vec(&ok).unwrap()).is_ok());
        let bad = PaymentResult::new(
            EventId::new(),
            PaymentId::new(),
            Outcome::Failed,
            None,
            None,
        );
        assert!(decode_result(&serde_json::to_vec(&bad).unwrap()).is_err());
        let declined = PaymentResult::new(
            EventId::new(),
            PaymentId::new(),
            Outcome::Failed,
            Some(FailureReason::Declined),
            None,
        );
        let json = serde_json::to_value(&declined).unwrap();
        assert_eq!(json["outcome"], "failed");
        assert_eq!(json["failure_reason"], "declined");
    }

    #[test]
    fn requests_and_results_of_refunds_decode_beside_payments() {
        let refund = RequestedRefund {
            id: RefundId::new(),
            payment_id: PaymentId::new(),
            wallet_id: WalletId::new(),
            amount: Amount::new(25).unwrap(),
            currency: "EUR".parse().unwrap(),
            merchant_id: "m_1".into(),
        };
        let request = RefundRequested::new(EventId::new(), Utc::now(), refund.clone());
        let bytes = serde_json::to_vec(&request).unwrap();
        assert_eq!(decode_request(&bytes), Ok(Request::Refund(request)));
        let payment = requested();
        let bytes = serde_json::to_vec(&payment).unwrap();
        assert_eq!(decode_request(&bytes), Ok(Request::Payment(payment)));

        let result = RefundResult::new(
            EventId::new(),
            &refund,
            Outcome::Failed,
            Some(FailureReason::Declined),
            None,
        );
        let json = serde_json::to_value(&result).unwrap();
        assert_eq!(json["type"], "refund.result");
        assert_eq!(json["refund_id"], refund.id.to_string());
        assert_eq!(json["payment_id"], refund.payment_id.to_string());
        let decided = decode_decided(&serde_json::to_vec(&result).unwrap()).unwrap();
        assert_eq!(decided.payment_id(), refund.payment_id);
        assert_eq!(decided, Decided::Refund(result));

        let bad = RefundResult::new(EventId::new(), &refund, Outcome::Failed, None, None);
        assert!(decode_decided(&serde_json::to_vec(&bad).unwrap()).is_err());
        assert!(matches!(
            decode_request(br#"{"type":"refund.result","version":1}"#),
            Err(Poison::WrongType(Some(_)))
        ));
    }
}
