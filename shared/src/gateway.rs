//! The payment gateway's wire contract, shared by the processor (its client) and the mock
//! gateway (its server), so the two cannot drift apart.

use crate::text::GatewayReference;
use serde::{Deserialize, Serialize};

/// A charge's state as the gateway reports it. The set is closed on purpose: the processor
/// acts only on a status it knows (see [`ChargeStatus::parse`]); a real gateway that answers
/// `pending` or `processing` has not decided, and must never be read as a decline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChargeStatus {
    Succeeded,
    Declined,
    /// The key was closed without a charge: nothing can ever be charged under it.
    Voided,
}

impl ChargeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Declined => "declined",
            Self::Voided => "voided",
        }
    }

    /// The status named `s`, or `None` for any other word (the outcome is not known yet).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "succeeded" => Some(Self::Succeeded),
            "declined" => Some(Self::Declined),
            "voided" => Some(Self::Voided),
            _ => None,
        }
    }
}

/// The part of a charge answer (`POST /v1/charges`, `POST /v1/charges/{key}/void`) a client
/// decides on. `status` stays a string here so that a status this code does not know reaches
/// the decision as "unknown" rather than as an unreadable body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChargeReply {
    pub id: GatewayReference,
    pub status: String,
}

/// A refund's state as the gateway reports it (`POST /v1/charges/{key}/refunds`). Closed
/// like [`ChargeStatus`]: any other word means the gateway has not decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefundStatus {
    Succeeded,
    Declined,
}

impl RefundStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Declined => "declined",
        }
    }

    /// The status named `s`, or `None` for any other word (not decided yet).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "succeeded" => Some(Self::Succeeded),
            "declined" => Some(Self::Declined),
            _ => None,
        }
    }
}

/// The body of a refund request: the refund's amount in the charge's minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRequest {
    pub amount: i64,
}

/// The part of a refund answer a client decides on (`status` stays a string, as in
/// [`ChargeReply`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RefundReply {
    pub id: GatewayReference,
    pub status: String,
}

/// Refusals of a refund that no retry changes (`{"error": code}`): the client must not
/// retry them, and the refund has certainly not happened.
pub mod refund_refusal {
    /// No succeeded charge under the key (unknown, declined or voided).
    pub const CHARGE_NOT_REFUNDABLE: &str = "charge_not_refundable";
    /// The refunds of the charge would exceed what it charged.
    pub const EXCEEDS_CHARGE: &str = "refund_exceeds_charge";
    /// The refund key was used before for a different charge or amount.
    pub const KEY_REUSED: &str = "idempotency_key_reused";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_unknown_words_are_not_guessed() {
        for s in [
            ChargeStatus::Succeeded,
            ChargeStatus::Declined,
            ChargeStatus::Voided,
        ] {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(ChargeStatus::parse(s.as_str()), Some(s));
        }
        for other in ["pending", "processing", "SUCCEEDED", "", "failed"] {
            assert_eq!(ChargeStatus::parse(other), None, "{other}");
        }
        let reply: ChargeReply =
            serde_json::from_str(r#"{"id":"ch_stub","status":"pending","amount":1}"#).unwrap();
        assert_eq!(reply.status, "pending");
    }
}
