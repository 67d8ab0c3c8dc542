//! Large-payment alert thresholds, per currency.
//!
//! Configured as `ALERT_THRESHOLDS="EUR=5000000,USD=5000000,*=10000000"` (minor units); `*`
//! covers every currency not named. A payment whose amount is at or above its currency's
//! threshold yields one `payment.alert` event. An empty value disables alerts.

use shared::money::{Amount, Currency};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertThresholds {
    per_currency: BTreeMap<Currency, Amount>,
    otherwise: Option<Amount>,
}

impl AlertThresholds {
    /// The threshold for `currency`, if alerts are on for it.
    pub fn for_currency(&self, currency: Currency) -> Option<Amount> {
        self.per_currency.get(&currency).copied().or(self.otherwise)
    }

    /// Whether a payment of `amount` raises an alert; returns the threshold it reached.
    pub fn reached(&self, currency: Currency, amount: Amount) -> Option<Amount> {
        self.for_currency(currency).filter(|t| amount >= *t)
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        let mut out = Self::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (code, amount) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not CURRENCY=AMOUNT"))?;
            let amount: Amount = amount
                .trim()
                .parse::<i64>()
                .ok()
                .and_then(|a| Amount::new(a).ok())
                .ok_or_else(|| {
                    format!("{part:?}: the amount must be minor units from 1 to 10^12")
                })?;
            match code.trim() {
                "*" => out.otherwise = Some(amount),
                c => {
                    let currency: Currency = c
                        .parse()
                        .map_err(|_| format!("{part:?}: {c:?} is not an ISO 4217 currency"))?;
                    out.per_currency.insert(currency, amount);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur() -> Currency {
        "EUR".parse().unwrap()
    }

    #[test]
    fn named_currency_wins_over_the_default_and_the_bound_is_inclusive() {
        let t = AlertThresholds::parse("EUR=1000, *=50").unwrap();
        let usd: Currency = "USD".parse().unwrap();
        assert_eq!(t.reached(eur(), Amount::new(999).unwrap()), None);
        assert_eq!(
            t.reached(eur(), Amount::new(1000).unwrap()),
            Some(Amount::new(1000).unwrap())
        );
        assert_eq!(
            t.reached(usd, Amount::new(50).unwrap()),
            Some(Amount::new(50).unwrap())
        );
    }

    #[test]
    fn empty_disables_and_garbage_is_refused() {
        let off = AlertThresholds::parse("").unwrap();
        assert_eq!(
            off.reached(eur(), Amount::new(1_000_000_000_000).unwrap()),
            None
        );
        assert!(AlertThresholds::parse("EUR").is_err());
        assert!(AlertThresholds::parse("EUR=0").is_err());
        assert!(AlertThresholds::parse("EURO=5").is_err());
        assert!(AlertThresholds::parse("EUR=ten").is_err());
    }
}
