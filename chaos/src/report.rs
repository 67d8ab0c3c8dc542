//! The verdict: once the system is quiescent, every invariant is checked against what the
//! audit reads and what the run recorded, and printed as one table with the faults and the
//! load, so a failed run says which invariant broke and by how much.

use crate::audit::{
    balances_sane, charge_records, conservation, dead_letters, flagged_charged, gateway_agrees,
    kafka_dead_letter_sources, poison_applied, Terminal,
};
use crate::cli::Args;
use crate::faults::Poisoned;
use crate::load::{Load, Stats};
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// The checked invariants in order: what, whether it held, and the numbers behind it.
#[derive(Default)]
pub(crate) struct Report(Vec<(String, bool, String)>);

impl Report {
    pub(crate) fn check(&mut self, what: &str, ok: bool, detail: String) {
        self.0.push((what.to_owned(), ok, detail));
    }
    pub(crate) fn ok(&self) -> bool {
        self.0.iter().all(|c| c.1)
    }
    pub(crate) fn print(&self) {
        println!();
        println!("{:<4} {:<72} detail", "", "invariant");
        for (what, ok, detail) in &self.0 {
            println!(
                "{:<4} {:<72} {}",
                if *ok { "ok" } else { "FAIL" },
                what,
                detail
            );
        }
    }
}

/// What the checks read: the system, and what the run itself recorded.
pub(crate) struct Run<'a> {
    pub(crate) args: &'a Args,
    pub(crate) http: &'a reqwest::Client,
    pub(crate) pool: &'a PgPool,
    pub(crate) load: &'a Load,
    /// The load's counters, final once the load has finished.
    pub(crate) stats: &'a Stats,
    /// The poison the faults injected and their brokers confirmed.
    pub(crate) poisoned: &'a Poisoned,
    /// The run's payments once quiescent.
    pub(crate) ids: &'a Terminal,
    /// From the last fault undone to quiescence.
    pub(crate) recovered: Duration,
    /// Dead letters on RabbitMQ and Kafka before the run.
    pub(crate) dlq_before: (i64, i64),
}

/// Checks every invariant, in the order the report prints them.
pub(crate) async fn invariants(run: &Run<'_>) -> anyhow::Result<Report> {
    let Run {
        args,
        http,
        pool,
        load,
        stats,
        poisoned,
        ids,
        recovered,
        dlq_before,
    } = *run;
    let flagged_charged = flagged_charged(http, &args.gateway_url, &ids.flagged).await?;

    let mut report = Report::default();
    let conservation = conservation(pool).await?;
    report.check(
        "money conserved per currency (deposits = available + held + captured)",
        conservation.iter().all(|c| c.1 == 0),
        conservation
            .iter()
            .map(|(cur, diff)| format!("{cur}: {diff:+} cents"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let (negative, ledger_mismatch) = balances_sane(pool).await?;
    report.check(
        "no balance ever negative; balances match the ledger",
        negative == 0 && ledger_mismatch == 0,
        format!("{negative} negative, {ledger_mismatch} ledger mismatches"),
    );
    report.check(
        "no 500 answered (constraint or other internal errors)",
        stats.internal_errors == 0,
        format!("{} x 500", stats.internal_errors),
    );
    // A payment the reconciler gave up on stays pending, flagged for an operator, funds
    // held (checked per wallet below); it must not have been charged.
    report.check(
        "every accepted payment terminal (or flagged: held, not charged)",
        ids.pending == 0 && flagged_charged.is_empty(),
        format!(
            "{} accepted, {} pending, {} flagged for an operator{}; last final {:.1}s after the last fault",
            ids.accepted,
            ids.pending,
            ids.flagged.len(),
            if flagged_charged.is_empty() {
                String::new()
            } else {
                format!(" (charged at the gateway: {})", flagged_charged.join(", "))
            },
            recovered.as_secs_f64()
        ),
    );
    let mut held: HashMap<String, i64> = HashMap::new();
    for f in &ids.flagged {
        *held.entry(f.wallet_id.to_string()).or_default() += f.amount;
    }
    let per_wallet = load.wallet_conservation(&held).await?;
    report.check(
        "per wallet: deposits = available + held + captured; held only for flagged",
        per_wallet.is_empty(),
        per_wallet.join("; "),
    );
    let gateway = gateway_agrees(http, &args.gateway_url, pool, load).await?;
    let records = charge_records(&args.gateway_data_file, &load.accepted_ids())?;
    let doubles: Vec<String> = records
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, n)| format!("{k} x{n}"))
        .collect();
    let charged = records.len() as i64;
    report.check(
        "gateway charges = succeeded payments; no key charged twice",
        gateway.mismatches.is_empty() && charged == gateway.succeeded && doubles.is_empty(),
        format!(
            "{charged} keys charged, {} payments succeeded, {} keys charged twice; {}",
            gateway.succeeded,
            doubles.len(),
            if gateway.mismatches.is_empty() {
                "every payment agrees with its gateway record".into()
            } else {
                gateway.mismatches.join("; ")
            }
        ),
    );
    report.check(
        "idempotent retries got the first response",
        stats.replay_mismatches == 0,
        format!(
            "{} retries compared, {} differed",
            stats.replays_compared, stats.replay_mismatches
        ),
    );
    let dlq_after = dead_letters(http, args).await?;
    let rabbit_dead = dlq_after.0 - dlq_before.0;
    // Dead-lettering is at-least-once (a crash between producing the dead letter and
    // committing the offset sends it again), so count the distinct source messages.
    let (kafka_reasons, kafka_copies) =
        kafka_dead_letter_sources(&args.kafka_brokers, dlq_before.1, dlq_after.1).await?;
    let kafka_dead: u64 = kafka_reasons.values().sum();
    let mut reasons: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for (reason, n) in &kafka_reasons {
        reasons.entry(reason.as_str()).or_default().0 = *n;
    }
    for (reason, n) in &poisoned.kafka {
        reasons.entry(reason).or_default().1 = *n;
    }
    report.check(
        "messages dead-lettered = poison injected (Kafka: per dlq_reason)",
        rabbit_dead == poisoned.rabbit as i64 && reasons.values().all(|(got, want)| got == want),
        format!(
            "RabbitMQ {rabbit_dead}/{} , Kafka {kafka_dead}/{} ({}) (dead-lettered/injected; {kafka_copies} Kafka copies)",
            poisoned.rabbit,
            poisoned.kafka_total(),
            reasons
                .iter()
                .map(|(r, (got, want))| format!("{r} {got}/{want}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let (settled_by_poison, conflicts_from_poison) =
        poison_applied(pool, &poisoned.targets).await?;
    report.check(
        "poison results settled nothing (the real result did)",
        settled_by_poison == 0 && conflicts_from_poison == 0,
        format!(
            "{} payments got poison results; {settled_by_poison} carry a poison reference, {conflicts_from_poison} conflicts record one",
            poisoned.targets.len()
        ),
    );
    Ok(report)
}

/// What the run did, printed above the invariants: the faults injected and the load offered.
pub(crate) fn print_run(seed: u64, counts: &BTreeMap<&'static str, u32>, stats: &Stats) {
    println!();
    println!("faults injected (seed {seed}):");
    for (label, n) in counts {
        println!("  {n:>3} x {label}");
    }
    println!(
        "load: {} payments attempted, {} accepted, {} refused (4xx), {} client retries, {} answers 503/timeout during faults",
        stats.attempted, stats.accepted, stats.refused, stats.retries, stats.unavailable
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_failed_check_fails_the_report() {
        let mut report = Report::default();
        assert!(report.ok());
        report.check("held", true, String::new());
        assert!(report.ok());
        report.check("broke", false, "by 1 cent".into());
        report.check("held again", true, String::new());
        assert!(!report.ok());
    }
}
