//! The generator's record of what it sent, set against what the server holds: which
//! payments are the run's, how each ended, and how long each took to finalize.

use super::server::ServerPayment;
use super::Counts;
use crate::mix::PayKind;
use crate::run::{Ctx, PayAnswer, PayRecord};
use crate::stats::{histogram, record};
use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, HashMap};

/// A payment of the run: its wallet (index), amount and kind in the mix.
pub type Op = (usize, i64, PayKind);

/// The run's payments as the server lists them.
pub struct Reconciled {
    /// Accepted payments (and those found by key after a lost answer), by id.
    pub ours: HashMap<String, Op>,
    pub counts: Counts,
    /// Server payments in the run's wallets that the generator never made.
    pub phantoms: Vec<String>,
    /// Accepted payments the server does not list.
    pub missing: Vec<String>,
    /// Payments the server lists with another wallet or amount.
    pub mismatched: Vec<String>,
    /// Answers other than the one the mix intended.
    pub surprises: Vec<String>,
}

impl Reconciled {
    pub fn of(ctx: &Ctx, records: &[PayRecord], server: &HashMap<String, ServerPayment>) -> Self {
        let mut counts = Counts::default();
        let mut ours: HashMap<String, Op> = HashMap::new();
        let mut unresolved: HashMap<u64, Op> = HashMap::new();
        let mut surprises = Vec::new();
        for r in records {
            if let Some(s) = &r.surprise {
                let (kind, key) = (r.op.kind.label(), ctx.key(r.op.n));
                surprises.push(format!("{kind} {key}: got {s}"));
            }
            let op = (r.op.wallet, r.op.amount, r.op.kind);
            match &r.outcome {
                PayAnswer::Accepted { id } => {
                    counts.accepted += 1;
                    ours.insert(id.clone(), op);
                }
                PayAnswer::Refused => counts.refused += 1,
                PayAnswer::Rejected(_) => counts.rejected += 1,
                PayAnswer::Unresolved(_) => {
                    counts.unresolved += 1;
                    unresolved.insert(r.op.n, op);
                }
            }
        }
        let wallet_index: HashMap<&str, usize> = ctx
            .wallets
            .iter()
            .enumerate()
            .map(|(i, w)| (w.id.as_str(), i))
            .collect();
        // Server payments that are not ours: adopted if their key was unresolved, else
        // phantoms.
        let mut phantoms = Vec::new();
        let mut mismatched = Vec::new();
        for p in server.values() {
            if let Some(&(w, amount, _)) = ours.get(&p.id) {
                if wallet_index.get(p.wallet_id.as_str()) != Some(&w) || p.amount != amount {
                    let (id, amount, wallet) = (&p.id, p.amount, &p.wallet_id);
                    mismatched.push(format!("{id}: server has {amount} in {wallet}"));
                }
                continue;
            }
            let adopted = p
                .description
                .as_deref()
                .and_then(|d| ctx.key_number(d))
                .and_then(|n| unresolved.remove(&n));
            match adopted {
                Some(op) => {
                    counts.adopted += 1;
                    ours.insert(p.id.clone(), op);
                }
                None => phantoms.push(format!("{} ({}, {:?})", p.id, p.amount, p.description)),
            }
        }
        let missing = ours
            .keys()
            .filter(|id| !server.contains_key(*id))
            .cloned()
            .collect();
        Self {
            ours,
            counts,
            phantoms,
            missing,
            mismatched,
            surprises,
        }
    }
}

/// A final payment: id, amount, status, failure reason, when the server accepted it.
pub type Final = (String, i64, String, Option<String>, Option<DateTime<Utc>>);

/// How the run's payments ended.
pub struct Finals {
    pub list: Vec<Final>,
    /// Amount captured per wallet (index) by succeeded payments.
    pub captured: Vec<i64>,
    /// Payments sent to the declining merchant that did not end declined.
    pub not_declined: Vec<String>,
    /// Server-side `finalized_at - created_at`, overall, by outcome and by second of
    /// creation since the load started.
    pub finalize: Histogram<u64>,
    pub by_outcome: BTreeMap<String, Histogram<u64>>,
    pub by_second: Vec<Histogram<u64>>,
}

impl Finals {
    /// Also counts the final states into `r.counts`.
    pub fn of(
        ctx: &Ctx,
        r: &mut Reconciled,
        server: &HashMap<String, ServerPayment>,
        wall_t0: DateTime<Utc>,
    ) -> Self {
        let mut f = Finals {
            list: Vec::new(),
            captured: vec![0; ctx.wallets.len()],
            not_declined: Vec::new(),
            finalize: histogram(),
            by_outcome: BTreeMap::new(),
            by_second: Vec::new(),
        };
        let counts = &mut r.counts;
        for (id, &(w, amount, kind)) in &r.ours {
            let Some(p) = server.get(id) else { continue };
            let reason = p.failure_reason.as_deref();
            match p.status.as_str() {
                "pending" => {
                    counts.pending += 1;
                    continue;
                }
                "succeeded" => {
                    counts.succeeded += 1;
                    f.captured[w] += amount;
                }
                _ if reason == Some("declined") => counts.declined += 1,
                _ => counts.failed_other += 1,
            }
            if kind == PayKind::Decline && !(p.status == "failed" && reason == Some("declined")) {
                f.not_declined
                    .push(format!("{id}: {} {:?}", p.status, p.failure_reason));
            }
            f.list.push((
                id.clone(),
                amount,
                p.status.clone(),
                p.failure_reason.clone(),
                p.created_at,
            ));
            if let (Some(c), Some(done)) = (p.created_at, p.finalized_at) {
                f.latency(p, (done - c).to_std().unwrap_or_default(), c, wall_t0);
            }
        }
        f
    }

    fn latency(
        &mut self,
        p: &ServerPayment,
        d: std::time::Duration,
        created: DateTime<Utc>,
        wall_t0: DateTime<Utc>,
    ) {
        record(&mut self.finalize, d);
        let outcome = match (p.status.as_str(), p.failure_reason.as_deref()) {
            ("succeeded", _) => "succeeded".to_owned(),
            (_, Some(r)) => format!("failed ({r})"),
            (s, None) => s.to_owned(),
        };
        record(self.by_outcome.entry(outcome).or_insert_with(histogram), d);
        let s = (created - wall_t0).num_seconds().max(0) as usize;
        if self.by_second.len() <= s {
            self.by_second.resize_with(s + 1, histogram);
        }
        record(&mut self.by_second[s], d);
    }
}
