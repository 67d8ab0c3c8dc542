//! One wallet's ledger read against the run's payments and the wallet's balance.

use super::server::Entry;
use super::Balance;
use std::collections::HashMap;

/// What one wallet's ledger says, against the payments the generator knows and the balance.
#[derive(Debug, Default, PartialEq)]
pub struct LedgerView {
    /// Sum of deposit entries.
    pub deposits: i64,
    /// Sum of refund entries.
    pub refunds: i64,
    /// Deposit entries other than the run's own deposit.
    pub foreign_deposits: Vec<(String, i64)>,
    /// Disagreements between the ledger and the payments or the balance.
    pub problems: Vec<String>,
}

/// `payments`: the run's final payments in this wallet (id → (amount, status));
/// `refunds`: the amounts of the run's succeeded refunds, by payment id.
pub fn read_ledger(
    entries: &[Entry],
    own_deposit: &str,
    payments: &HashMap<&str, (i64, &str)>,
    refunds: &HashMap<&str, Vec<i64>>,
    balance: Option<Balance>,
) -> LedgerView {
    let mut v = LedgerView::default();
    let mut by_payment: HashMap<&str, Vec<(&str, i64)>> = HashMap::new();
    let mut refunded: HashMap<&str, Vec<i64>> = HashMap::new();
    for e in entries {
        match (e.kind.as_str(), e.payment_id.as_deref()) {
            ("deposit", _) => {
                v.deposits += e.amount;
                if e.id != own_deposit {
                    v.foreign_deposits.push((e.id.clone(), e.amount));
                }
            }
            ("refund", Some(p)) => {
                v.refunds += e.amount;
                refunded.entry(p).or_default().push(e.amount);
            }
            (kind, Some(p)) => by_payment.entry(p).or_default().push((kind, e.amount)),
            (kind, None) => v
                .problems
                .push(format!("{kind} entry {} without a payment", e.id)),
        }
    }
    for (id, &(amount, status)) in payments {
        let mut got = by_payment.remove(id).unwrap_or_default();
        got.sort();
        let want: Vec<(&str, i64)> = match status {
            "succeeded" => vec![("capture", amount), ("hold", amount)],
            "failed" => vec![("hold", amount), ("release", amount)],
            _ => vec![("hold", amount)],
        };
        if got != want {
            v.problems.push(format!(
                "payment {id} ({status}): entries {got:?}, expected {want:?}"
            ));
        }
    }
    for (id, got) in by_payment {
        v.problems.push(format!(
            "entries {got:?} for payment {id}, not one of the run's"
        ));
    }
    // One `refund` entry per succeeded refund, of its amount, and no other.
    for (id, want) in refunds {
        let mut want = want.clone();
        let mut got = refunded.remove(id).unwrap_or_default();
        want.sort_unstable();
        got.sort_unstable();
        if got != want {
            v.problems.push(format!(
                "payment {id}: refund entries {got:?}, succeeded refunds {want:?}"
            ));
        }
    }
    for (id, got) in refunded {
        v.problems.push(format!(
            "refund entries {got:?} for payment {id}, which the run did not refund"
        ));
    }
    if let (Some(last), Some(b)) = (entries.first(), balance) {
        if (last.available_after, last.held_after) != (b.available, b.held) {
            v.problems.push(format!(
                "latest entry leaves available {} held {}, balance says {} {}",
                last.available_after, last.held_after, b.available, b.held
            ));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, kind: &str, amount: i64, payment: Option<&str>, after: (i64, i64)) -> Entry {
        Entry {
            id: id.into(),
            kind: kind.into(),
            amount,
            payment_id: payment.map(Into::into),
            available_after: after.0,
            held_after: after.1,
        }
    }

    #[test]
    fn ledger_reading() {
        // Newest first, as the API lists them.
        let entries = vec![
            entry("e5", "release", 30, Some("p2"), (970, 0)),
            entry("e4", "capture", 100, Some("p1"), (940, 30)),
            entry("e3", "hold", 30, Some("p2"), (870, 130)),
            entry("e2", "hold", 100, Some("p1"), (900, 100)),
            entry("d1", "deposit", 1000, None, (1000, 0)),
        ];
        let payments: HashMap<&str, (i64, &str)> =
            [("p1", (100, "succeeded")), ("p2", (30, "failed"))].into();
        let balance = Some(Balance {
            available: 970,
            held: 0,
        });
        let none = HashMap::new();
        let v = read_ledger(&entries, "d1", &payments, &none, balance);
        assert_eq!(
            v,
            LedgerView {
                deposits: 1000,
                ..Default::default()
            }
        );

        // A foreign deposit, a payment the run does not know, a missing capture, a
        // balance that does not match the latest entry.
        let mut more = entries.clone();
        more.insert(0, entry("x9", "deposit", 5, None, (975, 0)));
        more.insert(0, entry("x8", "hold", 7, Some("p9"), (968, 7)));
        more.retain(|e| e.id != "e4");
        let v = read_ledger(&more, "d1", &payments, &none, balance);
        assert_eq!(v.deposits, 1005);
        assert_eq!(v.foreign_deposits, vec![("x9".to_owned(), 5)]);
        assert_eq!(v.problems.len(), 3, "{:?}", v.problems);
        assert!(v.problems.iter().any(|p| p.contains("p1 (succeeded)")));
        assert!(v.problems.iter().any(|p| p.contains("p9")));
        assert!(v.problems.iter().any(|p| p.contains("balance says 970 0")));
    }

    #[test]
    fn refund_entries_must_match_the_succeeded_refunds() {
        let entries = vec![
            entry("e4", "refund", 60, Some("p1"), (960, 0)),
            entry("e3", "refund", 40, Some("p1"), (900, 0)),
            entry("e2", "capture", 100, Some("p1"), (860, 0)),
            entry("e1", "hold", 100, Some("p1"), (860, 100)),
            entry("d1", "deposit", 960, None, (960, 0)),
        ];
        let payments: HashMap<&str, (i64, &str)> = [("p1", (100, "succeeded"))].into();
        let balance = Some(Balance {
            available: 960,
            held: 0,
        });
        let refunds: HashMap<&str, Vec<i64>> = [("p1", vec![60, 40])].into();
        let v = read_ledger(&entries, "d1", &payments, &refunds, balance);
        assert_eq!((v.refunds, v.problems.len()), (100, 0), "{:?}", v.problems);

        // A refund credited that did not succeed, and one missing.
        let refunds: HashMap<&str, Vec<i64>> = [("p1", vec![40, 10])].into();
        let v = read_ledger(&entries, "d1", &payments, &refunds, balance);
        assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
        assert!(v.problems[0].contains("refund entries [40, 60]"));
        // Entries for a refund the run never asked for.
        let v = read_ledger(&entries, "d1", &payments, &HashMap::new(), balance);
        assert!(v.problems[0].contains("which the run did not refund"));
    }
}
