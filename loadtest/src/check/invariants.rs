//! The ten checks of a run (docs/LOADTEST.md, "What it checks"), one function each.

use super::ledger::read_ledger;
use super::reconcile::{Final, Finals, Reconciled};
use super::server::Holdings;
use super::{examples, Balance, Check};
use crate::api::CallResult;
use crate::mix::PayKind;
use crate::run::{Ctx, PayRecord, Replays};
use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt};
use reqwest::StatusCode;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

pub(super) fn check(name: &str, ok: bool, detail: String) -> Check {
    Check {
        name: name.to_owned(),
        ok,
        detail,
    }
}

/// Check 1: Every accepted payment is final before the drain deadline.
pub fn all_final(drained: bool, drain_time: Duration, r: &Reconciled) -> Check {
    let ok = drained && r.counts.pending == 0;
    let secs = drain_time.as_secs_f64();
    let detail = if ok {
        format!(
            "{} payments final {secs:.1} s after the load ended",
            r.ours.len()
        )
    } else {
        let (pending, total) = (r.counts.pending, r.ours.len());
        format!("{pending} of {total} still pending after {secs:.0} s (--drain-timeout)")
    };
    check("every accepted payment is final", ok, detail)
}

/// Check 2: The server holds exactly the payments the generator made.
pub fn same_payments(ctx: &Ctx, r: &Reconciled, listed: usize) -> Check {
    let ok = r.phantoms.is_empty() && r.missing.is_empty() && r.mismatched.is_empty();
    let detail = if ok {
        let adopted = match r.counts.adopted {
            0 => String::new(),
            n => format!(", {n} of them found by key after a lost answer"),
        };
        format!(
            "{listed} payments listed for {} wallets{adopted}",
            ctx.wallets.len()
        )
    } else {
        format!(
            "{} unknown to the generator [{}], {} missing [{}], {} with another wallet or amount [{}]",
            r.phantoms.len(),
            examples(&r.phantoms),
            r.missing.len(),
            examples(&r.missing),
            r.mismatched.len(),
            examples(&r.mismatched)
        )
    };
    check(
        "the server holds exactly the payments the generator made",
        ok,
        detail,
    )
}

/// Each wallet's ledger and balance against the run's payments, for checks 3 to 6.
#[derive(Default)]
pub struct WalletAudit {
    pub money: Vec<String>,
    pub held: Vec<String>,
    pub ledger: Vec<String>,
    pub foreign: Vec<String>,
    pub deposited: i64,
    pub captured: i64,
    pub refunded: i64,
    pub entries: usize,
}

impl WalletAudit {
    pub fn of(
        ctx: &Ctx,
        r: &Reconciled,
        held: &Holdings,
        finals: &Finals,
        balances: &[Option<Balance>],
    ) -> Self {
        // The run's final payments by wallet, for the ledger comparison.
        let mut by_wallet: Vec<HashMap<&str, (i64, &str)>> =
            vec![HashMap::new(); ctx.wallets.len()];
        for (id, &(w, amount, _)) in &r.ours {
            if let Some(p) = held.payments.get(id) {
                by_wallet[w].insert(id.as_str(), (amount, p.status.as_str()));
            }
        }
        // The run's succeeded refunds by wallet and payment.
        let records = crate::run::lock(&ctx.refunds);
        let mut refunds: Vec<HashMap<&str, Vec<i64>>> = vec![HashMap::new(); ctx.wallets.len()];
        for r in records.iter().filter(|r| r.status == "succeeded") {
            refunds[r.wallet]
                .entry(r.payment_id.as_str())
                .or_default()
                .push(r.amount);
        }
        let mut a = Self {
            entries: held.ledgers.iter().map(Vec::len).sum(),
            ..Self::default()
        };
        for (i, w) in ctx.wallets.iter().enumerate() {
            let balance = balances.get(i).copied().flatten();
            let captured = finals.captured[i];
            let view = read_ledger(
                &held.ledgers[i],
                &w.deposit_id,
                &by_wallet[i],
                &refunds[i],
                balance,
            );
            a.ledger
                .extend(view.problems.iter().map(|p| format!("{}: {p}", w.id)));
            if view.deposits != w.deposited || !view.foreign_deposits.is_empty() {
                let (id, foreign, own) = (&w.id, &view.foreign_deposits, w.deposited);
                a.foreign.push(format!(
                    "{id}: deposits {foreign:?} besides the run's {own}"
                ));
            }
            a.deposited += view.deposits;
            a.captured += captured;
            a.refunded += view.refunds;
            let Some(b) = balance else {
                a.money.push(format!("{}: balance unreadable", w.id));
                continue;
            };
            if view.deposits + view.refunds != b.available + b.held + captured {
                a.money.push(format!(
                    "{}: deposited {} + refunded {} != available {} + held {} + captured {captured}",
                    w.id, view.deposits, view.refunds, b.available, b.held
                ));
            }
            if b.held != 0 {
                a.held.push(format!("{}: held {}", w.id, b.held));
            }
        }
        a
    }
}

/// Check 3: Per wallet, deposits + refunds = available + held + captured.
pub fn money_conserved(ctx: &Ctx, a: &WalletAudit, succeeded: u64) -> Check {
    let detail = if a.money.is_empty() {
        let (n, dep, cap, re) = (ctx.wallets.len(), a.deposited, a.captured, a.refunded);
        format!(
            "{n} wallets: {dep} deposited, {cap} captured by {succeeded} succeeded payments, \
             {re} refunded"
        )
    } else {
        format!("{} wallets off: {}", a.money.len(), examples(&a.money))
    };
    check(
        "per wallet: deposits + refunds = available + held + captured",
        a.money.is_empty(),
        detail,
    )
}

/// Check 4: Nothing is held once every payment is final.
pub fn nothing_held(a: &WalletAudit) -> Check {
    let detail = if a.held.is_empty() {
        "held = 0 in every wallet".into()
    } else {
        format!("{} wallets: {}", a.held.len(), examples(&a.held))
    };
    check(
        "nothing held once every payment is final",
        a.held.is_empty(),
        detail,
    )
}

/// Check 5: The ledger: one hold per payment, one capture or release per final one, and the
/// latest entry equal to the balance.
pub fn ledger_agrees(a: &WalletAudit) -> Check {
    let detail = if a.ledger.is_empty() {
        let n = a.entries;
        format!("{n} entries: one hold per payment, one capture or release per final one")
    } else {
        format!("{} problems: {}", a.ledger.len(), examples(&a.ledger))
    };
    check(
        "the ledger agrees with the payments and balances",
        a.ledger.is_empty(),
        detail,
    )
}

/// Check 6: No deposit other than the run's own in the run's wallets.
pub fn no_foreign_money(a: &WalletAudit) -> Check {
    let detail = if a.foreign.is_empty() {
        "each wallet holds only the run's deposit and payments".into()
    } else {
        format!(
            "{} wallets had deposits the run did not make (another test running?): {}",
            a.foreign.len(),
            examples(&a.foreign)
        )
    };
    check(
        "no other client moved money in the run's wallets",
        a.foreign.is_empty(),
        detail,
    )
}

/// The gateway's `charges` counter from its `/v1/stats`.
pub fn charges(stats: &Value) -> i64 {
    stats["charges"].as_i64().unwrap_or(-1)
}

/// Check 7: The gateway's charge count grew by the number of succeeded payments.
pub fn gateway_count(before: &Value, after: &Value, succeeded: u64) -> Check {
    let (b, a) = (charges(before), charges(after));
    let delta = a - b;
    let others = if delta > succeeded as i64 {
        " (anything else using the gateway at the same time counts too)"
    } else {
        ""
    };
    check(
        "gateway charges delta = succeeded payments",
        delta == succeeded as i64,
        format!("charges {b} -> {a} (+{delta}), succeeded payments {succeeded}{others}"),
    )
}

/// Check 8: The gateway's charge of each final payment agrees with it.
pub async fn gateway_agrees(ctx: &Ctx, finals: &[Final], gateway: &Value) -> Check {
    let lookups = gateway_disagreements(ctx, finals, gateway).await;
    let forgotten = match lookups.forgotten {
        0 => String::new(),
        n => format!(
            "; {n} older than the gateway's retention ({} s) were forgotten by it, as it may",
            gateway["retention_secs"]
        ),
    };
    let detail = if lookups.problems.is_empty() {
        format!(
            "{} charges looked up by payment id{forgotten}",
            finals.len()
        )
    } else {
        let problems = &lookups.problems;
        format!(
            "{} disagree: {}{forgotten}",
            problems.len(),
            examples(problems)
        )
    };
    check(
        "the gateway's charge of each final payment agrees",
        lookups.problems.is_empty(),
        detail,
    )
}

/// Before when the gateway may have forgotten a charge by `now` (`GATEWAY_RETENTION_SECS`,
/// from its `/v1/stats`): a charge is made after its payment was accepted, and forgotten
/// only once it is older than the retention, so a payment accepted after this must still
/// be found by a look-up made before `now`.
fn forgets_before(gateway: &Value, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let secs = gateway["retention_secs"].as_i64()?;
    now.checked_sub_signed(chrono::Duration::try_seconds(secs)?)
}

struct Lookups {
    problems: Vec<String>,
    /// Charges not found because the gateway's retention let them go.
    forgotten: usize,
}

/// Looks every final payment up at the gateway by its idempotency key (the payment id):
/// succeeded ↔ a succeeded charge of the same amount, declined ↔ a declined charge,
/// any other failure ↔ no charge (or a voided key). A charge not found for a payment
/// accepted longer than the gateway's retention before the last look-up was forgotten.
async fn gateway_disagreements(ctx: &Ctx, finals: &[Final], gateway: &Value) -> Lookups {
    let answers: Vec<(usize, CallResult)> = stream::iter(finals.iter().enumerate())
        .map(|(i, (id, ..))| async move { (i, ctx.api.gateway_charge(id).await) })
        .buffer_unordered(32)
        .collect()
        .await;
    // Taken after the look-ups, which take a while and during which the gateway goes on
    // forgetting: from the time of the first one, a payment accepted just inside the
    // retention could be forgotten by the time its charge is looked up.
    let forgets_before = forgets_before(gateway, Utc::now());
    let mut lookups = Lookups {
        problems: Vec::new(),
        forgotten: 0,
    };
    for (i, r) in answers {
        let (id, amount, status, reason, created) = &finals[i];
        let charged = status == "succeeded" || reason.as_deref() == Some("declined");
        if let Ok(c) = &r {
            let old = created.zip(forgets_before).is_some_and(|(c, f)| c < f);
            if charged && old && c.status == StatusCode::NOT_FOUND {
                lookups.forgotten += 1;
                continue;
            }
        }
        let problem = match (&r, status.as_str(), reason.as_deref()) {
            (Err(e), ..) => Some(format!("look-up failed: {}", e.describe())),
            (Ok(c), "succeeded", _) => (c.status != StatusCode::OK
                || c.body["status"] != "succeeded"
                || c.body["amount"].as_i64() != Some(*amount))
            .then(|| format!("succeeded but gateway has {} {}", c.status, c.body)),
            (Ok(c), _, Some("declined")) => (c.status != StatusCode::OK
                || c.body["status"] != "declined")
                .then(|| format!("declined but gateway has {} {}", c.status, c.body)),
            (Ok(c), ..) => (c.status == StatusCode::OK && c.body["status"] != "voided")
                .then(|| format!("failed ({reason:?}) but gateway has {}", c.body)),
        };
        if let Some(p) = problem {
            lookups.problems.push(format!("{id}: {p}"));
        }
    }
    lookups
}

/// Check 9: Every client retry replayed the first response.
pub fn replays_replayed(replays: &Replays) -> Check {
    let (checked, mismatched) = (replays.checked, replays.mismatched);
    let detail = if mismatched == 0 {
        format!("{checked} retries: same status and body, Idempotent-Replayed: true")
    } else {
        let e = examples(&replays.examples);
        format!("{mismatched} of {checked} differ: {e}")
    };
    check(
        "every client retry replayed the first response",
        mismatched == 0,
        detail,
    )
}

/// Check 10: Every payment ended as the mix intended.
pub fn as_intended(r: &Reconciled, finals: &Finals, records: &[PayRecord]) -> Check {
    let mut problems = r.surprises.clone();
    problems.extend(finals.not_declined.iter().map(|d| format!("decline {d}")));
    let detail = if problems.is_empty() {
        let declines = records
            .iter()
            .filter(|x| x.op.kind == PayKind::Decline)
            .count();
        let lost = match r.counts.unresolved {
            0 => String::new(),
            n => format!("; {n} answers lost (see errors)"),
        };
        let refused = r.counts.refused;
        format!("{refused} refused for insufficient funds, {declines} declines released{lost}")
    } else {
        format!("{} did not: {}", problems.len(), examples(&problems))
    };
    check(
        "every payment ended as the mix intended",
        problems.is_empty(),
        detail,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_charges_older_than_the_gateways_retention_may_be_missing() {
        let now = Utc::now();
        assert_eq!(
            forgets_before(&json!({"charges": 1}), now),
            None,
            "an older gateway"
        );
        assert_eq!(
            forgets_before(&json!({"retention_secs": 120}), now),
            Some(now - chrono::Duration::seconds(120))
        );
    }

    #[test]
    fn the_gateway_count_must_match_exactly() {
        let before = json!({"charges": 10});
        assert!(gateway_count(&before, &json!({"charges": 15}), 5).ok);
        let more = gateway_count(&before, &json!({"charges": 16}), 5);
        assert!(!more.ok);
        assert!(more.detail.contains("anything else"), "{}", more.detail);
        assert!(!gateway_count(&before, &json!({"charges": 14}), 5).ok);
        assert!(!gateway_count(&json!({}), &json!({"charges": 5}), 5).ok);
    }

    #[test]
    fn the_wallet_checks_fail_on_any_problem() {
        let clean = WalletAudit::default();
        assert!(nothing_held(&clean).ok && ledger_agrees(&clean).ok && no_foreign_money(&clean).ok);
        let a = WalletAudit {
            held: vec!["w1: held 5".into()],
            ledger: vec!["w2: x".into()],
            foreign: vec!["w3: y".into()],
            ..WalletAudit::default()
        };
        assert!(!nothing_held(&a).ok);
        assert!(!ledger_agrees(&a).ok);
        assert!(!no_foreign_money(&a).ok);
        assert!(nothing_held(&a).detail.contains("w1: held 5"));
    }
}
