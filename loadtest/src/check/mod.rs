//! After the load: wait (with a deadline) until every accepted payment is final, then
//! check the money invariants through the API and the gateway, one function per check
//! (`invariants`).

mod invariants;
mod ledger;
mod reconcile;
mod refunds;
mod server;

use crate::run::{lock, Ctx};
use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// One check of the run and what it found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Copy)]
pub struct Balance {
    pub available: i64,
    pub held: i64,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Counts {
    /// Payments the generator saw accepted (202).
    pub accepted: u64,
    /// Payments whose answer was lost but the server has (found by their key).
    pub adopted: u64,
    pub succeeded: u64,
    pub declined: u64,
    pub failed_other: u64,
    pub pending: u64,
    /// Refused as intended (422 insufficient_funds).
    pub refused: u64,
    /// Definitive answers other than the intended one.
    pub rejected: u64,
    /// No definitive answer after every attempt.
    pub unresolved: u64,
}

pub struct Verdict {
    pub checks: Vec<Check>,
    /// Whether every accepted payment was final before the deadline.
    pub drained: bool,
    /// From the end of the load phase until every payment was final (or the deadline).
    pub drain_time: Duration,
    /// Server-side `finalized_at - created_at`.
    pub finalize: Histogram<u64>,
    pub finalize_by_outcome: BTreeMap<String, Histogram<u64>>,
    /// Server-side finalization latency by second of `created_at` since the load started.
    pub finalize_by_second: Vec<Histogram<u64>>,
    pub counts: Counts,
    pub gateway_charges_delta: i64,
}

fn progress(ctx: &Ctx, line: &str) {
    if ctx.args.quiet {
        return;
    }
    let mut err = std::io::stderr().lock();
    if err.is_terminal() {
        let _ = write!(err, "\r\x1b[2K[loadtest] {line}");
    } else {
        let _ = writeln!(err, "[loadtest] {line}");
    }
    let _ = err.flush();
}

fn examples(v: &[String]) -> String {
    let mut s = v.iter().take(3).cloned().collect::<Vec<_>>().join("; ");
    if v.len() > 3 {
        s.push_str(&format!("; and {} more", v.len() - 3));
    }
    s
}

pub async fn verify(
    ctx: &Ctx,
    load_end: Instant,
    wall_t0: DateTime<Utc>,
    gateway_before: &Value,
) -> anyhow::Result<Verdict> {
    let (drained, drain_time, _) = server::drain(ctx, load_end).await;
    // Refunds credit wallets after their payments were final: once every refund is final
    // too, read the balances again.
    progress(ctx, "waiting for the refunds to be final...");
    ctx.wait_refunds().await;
    let balances = server::balances(ctx).await;
    progress(ctx, "checking the invariants...");
    let held = server::holdings(ctx).await?;
    let gateway_after = ctx.api.gateway_stats().await?;
    let records = std::mem::take(&mut *lock(&ctx.payments));
    let mut r = reconcile::Reconciled::of(ctx, &records, &held.payments);
    let finals = reconcile::Finals::of(ctx, &mut r, &held.payments, wall_t0);
    let audit = invariants::WalletAudit::of(ctx, &r, &held, &finals, &balances);
    let succeeded = r.counts.succeeded;
    let checks = vec![
        invariants::all_final(drained, drain_time, &r),
        invariants::same_payments(ctx, &r, held.payments.len()),
        invariants::money_conserved(ctx, &audit, succeeded),
        invariants::nothing_held(&audit),
        invariants::ledger_agrees(&audit),
        invariants::no_foreign_money(&audit),
        invariants::gateway_count(gateway_before, &gateway_after, succeeded),
        invariants::gateway_agrees(ctx, &finals.list, &gateway_after).await,
        invariants::replays_replayed(&lock(&ctx.replays)),
        invariants::as_intended(&r, &finals, &records),
        refunds::refunds_agree(&lock(&ctx.refunds), gateway_before, &gateway_after),
    ];
    if std::io::stderr().is_terminal() && !ctx.args.quiet {
        eprint!("\r\x1b[2K");
    }
    Ok(Verdict {
        checks,
        drained,
        drain_time,
        finalize: finals.finalize,
        finalize_by_outcome: finals.by_outcome,
        finalize_by_second: finals.by_second,
        counts: r.counts,
        gateway_charges_delta: invariants::charges(&gateway_after)
            - invariants::charges(gateway_before),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_are_short() {
        let v: Vec<String> = (0..5).map(|i| i.to_string()).collect();
        assert_eq!(examples(&v), "0; 1; 2; and 2 more");
        assert_eq!(examples(&v[..1]), "0");
    }
}
