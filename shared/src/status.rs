//! The payment state machine: `pending → succeeded` or `pending → failed`, nothing else.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    Pending,
    Succeeded,
    Failed,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "succeeded" => Some(Self::Succeeded),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Pending)
    }

    /// The status a result moves a payment to, or `None` when the move is not allowed
    /// (a finalized payment never changes again).
    pub fn apply(self, outcome: Outcome) -> Option<Self> {
        match self {
            Self::Pending => Some(outcome.into()),
            Self::Succeeded | Self::Failed => None,
        }
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refund's status: the same machine as a payment's (`pending`, then `succeeded` or
/// `failed`, once).
pub type RefundStatus = PaymentStatus;

/// What the gateway decided for a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
}

impl From<Outcome> for PaymentStatus {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Succeeded => Self::Succeeded,
            Outcome::Failed => Self::Failed,
        }
    }
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        PaymentStatus::from(self).as_str()
    }
}

/// Why a payment failed. `failure_reason` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The gateway declined the charge.
    Declined,
    /// The gateway refused to process the charge (it certainly did not happen).
    GatewayUnavailable,
    /// Refunds only: the gateway refused the refund for good (no refundable charge under
    /// the payment, or more than it charged).
    NotRefundable,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Declined => "declined",
            Self::GatewayUnavailable => "gateway_unavailable",
            Self::NotRefundable => "not_refundable",
        }
    }
}

impl TryFrom<String> for PaymentStatus {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s).ok_or_else(|| format!("unknown payment status {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pending_payments_move() {
        use PaymentStatus::Pending;
        assert_eq!(
            Pending.apply(Outcome::Succeeded),
            Some(PaymentStatus::Succeeded)
        );
        assert_eq!(Pending.apply(Outcome::Failed), Some(PaymentStatus::Failed));
        for terminal in [PaymentStatus::Succeeded, PaymentStatus::Failed] {
            assert!(terminal.is_terminal());
            assert_eq!(terminal.apply(Outcome::Succeeded), None);
            assert_eq!(terminal.apply(Outcome::Failed), None);
        }
        assert!(!Pending.is_terminal());
    }

    #[test]
    fn status_strings_round_trip() {
        for s in [
            PaymentStatus::Pending,
            PaymentStatus::Succeeded,
            PaymentStatus::Failed,
        ] {
            assert_eq!(PaymentStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(PaymentStatus::parse("refunded"), None);
    }
}
