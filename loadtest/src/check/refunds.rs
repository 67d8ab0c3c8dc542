//! Check 11: the run's refunds. Every refund asked for was accepted and succeeded (the
//! run refunds only payments to ordinary merchants, whose refunds the gateway makes), no
//! payment got back more than it captured, a payment refunded in parts got back exactly
//! its amount, and the gateway refunded exactly what the wallets were credited.

use super::invariants::check;
use super::{examples, Check};
use crate::run::RefundRecord;
use serde_json::Value;
use std::collections::HashMap;

/// The gateway's succeeded refunds and their sum, from its `/v1/stats`.
fn gateway_refunds(stats: &Value) -> (i64, i64) {
    (
        stats["refunds"].as_i64().unwrap_or(-1),
        stats["refunded_amount"].as_i64().unwrap_or(-1),
    )
}

pub fn refunds_agree(records: &[RefundRecord], before: &Value, after: &Value) -> Check {
    let mut problems = Vec::new();
    let mut by_payment: HashMap<&str, (i64, i64, usize)> = HashMap::new();
    let (mut count, mut total) = (0, 0);
    for r in records {
        if r.status != "succeeded" {
            let id = r.id.as_deref().unwrap_or("(not accepted)");
            problems.push(format!("refund {id} of {}: {}", r.payment_id, r.status));
            continue;
        }
        count += 1;
        total += r.amount;
        let e = by_payment
            .entry(r.payment_id.as_str())
            .or_insert((r.payment_amount, 0, 0));
        e.1 += r.amount;
        e.2 += 1;
    }
    for (id, (amount, refunded, parts)) in &by_payment {
        if refunded > amount || (*parts > 0 && refunded != amount) {
            problems.push(format!(
                "payment {id}: {refunded} refunded in {parts} part(s) of {amount}"
            ));
        }
    }
    let (b, a) = (gateway_refunds(before), gateway_refunds(after));
    let gateway = (a.0 - b.0, a.1 - b.1);
    if gateway != (count, total) {
        problems.push(format!(
            "the gateway made {} refunds of {} in all during the run, the wallets were credited {count} of {total}",
            gateway.0, gateway.1
        ));
    }
    let detail = if problems.is_empty() {
        format!(
            "{count} refunds of {} payments, {total} credited, as many as the gateway refunded",
            by_payment.len()
        )
    } else {
        format!("{} problems: {}", problems.len(), examples(&problems))
    };
    check(
        "refunds: each credited once, never beyond the capture, as the gateway made them",
        problems.is_empty(),
        detail,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(payment: &str, amount: i64, status: &str) -> RefundRecord {
        RefundRecord {
            payment_id: payment.into(),
            wallet: 0,
            payment_amount: 90,
            id: Some(format!("r-{payment}-{amount}")),
            amount,
            status: status.into(),
        }
    }

    #[test]
    fn refunds_must_add_up_and_match_the_gateway() {
        let before = json!({"refunds": 5, "refunded_amount": 1000});
        let after = json!({"refunds": 8, "refunded_amount": 1180});
        let good = vec![
            rec("p1", 90, "succeeded"),
            rec("p2", 30, "succeeded"),
            rec("p2", 60, "succeeded"),
        ];
        assert!(refunds_agree(&good, &before, &after).ok);

        // The gateway refunded something the wallets were not credited for.
        let more = json!({"refunds": 9, "refunded_amount": 1210});
        assert!(!refunds_agree(&good, &before, &more).ok);
        // A refund that failed, and a payment refunded only in part.
        let bad = vec![rec("p1", 90, "failed"), rec("p2", 30, "succeeded")];
        let c = refunds_agree(
            &bad,
            &before,
            &json!({"refunds": 6, "refunded_amount": 1030}),
        );
        assert!(!c.ok);
        assert!(c.detail.contains("2 problems"), "{}", c.detail);
        // No stats from the gateway: cannot agree.
        assert!(!refunds_agree(&good, &json!({}), &json!({})).ok);
    }
}
