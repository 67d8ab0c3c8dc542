//! `--capacity`: one open-loop run per offered rate, ascending, until a step no longer
//! holds; the highest step that held is the capacity. `scripts/bench` is this plus
//! pgbench and a measured run at half the capacity.

use crate::report::{Machine, Report, TargetKind};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::PathBuf;

/// Achieved rate at least this share of the offered one.
pub const MIN_ACHIEVED_SHARE: f64 = 0.95;
/// Payment POST p99 at most this (ms).
pub const MAX_PAY_P99_MS: f64 = 50.0;
/// Every payment final within this long after the load ended (s).
pub const MAX_DRAIN_S: f64 = 2.0;
/// Server-side finalization p99 at most this (ms).
pub const MAX_FINALIZE_P99_MS: f64 = 1000.0;

/// The ramp: every step tried, and the capacity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Capacity {
    pub tool: String,
    pub started_at: String,
    pub machine: Machine,
    pub step_duration_s: f64,
    pub steps: Vec<StepVerdict>,
    /// The highest offered rate that held; none when the first step did not.
    pub capacity: Option<f64>,
}

/// One step's figures and whether it held (and if not, why).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepVerdict {
    pub rate: f64,
    pub achieved_rate: f64,
    pub pay_p50_ms: f64,
    pub pay_p99_ms: f64,
    pub finalize_p50_ms: f64,
    pub finalize_p99_ms: f64,
    pub drain_seconds: f64,
    pub max_outbox_backlog: Option<f64>,
    pub errors: u64,
    pub held: bool,
    /// Each rule the step broke, in words.
    pub why_not: Vec<String>,
    pub report: PathBuf,
}

impl StepVerdict {
    /// Judges a step's run by the rules above. The rate and p99 rules are the run's own
    /// targets (`--target-rate`, `--target-p99-ms`), set by the ramp for each step.
    pub fn of(rate: f64, r: &Report) -> Self {
        let mut why_not = Vec::new();
        if !r.invariants_ok {
            why_not.push("invariants failed".to_owned());
        }
        let (pay, fin) = (&r.api_latency_ms.pay, &r.finalize_latency_ms.all);
        let missed = |k| r.target(k).is_none_or(|t| !t.ok);
        if missed(TargetKind::AchievedRate) {
            let pct = MIN_ACHIEVED_SHARE * 100.0;
            why_not.push(format!("achieved {}/s < {pct:.0} %", r.achieved_rate));
        }
        if missed(TargetKind::PayP99Ms) {
            why_not.push(format!("pay p99 {} ms > {MAX_PAY_P99_MS}", pay.p99));
        }
        if !r.drained || r.drain_seconds > MAX_DRAIN_S {
            let s = r.drain_seconds;
            why_not.push(format!("finalization behind: drained {s} s after the load"));
        }
        if fin.p99 > MAX_FINALIZE_P99_MS {
            why_not.push(format!(
                "finalize p99 {} ms > {MAX_FINALIZE_P99_MS}",
                fin.p99
            ));
        }
        Self {
            rate,
            achieved_rate: r.achieved_rate,
            pay_p50_ms: pay.p50,
            pay_p99_ms: pay.p99,
            finalize_p50_ms: fin.p50,
            finalize_p99_ms: fin.p99,
            drain_seconds: r.drain_seconds,
            max_outbox_backlog: r.queues.outbox_backlog.max,
            errors: r.errors_total,
            held: why_not.is_empty(),
            why_not,
            report: r.report_json.clone(),
        }
    }

    pub fn verdict_text(&self) -> String {
        if self.held {
            "held".into()
        } else {
            format!("no: {}", self.why_not.join("; "))
        }
    }
}

impl Capacity {
    /// The ramp as Markdown: the rules, one row per step, the capacity.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "## Ramp (one loadtest run of {}s per step)\n",
            self.step_duration_s
        );
        let _ = writeln!(
            s,
            "A step holds when the invariants pass, achieved >= {:.0} % of offered, pay p99 <= \
             {MAX_PAY_P99_MS} ms,\nevery payment is final within {MAX_DRAIN_S} s after the load \
             and finalize p99 <= {MAX_FINALIZE_P99_MS} ms.\n",
            MIN_ACHIEVED_SHARE * 100.0
        );
        let _ = writeln!(
            s,
            "| offered /s | achieved /s | pay p50 ms | pay p99 ms | finalize p50 ms | \
             finalize p99 ms | drain s | max outbox backlog | errors | held? |"
        );
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        for st in &self.steps {
            let backlog = st.max_outbox_backlog.map_or("-".into(), |b| b.to_string());
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {backlog} | {} | {} |",
                st.rate,
                st.achieved_rate,
                st.pay_p50_ms,
                st.pay_p99_ms,
                st.finalize_p50_ms,
                st.finalize_p99_ms,
                st.drain_seconds,
                st.errors,
                st.verdict_text()
            );
        }
        let _ = writeln!(s);
        match (self.capacity, self.steps.first()) {
            (Some(c), _) => {
                let _ = writeln!(s, "**Highest step that held: {c} payments/s.**");
            }
            (None, Some(first)) => {
                let _ = writeln!(
                    s,
                    "**No step held** (the first, {}/s, already failed): see the table.",
                    first.rate
                );
            }
            (None, None) => {
                let _ = writeln!(s, "**No step was run.**");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A passing report of one step, as written by a run and read back.
    fn report() -> Report {
        let text = include_str!("../testdata/step-report.json");
        serde_json::from_str(text).expect("the sample report parses")
    }

    #[test]
    fn a_step_holds_only_when_every_rule_does() {
        let r = report();
        let v = StepVerdict::of(100.0, &r);
        assert!(v.held, "{:?}", v.why_not);
        assert_eq!(v.verdict_text(), "held");

        let mut slow = r.clone();
        slow.targets
            .iter_mut()
            .filter(|t| t.kind == TargetKind::PayP99Ms)
            .for_each(|t| t.ok = false);
        slow.api_latency_ms.pay.p99 = 61.5;
        let v = StepVerdict::of(100.0, &slow);
        assert!(!v.held);
        assert_eq!(v.why_not, vec!["pay p99 61.5 ms > 50"]);

        let mut behind = r.clone();
        behind.drain_seconds = 2.5;
        behind.finalize_latency_ms.all.p99 = 1200.0;
        behind.invariants_ok = false;
        let v = StepVerdict::of(100.0, &behind);
        assert_eq!(v.why_not.len(), 3, "{:?}", v.why_not);
        assert!(v
            .verdict_text()
            .starts_with("no: invariants failed; finalization behind"));

        // A run made without the ramp's targets cannot be said to hold.
        let mut untargeted = r;
        untargeted.targets.clear();
        assert!(!StepVerdict::of(100.0, &untargeted).held);
    }

    #[test]
    fn the_markdown_names_the_capacity() {
        let r = report();
        let held = StepVerdict::of(100.0, &r);
        let mut failed = StepVerdict::of(200.0, &r);
        failed.held = false;
        failed.why_not = vec!["pay p99 80 ms > 50".into()];
        let c = Capacity {
            tool: "loadtest".into(),
            started_at: "2026-11-28T00:00:00Z".into(),
            machine: r.machine.clone(),
            step_duration_s: 15.0,
            steps: vec![held, failed],
            capacity: Some(100.0),
        };
        let md = c.markdown();
        assert!(md.contains("| 100 |"), "{md}");
        assert!(md.contains("| no: pay p99 80 ms > 50 |"), "{md}");
        assert!(
            md.contains("**Highest step that held: 100 payments/s.**"),
            "{md}"
        );
        let back: Capacity = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back.capacity, Some(100.0));
    }
}
