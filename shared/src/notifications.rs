//! Events for other systems, published to Kafka through the wallet service's outbox:
//! `payment.finalized` and `wallet.deposited` on topic `payment.events`, `payment.alert` on
//! `payment.alerts`. Each is written in the transaction that made the fact true, so there is
//! exactly one `event_id` per fact; delivery is at-least-once, so consumers dedupe on it.
//! The message key is the wallet id, which keeps one wallet's events in order.
//!
//! Version 1 of each schema is documented in `docs/EVENTS.md`; a change that breaks a
//! consumer gets a new `version`.

use crate::events::VERSION;
use crate::ids::{EventId, PaymentId, WalletId};
use crate::money::{Amount, Currency};
use crate::status::{FailureReason, PaymentStatus};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const PAYMENT_FINALIZED: &str = "payment.finalized";
pub const WALLET_DEPOSITED: &str = "wallet.deposited";
pub const PAYMENT_ALERT: &str = "payment.alert";

/// The wallet's balances right after the change the event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceAfter {
    pub available: i64,
    pub held: i64,
}

/// A payment reached its final status (captured or released).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentFinalized {
    pub event_id: EventId,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    pub occurred_at: DateTime<Utc>,
    pub wallet_id: WalletId,
    pub payment: FinalizedPayment,
    pub balance: BalanceAfter,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalizedPayment {
    pub id: PaymentId,
    pub amount: Amount,
    pub currency: Currency,
    pub merchant_id: String,
    pub status: PaymentStatus,
    pub failure_reason: Option<FailureReason>,
    pub gateway_reference: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finalized_at: DateTime<Utc>,
}

impl PaymentFinalized {
    pub fn new(wallet_id: WalletId, payment: FinalizedPayment, balance: BalanceAfter) -> Self {
        Self {
            event_id: EventId::new(),
            kind: PAYMENT_FINALIZED.to_owned(),
            version: VERSION,
            occurred_at: payment.finalized_at,
            wallet_id,
            payment,
            balance,
        }
    }
}

/// Funds were credited to a wallet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WalletDeposited {
    pub event_id: EventId,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    pub occurred_at: DateTime<Utc>,
    pub wallet_id: WalletId,
    pub deposit: DepositFact,
    pub balance: BalanceAfter,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DepositFact {
    /// The deposit's id (its ledger entry), as the API returned it.
    pub id: uuid::Uuid,
    pub amount: Amount,
    pub currency: Currency,
    pub reference: Option<String>,
}

impl WalletDeposited {
    pub fn new(
        wallet_id: WalletId,
        occurred_at: DateTime<Utc>,
        deposit: DepositFact,
        balance: BalanceAfter,
    ) -> Self {
        Self {
            event_id: EventId::new(),
            kind: WALLET_DEPOSITED.to_owned(),
            version: VERSION,
            occurred_at,
            wallet_id,
            deposit,
            balance,
        }
    }
}

/// A payment at or above its currency's alert threshold was accepted (raised when the
/// funds are held, before the gateway decides, so a reviewer hears of it early).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentAlert {
    pub event_id: EventId,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    pub occurred_at: DateTime<Utc>,
    pub wallet_id: WalletId,
    /// Why the alert was raised; `large_payment` is the only reason in version 1.
    pub reason: String,
    pub threshold: Amount,
    pub payment: AlertedPayment,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertedPayment {
    pub id: PaymentId,
    pub amount: Amount,
    pub currency: Currency,
    pub merchant_id: String,
}

impl PaymentAlert {
    pub fn large_payment(
        wallet_id: WalletId,
        occurred_at: DateTime<Utc>,
        threshold: Amount,
        payment: AlertedPayment,
    ) -> Self {
        Self {
            event_id: EventId::new(),
            kind: PAYMENT_ALERT.to_owned(),
            version: VERSION,
            occurred_at,
            wallet_id,
            reason: "large_payment".to_owned(),
            threshold,
            payment,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_type_version_and_wallet() {
        let wallet = WalletId::new();
        let now = Utc::now();
        let finalized = PaymentFinalized::new(
            wallet,
            FinalizedPayment {
                id: PaymentId::new(),
                amount: Amount::new(700).unwrap(),
                currency: "EUR".parse().unwrap(),
                merchant_id: "m".into(),
                status: PaymentStatus::Failed,
                failure_reason: Some(FailureReason::Declined),
                gateway_reference: None,
                created_at: now,
                finalized_at: now,
            },
            BalanceAfter {
                available: 700,
                held: 0,
            },
        );
        let json = serde_json::to_value(&finalized).unwrap();
        assert_eq!(json["type"], "payment.finalized");
        assert_eq!(json["version"], 1);
        assert_eq!(json["wallet_id"], wallet.to_string());
        assert_eq!(json["payment"]["status"], "failed");
        assert_eq!(json["payment"]["failure_reason"], "declined");
        let back: PaymentFinalized = serde_json::from_value(json).unwrap();
        assert_eq!(back, finalized);

        let alert = PaymentAlert::large_payment(
            wallet,
            now,
            Amount::new(100).unwrap(),
            AlertedPayment {
                id: PaymentId::new(),
                amount: Amount::new(150).unwrap(),
                currency: "EUR".parse().unwrap(),
                merchant_id: "m".into(),
            },
        );
        let json = serde_json::to_value(&alert).unwrap();
        assert_eq!(json["type"], "payment.alert");
        assert_eq!(json["reason"], "large_payment");
        assert_eq!(json["threshold"], 100);
        assert_ne!(alert.event_id, finalized.event_id);
    }
}
