//! Turns what a run recorded and what the checks found into its [`Report`] and SVG.

use super::*;
use crate::check;
use crate::run::{lock, Ctx, Sample, SetupLatency};
use crate::schedule::Schedule;
use crate::secs;
use crate::stats::{self, round3};
use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use std::time::Duration;

/// A finished run, before its report exists.
pub struct Finished<'a> {
    pub ctx: &'a Ctx,
    pub mode_text: String,
    pub started_at: DateTime<Utc>,
    pub machine: Machine,
    /// From the first intended payment to the end of the load phase.
    pub load_seconds: f64,
    pub verdict: check::Verdict,
    pub gateway_before: Value,
    pub setup_latency: SetupLatency,
    pub json_path: PathBuf,
    pub svg_path: PathBuf,
}

/// The report and its SVG.
pub fn build(f: Finished) -> (Report, String) {
    let ctx = f.ctx;
    let args = &ctx.args;
    let schedule = ctx.schedule.as_ref();
    let rec = lock(&ctx.rec);
    let pay = rec.summary("pay");
    let nominal = schedule
        .map_or(args.duration, Schedule::duration)
        .as_secs_f64();
    let window = if args.closed.is_some() {
        f.load_seconds
    } else {
        nominal.max(rec.last_pay_answer.as_secs_f64())
    };
    let achieved = ratio(rec.pay_ok as f64, window);
    let offered = schedule.map(Schedule::mean_rate);
    let errors_total = rec.errors_total();
    let error_rate = ratio(errors_total as f64, rec.calls as f64);
    let finalize = Summary::of(&f.verdict.finalize);

    let samples = lock(&ctx.samples).clone();
    let timeline = timeline(ctx, &rec, &f.verdict, &samples, nominal);
    let steps = steps(schedule, &rec);
    let targets = targets(args, pay.p99, achieved, error_rate);
    let invariants_ok = f.verdict.checks.iter().all(|c| c.ok);
    let targets_ok = targets.iter().all(|t| t.ok);
    let replays = lock(&ctx.replays);
    let report = Report {
        tool: "loadtest".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        run_id: ctx.run_id.clone(),
        started_at: f
            .started_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        seed: args.seed,
        machine: f.machine,
        config: config(args, f.mode_text, nominal),
        offered_rate: offered.map(round3),
        achieved_rate: round3(achieved),
        sent_rate: round3(rec.pay_sent as f64 / nominal.max(1e-9)),
        load_seconds: round3(f.load_seconds),
        drain_seconds: round3(f.verdict.drain_time.as_secs_f64()),
        drained: f.verdict.drained,
        payments: Payments {
            sent: rec.pay_sent,
            ok: rec.pay_ok,
            counts: f.verdict.counts.clone(),
        },
        reads: rec.reads,
        replays_checked: replays.checked,
        replays_mismatched: replays.mismatched,
        api_latency_ms: ApiLatency {
            pay,
            kind: "pay".into(),
            by_kind: rec
                .api
                .iter()
                .chain(f.setup_latency.iter())
                .map(|(k, h)| ((*k).to_owned(), Summary::of(h)))
                .collect(),
        },
        finalize_latency_ms: FinalizeLatency {
            all: finalize,
            source: "server: finalized_at - created_at of every accepted payment".into(),
            by_outcome: f
                .verdict
                .finalize_by_outcome
                .iter()
                .map(|(k, h)| (k.clone(), Summary::of(h)))
                .collect(),
            observed: Observed {
                summary: Summary::of(&rec.finalize_observed),
                source: format!(
                    "client: 202 received -> first poll seeing a final status ({} of accepted \
                     payments sampled, polled every {})",
                    args.poll_share,
                    secs(args.poll_interval)
                ),
            },
        },
        generator_lag_ms: Summary::of(&rec.lag),
        errors: rec.errors.clone(),
        errors_total,
        calls_total: rec.calls,
        error_rate,
        outages: rec.outages.all(),
        queues: Queues {
            outbox_backlog: gauge(&samples, |s| s.outbox_backlog),
            processor_in_flight: gauge(&samples, |s| s.in_flight),
        },
        gateway: GatewayDelta {
            before: f.gateway_before,
            charges_delta: f.verdict.gateway_charges_delta,
        },
        steps,
        checks: f.verdict.checks.clone(),
        invariants_ok,
        targets,
        targets_ok,
        verdict: if invariants_ok && targets_ok {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        timeline,
        report_json: f.json_path,
        report_svg: f.svg_path,
    };
    drop(replays);

    let empty = stats::histogram();
    let dist = Distributions::of(vec![
        ("pay", rec.api.get("pay").unwrap_or(&empty)),
        ("read", rec.api.get("read").unwrap_or(&empty)),
        ("finalize (server)", &f.verdict.finalize),
        ("finalize (client poll)", &rec.finalize_observed),
    ]);
    let config = &report.config;
    let headline = format!(
        "loadtest: {} — {}",
        config.mode_text,
        if report.passed() { "PASS" } else { "FAIL" }
    );
    let subtitle = format!(
        "seed {}, {} wallets, {} x {}; offered {} achieved {:.1}/s; pay p99 {} ms; finalize p99 {} ms; {}",
        report.seed,
        config.wallets,
        report.machine.nproc,
        report.machine.cpu_model,
        offered.map_or("-".into(), |o| format!("{o:.1}/s,")),
        achieved,
        pay.p99,
        finalize.p99,
        report.started_at,
    );
    let svg = svg(&headline, &subtitle, &report.timeline, &dist);
    (report, svg)
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

fn config(args: &crate::cli::Args, mode_text: String, nominal: f64) -> Config {
    Config {
        mode: if args.closed.is_some() {
            Mode::Closed
        } else if args.ramp.is_some() {
            Mode::Ramp
        } else {
            Mode::Open
        },
        mode_text,
        rate: (args.closed.is_none() && args.ramp.is_none()).then_some(args.rate),
        duration_s: round3(nominal),
        ramp: args.ramp.as_ref().map(|r| {
            r.0.iter()
                .map(|s| RampStep {
                    rate: s.rate,
                    duration_s: round3(s.duration.as_secs_f64()),
                })
                .collect()
        }),
        closed_workers: args.closed,
        wallets: args.wallets,
        deposit: args.deposit,
        currency: args.currency.clone(),
        decline_share: args.decline_share,
        refuse_share: args.refuse_share,
        retry_share: args.retry_share,
        read_ratio: args.read_ratio,
        poll_share: args.poll_share,
        poll_interval_ms: args.poll_interval.as_millis() as u64,
        timeout_ms: args.timeout.as_millis() as u64,
        attempts: args.attempts,
        drain_timeout_s: round3(args.drain_timeout.as_secs_f64()),
        max_in_flight: args.max_in_flight,
        wallet_url: args.wallet_url.clone(),
        gateway_url: args.gateway_url.clone(),
        wallet_metrics_url: args.wallet_metrics_url.clone(),
        processor_metrics_url: args.processor_metrics_url.clone(),
    }
}

fn gauge(samples: &[Sample], f: impl Fn(&Sample) -> Option<f64>) -> Gauge {
    let v: Vec<f64> = samples.iter().filter_map(f).collect();
    if v.is_empty() {
        return Gauge::default();
    }
    Gauge {
        max: Some(v.iter().copied().fold(f64::MIN, f64::max)),
        mean: Some(round3(v.iter().sum::<f64>() / v.len() as f64)),
        last: v.last().copied(),
        samples: v.len(),
    }
}

/// The per-second timeline of the load phase and the drain.
fn timeline(
    ctx: &Ctx,
    rec: &stats::Recorder,
    verdict: &check::Verdict,
    samples: &[Sample],
    nominal: f64,
) -> Vec<Second> {
    let seconds = [
        nominal.ceil() as usize,
        rec.pay_by_second.len(),
        rec.ok_by_second.len(),
        rec.errors_by_second.len(),
        verdict.finalize_by_second.len(),
        samples.last().map_or(0, |s| s.t.as_secs() as usize + 1),
    ]
    .into_iter()
    .max()
    .unwrap_or(0);
    let at = |v: &Vec<u64>, s: usize| v.get(s).copied().unwrap_or(0);
    let pct = |h: Option<&Histogram<u64>>, q: f64| {
        h.filter(|h| !h.is_empty())
            .map(|h| round3(h.value_at_quantile(q) as f64 / 1000.0))
    };
    (0..seconds)
        .map(|s| {
            let sample = samples.iter().rev().find(|x| x.t.as_secs() as usize == s);
            let from = Duration::from_secs(s as u64);
            Second {
                t: s as u64,
                offered: ctx
                    .schedule
                    .as_ref()
                    .map(|sc| round3(sc.expected_between(from, from + Duration::from_secs(1)))),
                sent: at(&rec.sent_by_second, s),
                ok: at(&rec.ok_by_second, s),
                errors: at(&rec.errors_by_second, s),
                pay_p50_ms: pct(rec.pay_by_second.get(s), 0.5),
                pay_p99_ms: pct(rec.pay_by_second.get(s), 0.99),
                finalize_p50_ms: pct(verdict.finalize_by_second.get(s), 0.5),
                finalize_p99_ms: pct(verdict.finalize_by_second.get(s), 0.99),
                outbox_backlog: sample.and_then(|x| x.outbox_backlog),
                processor_in_flight: sample.and_then(|x| x.in_flight),
            }
        })
        .collect()
}

fn steps(schedule: Option<&Schedule>, rec: &stats::Recorder) -> Vec<StepFigures> {
    let Some(schedule) = schedule else {
        return Vec::new();
    };
    schedule
        .steps()
        .iter()
        .enumerate()
        .map(|(i, st)| {
            let d = st.duration.as_secs_f64();
            let ok = rec.ok_by_step.get(i).copied().unwrap_or(0);
            StepFigures {
                rate: st.rate,
                duration_s: round3(d),
                ok,
                achieved_rate: round3(ok as f64 / d),
                pay_latency_ms: rec.pay_by_step.get(i).map(Summary::of).unwrap_or_default(),
            }
        })
        .collect()
}

fn targets(args: &crate::cli::Args, pay_p99: f64, achieved: f64, error_rate: f64) -> Vec<Target> {
    let mut targets = Vec::new();
    if let Some(t) = args.target_p99_ms {
        targets.push(Target {
            kind: TargetKind::PayP99Ms,
            name: "pay p99 latency (ms) <= target".into(),
            target: t,
            actual: pay_p99,
            ok: pay_p99 <= t,
        });
    }
    if let Some(t) = args.target_rate {
        targets.push(Target {
            kind: TargetKind::AchievedRate,
            name: "achieved payment rate (/s) >= target".into(),
            target: t,
            actual: round3(achieved),
            ok: achieved >= t,
        });
    }
    if let Some(t) = args.max_error_rate {
        targets.push(Target {
            kind: TargetKind::ErrorRate,
            name: "error rate <= target".into(),
            target: t,
            actual: error_rate,
            ok: error_rate <= t,
        });
    }
    targets
}
