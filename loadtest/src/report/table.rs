//! A report as text: the terminal summary, and the Markdown a benchmark report embeds.

use super::Report;
use crate::stats::Summary;
use std::fmt::Write as _;

pub fn fmt_ms(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "ok  "
    } else {
        "FAIL"
    }
}

fn gauge(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.1}").replace(".0", ""))
}

/// The API kinds of call in the table, in order, with their labels.
const KINDS: [(&str, &str); 12] = [
    ("pay", "api pay (POST payment)"),
    ("pay_service", "  from actual send"),
    ("read", "api read (GET)"),
    ("read_balance", "  balance reads"),
    ("read_payment", "  payment reads"),
    ("replay", "api client retry"),
    ("retry", "api retry after loss"),
    ("poll", "api poll (GET payment)"),
    ("refund", "api refund (POST refund)"),
    ("refund_poll", "  refund polls (GET refund)"),
    ("wallet", "api wallet (setup)"),
    ("deposit", "api deposit (setup)"),
];

impl Report {
    /// The summary printed on the terminal at the end of a run (and by `--show`).
    pub fn table(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(
            s,
            "\nloadtest {}  seed {}  {}  wallets {}  on {} x {}",
            self.run_id,
            self.seed,
            self.config.mode_text,
            self.config.wallets,
            m.nproc,
            m.cpu_model,
        );
        self.latency_rows(&mut s);
        self.counts_rows(&mut s);
        self.step_rows(&mut s);
        let _ = writeln!(s, "\nchecks");
        for c in &self.checks {
            let _ = writeln!(s, "  {}  {}: {}", mark(c.ok), c.name, c.detail);
        }
        if !self.targets.is_empty() {
            let _ = writeln!(s, "targets");
            for t in &self.targets {
                let _ = writeln!(
                    s,
                    "  {}  {}: {} (target {})",
                    mark(t.ok),
                    t.name,
                    t.actual,
                    t.target
                );
            }
        }
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        let _ = writeln!(s, "\nverdict: {verdict}");
        s
    }

    fn latency_rows(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "\n{:<26}{:>8}{:>9}{:>9}{:>9}{:>9}{:>9}   (ms)",
            "latency", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        let row = |s: &mut String, name: &str, sum: &Summary| {
            if sum.count == 0 {
                return;
            }
            let _ = writeln!(
                s,
                "{:<26}{:>8}{:>9}{:>9}{:>9}{:>9}{:>9}",
                name,
                sum.count,
                fmt_ms(sum.p50),
                fmt_ms(sum.p90),
                fmt_ms(sum.p99),
                fmt_ms(sum.p999),
                fmt_ms(sum.max)
            );
        };
        for (kind, name) in KINDS {
            if let Some(sum) = self.api_latency_ms.by_kind.get(kind) {
                row(s, name, sum);
            }
        }
        let finalize = &self.finalize_latency_ms;
        row(s, "finalize (server)", &finalize.all);
        for (k, v) in &finalize.by_outcome {
            row(s, &format!("  {k}"), v);
        }
        row(s, "finalize (client poll)", &finalize.observed.summary);
        row(s, "generator lag", &self.generator_lag_ms);
    }

    fn counts_rows(&self, s: &mut String) {
        let p = &self.payments;
        let c = &p.counts;
        let offered = self
            .offered_rate
            .map_or("- (closed loop)".into(), |o| format!("{o:.1}/s"));
        let _ = writeln!(
            s,
            "\nrate       offered {offered}  achieved {:.1}/s  (sent {}, answered as expected {}, load phase {:.1} s)",
            self.achieved_rate, p.sent, p.ok, self.load_seconds,
        );
        let _ = writeln!(
            s,
            "payments   accepted {}  succeeded {}  declined {}  failed otherwise {}  refused {}  pending {}",
            c.accepted, c.succeeded, c.declined, c.failed_other, c.refused, c.pending
        );
        let _ = writeln!(
            s,
            "           client retries {}  reads {}  drain {:.1} s",
            self.replays_checked, self.reads, self.drain_seconds
        );
        let q = &self.queues;
        let _ = writeln!(
            s,
            "queues     outbox backlog max {} mean {}  processor in flight max {} mean {}",
            gauge(q.outbox_backlog.max),
            gauge(q.outbox_backlog.mean),
            gauge(q.processor_in_flight.max),
            gauge(q.processor_in_flight.mean),
        );
        let _ = writeln!(
            s,
            "errors     {} of {} calls ({:.3}%)",
            self.errors_total,
            self.calls_total,
            self.error_rate * 100.0
        );
        for (k, v) in &self.errors {
            let _ = writeln!(s, "           {v:>7}  {k}");
        }
        for o in &self.outages {
            let _ = match o.duration_ms() {
                Some(ms) => writeln!(
                    s,
                    "outage     at {:.1} s: payments failed for {ms:.0} ms ({} failed answers), \
                     first error to first success",
                    o.start_s, o.failures
                ),
                None => writeln!(
                    s,
                    "outage     at {:.1} s: payments still failing at the end ({} failed answers)",
                    o.start_s, o.failures
                ),
            };
        }
    }

    fn step_rows(&self, s: &mut String) {
        if self.steps.len() <= 1 {
            return;
        }
        let _ = writeln!(
            s,
            "\n{:<12}{:>10}{:>10}{:>10}{:>10}",
            "ramp step", "offered", "achieved", "p50 ms", "p99 ms"
        );
        for st in &self.steps {
            let _ = writeln!(
                s,
                "{:<12}{:>10.1}{:>10.1}{:>10}{:>10}",
                format!("{}s", st.duration_s),
                st.rate,
                st.achieved_rate,
                fmt_ms(st.pay_latency_ms.p50),
                fmt_ms(st.pay_latency_ms.p99),
            );
        }
    }

    /// The run's headline figures as a Markdown table (what `scripts/bench` embeds).
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let failed: Vec<&str> = self
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name.as_str())
            .collect();
        let invariants = if failed.is_empty() {
            format!("all {} held", self.checks.len())
        } else {
            format!("FAILED: {}", failed.join("; "))
        };
        let _ = writeln!(
            s,
            "| achieved /s | pay p50 ms | pay p99 ms | finalize p50 ms | finalize p99 ms | errors | invariants |"
        );
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---|");
        let (pay, fin) = (&self.api_latency_ms.pay, &self.finalize_latency_ms.all);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {invariants} |",
            self.achieved_rate, pay.p50, pay.p99, fin.p50, fin.p99, self.errors_total
        );
        s
    }
}
