//! Events for other systems, published to Kafka through the wallet service's outbox:
//! `payment.finalized`, `wallet.deposited` and `payment.refunded` on topic `payment.events`,
//! `payment.alert` on `payment.alerts`. Each is written in the transaction that made the fact
//! true, so there is exactly one `event_id` per fact; delivery is at-least-once, so consumers
//! dedupe on it.
//! The message key is the wallet id, which keeps one wallet's events in order.
//!
//! Version 1 of each schema is documented in `docs/EVENTS.md`; a change that breaks a
//! consumer gets a new `version`.

use crate::events::VERSION;
use crate::ids::{EventId, PaymentId, RefundId, WalletId};
use crate::money::{Amount, Currency};
use crate::status::{FailureReason, PaymentStatus};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const PAYMENT_FINALIZED: &str = "payment.finalized";
pub const WALLET_DEPOSITED: &str = "wallet.deposited";
pub const PAYMENT_ALERT: &str = "payment.alert";
pub const PAYMENT_REFUNDED: &str = "payment.refunded";

/// The topic a notification travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// `payment.events`: what happened to money.
    Events,
    /// `payment.alerts`: what someone should look at.
    Alerts,
}

/// What a notification reports: its fields, its `type` and its topic.
pub trait Fact: Serialize {
    const TYPE: &'static str;
    const STREAM: Stream;
}

/// The envelope every notification shares; the fact's own fields sit beside these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification<F> {
    pub event_id: EventId,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    pub occurred_at: DateTime<Utc>,
    pub wallet_id: WalletId,
    #[serde(flatten)]
    pub fact: F,
}

impl<F: Fact> Notification<F> {
    /// A new notification with a fresh event id: call once per fact, in the transaction
    /// that made the fact true.
    pub fn new(wallet_id: WalletId, occurred_at: DateTime<Utc>, fact: F) -> Self {
        Self {
            event_id: EventId::new(),
            kind: F::TYPE.to_owned(),
            version: VERSION,
            occurred_at,
            wallet_id,
            fact,
        }
    }
}

/// `payment.finalized`: a payment reached its final status (captured or released).
pub type PaymentFinalized = Notification<Finalized>;
/// `wallet.deposited`: funds were credited to a wallet.
pub type WalletDeposited = Notification<Deposited>;
/// `payment.refunded`: the gateway refunded (part of) a payment and the wallet was credited.
pub type PaymentRefunded = Notification<Refunded>;
/// `payment.alert`: a payment at or above its currency's alert threshold was accepted
/// (raised when the funds are held, before the gateway decides, so a reviewer hears early).
pub type PaymentAlert = Notification<LargePayment>;

/// The wallet's balances right after the change the event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceAfter {
    pub available: i64,
    pub held: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finalized {
    pub payment: FinalizedPayment,
    pub balance: BalanceAfter,
}

impl Fact for Finalized {
    const TYPE: &'static str = PAYMENT_FINALIZED;
    const STREAM: Stream = Stream::Events;
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refunded {
    pub refund: RefundFact,
    pub balance: BalanceAfter,
}

impl Fact for Refunded {
    const TYPE: &'static str = PAYMENT_REFUNDED;
    const STREAM: Stream = Stream::Events;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefundFact {
    pub id: RefundId,
    pub payment_id: PaymentId,
    pub amount: Amount,
    pub currency: Currency,
    pub reason: Option<String>,
    pub gateway_reference: Option<String>,
    /// What the payment has had refunded in all, this refund included.
    pub payment_refunded_total: i64,
    pub created_at: DateTime<Utc>,
    pub finalized_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deposited {
    pub deposit: DepositFact,
    pub balance: BalanceAfter,
}

impl Fact for Deposited {
    const TYPE: &'static str = WALLET_DEPOSITED;
    const STREAM: Stream = Stream::Events;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DepositFact {
    /// The deposit's id (its ledger entry), as the API returned it.
    pub id: uuid::Uuid,
    pub amount: Amount,
    pub currency: Currency,
    pub reference: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LargePayment {
    /// Why the alert was raised; `large_payment` is the only reason in version 1.
    pub reason: String,
    pub threshold: Amount,
    pub payment: AlertedPayment,
}

impl LargePayment {
    pub fn new(threshold: Amount, payment: AlertedPayment) -> Self {
        Self {
            reason: "large_payment".to_owned(),
            threshold,
            payment,
        }
    }
}

impl Fact for LargePayment {
    const TYPE: &'static str = PAYMENT_ALERT;
    const STREAM: Stream = Stream::Alerts;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertedPayment {
    pub id: PaymentId,
    pub amount: Amount,
    pub currency: Currency,
    pub merchant_id: String,
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
            now,
            Finalized {
                payment: FinalizedPayment {
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
                balance: BalanceAfter {
                    available: 700,
                    held: 0,
                },
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

        let alert = PaymentAlert::new(
            wallet,
            now,
            LargePayment::new(
                Amount::new(100).unwrap(),
                AlertedPayment {
                    id: PaymentId::new(),
                    amount: Amount::new(150).unwrap(),
                    currency: "EUR".parse().unwrap(),
                    merchant_id: "m".into(),
                },
            ),
        );
        let json = serde_json::to_value(&alert).unwrap();
        assert_eq!(json["type"], "payment.alert");
        assert_eq!(json["reason"], "large_payment");
        assert_eq!(json["threshold"], 100);
        assert_ne!(alert.event_id, finalized.event_id);
    }
}
