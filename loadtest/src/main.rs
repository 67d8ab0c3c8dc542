//! `loadtest`: the payment backend's load generator and verdict. See `--help` and
//! docs/LOADTEST.md.

mod api;
mod check;
mod cli;
mod mix;
mod report;
mod run;
mod schedule;
mod stats;

use anyhow::Context as _;
use clap::Parser;
use cli::{Args, Ramp};
use mix::Mix;
use report::{Distributions, Machine, Second};
use run::{lock, Ctx};
use schedule::Schedule;
use serde_json::{json, Value};
use stats::{round3, Summary};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = args.validate() {
        eprintln!("error: {e}\n\nFor more information, try '--help'.");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("[loadtest] error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("[loadtest] error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn mode_text(args: &Args, schedule: Option<&Schedule>) -> String {
    match (args.closed, &args.ramp, schedule) {
        (Some(n), ..) => format!("closed loop, {n} workers for {}", secs(args.duration)),
        (None, Some(Ramp(steps)), Some(s)) => format!(
            "ramp {} (mean {:.1}/s over {})",
            steps
                .iter()
                .map(|st| format!("{}:{}", st.rate, secs(st.duration)))
                .collect::<Vec<_>>()
                .join(","),
            s.mean_rate(),
            secs(s.duration())
        ),
        _ => format!("open loop, {}/s for {}", args.rate, secs(args.duration)),
    }
}

fn secs(d: Duration) -> String {
    format!("{}s", round3(d.as_secs_f64()))
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let api = api::Api::new(
        &args.wallet_url,
        &args.gateway_url,
        &args.wallet_metrics_url,
        &args.processor_metrics_url,
        args.timeout,
    )?;
    match api.get_url(&format!("{}/readyz", api.wallet)).await {
        Ok(r) if r.status.is_success() => {}
        Ok(r) => anyhow::bail!(
            "wallet-service at {} is not ready ({}: {}); is the system up (scripts/up)?",
            api.wallet,
            r.status,
            r.body
        ),
        Err(e) => anyhow::bail!(
            "wallet-service at {} does not answer ({}); is the system up (scripts/up)?",
            api.wallet,
            e.describe()
        ),
    }
    let gateway_before = api
        .gateway_stats()
        .await
        .with_context(|| format!("mock-gateway at {}", api.gateway))?;

    let schedule = match (&args.closed, &args.ramp) {
        (Some(_), _) => None,
        (None, Some(Ramp(steps))) => Some(Schedule::new(steps.clone())),
        (None, None) => Some(Schedule::constant(args.rate, args.duration)),
    };
    let mode = mode_text(&args, schedule.as_ref());
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let started_at = chrono::Utc::now();
    let tokens = args.tokens()?;
    let admin = tokens
        .token(&format!("lt-{run_id}-admin"), true, 86_400)
        .await?;
    let machine = Machine::detect();
    if !args.quiet {
        eprintln!(
            "[loadtest] run {run_id}: {mode}, seed {}, {} wallets, on {} x {}",
            args.seed, args.wallets, machine.nproc, machine.cpu_model
        );
        eprintln!(
            "[loadtest] creating and funding {} wallets...",
            args.wallets
        );
    }
    let t = Instant::now();
    let (wallets, setup_latency) = run::setup(&args, &api, &run_id, &admin, &tokens)
        .await
        .context("setting up wallets")?;
    if !args.quiet {
        eprintln!(
            "[loadtest] {} wallets funded in {:.1} s; load starts",
            wallets.len(),
            t.elapsed().as_secs_f64()
        );
    }
    let mix = Mix {
        seed: args.seed,
        wallets: wallets.len(),
        deposit: args.deposit,
        decline_share: args.decline_share,
        refuse_share: args.refuse_share,
        retry_share: args.retry_share,
        poll_share: args.poll_share,
    };

    let wall_t0 = chrono::Utc::now();
    let ctx = Arc::new(Ctx::new(
        args.clone(),
        api.clone(),
        mix,
        run_id.clone(),
        wallets,
        schedule.clone(),
    ));
    let poller = run::load(ctx.clone()).await;
    let load_end = Instant::now();
    let load_seconds = (load_end - ctx.t0).as_secs_f64();
    if !args.quiet {
        eprintln!(
            "[loadtest] load phase over after {load_seconds:.1} s; waiting for every payment to be final (at most {})",
            secs(args.drain_timeout)
        );
    }
    let verdict = check::verify(&ctx, load_end, wall_t0, &gateway_before).await?;
    let _ = poller.await;
    run::stop_scraper(&ctx);

    // ------------------------------------------------------------ the report
    let rec = lock(&ctx.rec);
    let pay = rec.summary("pay");
    let nominal = schedule
        .as_ref()
        .map_or(args.duration, |s| s.duration())
        .as_secs_f64();
    let window = if args.closed.is_some() {
        load_seconds
    } else {
        nominal.max(rec.last_pay_answer.as_secs_f64())
    };
    let achieved = if window > 0.0 {
        rec.pay_ok as f64 / window
    } else {
        0.0
    };
    let offered = schedule.as_ref().map(Schedule::mean_rate);
    let errors_total = rec.errors_total();
    let error_rate = if rec.calls > 0 {
        errors_total as f64 / rec.calls as f64
    } else {
        0.0
    };
    let finalize = Summary::of(&verdict.finalize);
    let observed = Summary::of(&rec.finalize_observed);

    let mut by_kind = serde_json::Map::new();
    for (k, h) in rec.api.iter().chain(setup_latency.iter()) {
        by_kind.insert((*k).to_owned(), json!(Summary::of(h)));
    }
    let mut api_latency = serde_json::to_value(pay)?;
    api_latency["kind"] = json!("pay");
    api_latency["by_kind"] = Value::Object(by_kind);

    let mut finalize_json = serde_json::to_value(finalize)?;
    finalize_json["source"] = json!("server: finalized_at - created_at of every accepted payment");
    finalize_json["by_outcome"] = verdict
        .finalize_by_outcome
        .iter()
        .map(|(k, h)| (k.clone(), json!(Summary::of(h))))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let mut observed_json = serde_json::to_value(observed)?;
    observed_json["source"] = json!(format!(
        "client: 202 received -> first poll seeing a final status ({} of accepted payments sampled, polled every {})",
        args.poll_share,
        secs(args.poll_interval)
    ));
    finalize_json["observed"] = observed_json;

    // Queues.
    let samples = lock(&ctx.samples).clone();
    let gauge = |f: &dyn Fn(&run::Sample) -> Option<f64>| {
        let v: Vec<f64> = samples.iter().filter_map(f).collect();
        if v.is_empty() {
            return json!({"max": null, "mean": null, "last": null, "samples": 0});
        }
        json!({
            "max": v.iter().copied().fold(f64::MIN, f64::max),
            "mean": round3(v.iter().sum::<f64>() / v.len() as f64),
            "last": v.last(),
            "samples": v.len(),
        })
    };
    let queues = json!({
        "outbox_backlog": gauge(&|s| s.outbox_backlog),
        "processor_in_flight": gauge(&|s| s.in_flight),
    });

    // The per-second timeline (load phase and drain).
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
    let pct = |h: Option<&hdrhistogram::Histogram<u64>>, q: f64| {
        h.filter(|h| !h.is_empty())
            .map(|h| round3(h.value_at_quantile(q) as f64 / 1000.0))
    };
    let timeline: Vec<Second> = (0..seconds)
        .map(|s| {
            let sample = samples.iter().rev().find(|x| x.t.as_secs() as usize == s);
            Second {
                t: s as u64,
                offered: schedule.as_ref().map(|sc| {
                    round3(sc.expected_between(
                        Duration::from_secs(s as u64),
                        Duration::from_secs(s as u64 + 1),
                    ))
                }),
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
        .collect();

    let steps: Vec<Value> = schedule
        .as_ref()
        .map(|sc| {
            sc.steps()
                .iter()
                .enumerate()
                .map(|(i, st)| {
                    let d = st.duration.as_secs_f64();
                    let ok = rec.ok_by_step.get(i).copied().unwrap_or(0);
                    json!({
                        "rate": st.rate,
                        "duration_s": round3(d),
                        "ok": ok,
                        "achieved_rate": round3(ok as f64 / d),
                        "pay_latency_ms": rec.pay_by_step.get(i).map(Summary::of).unwrap_or_default(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();

    let mut targets = Vec::new();
    if let Some(t) = args.target_p99_ms {
        targets.push(json!({"name": "pay p99 latency (ms) <= target", "target": t, "actual": pay.p99, "ok": pay.p99 <= t}));
    }
    if let Some(t) = args.target_rate {
        targets.push(json!({"name": "achieved payment rate (/s) >= target", "target": t, "actual": round3(achieved), "ok": achieved >= t}));
    }
    if let Some(t) = args.max_error_rate {
        targets.push(json!({"name": "error rate <= target", "target": t, "actual": error_rate, "ok": error_rate <= t}));
    }
    let invariants_ok = verdict.checks.iter().all(|c| c.ok);
    let targets_ok = targets.iter().all(|t| t["ok"] == true);
    let pass = invariants_ok && targets_ok;
    let replays = lock(&ctx.replays);

    let stamp = started_at.format("%Y%m%dT%H%M%SZ");
    std::fs::create_dir_all(&args.report_dir)
        .with_context(|| format!("creating {}", args.report_dir.display()))?;
    let base = args.report_dir.join(format!("loadtest-{stamp}-{run_id}"));
    let json_path = base.with_extension("json");
    let svg_path = base.with_extension("svg");

    let report = json!({
        "tool": "loadtest",
        "version": env!("CARGO_PKG_VERSION"),
        "run_id": run_id,
        "started_at": started_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "seed": args.seed,
        "machine": machine,
        "config": {
            "mode": if args.closed.is_some() { "closed" } else if args.ramp.is_some() { "ramp" } else { "open" },
            "mode_text": mode,
            "rate": (args.closed.is_none() && args.ramp.is_none()).then_some(args.rate),
            "duration_s": round3(nominal),
            "ramp": args.ramp.as_ref().map(|r| r.0.iter().map(|s| json!({"rate": s.rate, "duration_s": round3(s.duration.as_secs_f64())})).collect::<Vec<_>>()),
            "closed_workers": args.closed,
            "wallets": args.wallets,
            "deposit": args.deposit,
            "currency": args.currency,
            "decline_share": args.decline_share,
            "refuse_share": args.refuse_share,
            "retry_share": args.retry_share,
            "read_ratio": args.read_ratio,
            "poll_share": args.poll_share,
            "poll_interval_ms": args.poll_interval.as_millis() as u64,
            "timeout_ms": args.timeout.as_millis() as u64,
            "attempts": args.attempts,
            "drain_timeout_s": round3(args.drain_timeout.as_secs_f64()),
            "max_in_flight": args.max_in_flight,
            "wallet_url": args.wallet_url,
            "gateway_url": args.gateway_url,
            "wallet_metrics_url": args.wallet_metrics_url,
            "processor_metrics_url": args.processor_metrics_url,
        },
        "offered_rate": offered.map(round3),
        "achieved_rate": round3(achieved),
        "sent_rate": round3(rec.pay_sent as f64 / nominal.max(1e-9)),
        "load_seconds": round3(load_seconds),
        "drain_seconds": round3(verdict.drain_time.as_secs_f64()),
        "drained": verdict.drained,
        "payments": {
            "sent": rec.pay_sent,
            "ok": rec.pay_ok,
            "accepted": verdict.counts.accepted,
            "adopted": verdict.counts.adopted,
            "succeeded": verdict.counts.succeeded,
            "declined": verdict.counts.declined,
            "failed_other": verdict.counts.failed_other,
            "pending": verdict.counts.pending,
            "refused": verdict.counts.refused,
            "rejected": verdict.counts.rejected,
            "unresolved": verdict.counts.unresolved,
        },
        "reads": rec.reads,
        "replays_checked": replays.checked,
        "replays_mismatched": replays.mismatched,
        "api_latency_ms": api_latency,
        "finalize_latency_ms": finalize_json,
        "generator_lag_ms": Summary::of(&rec.lag),
        "errors": rec.errors,
        "errors_total": errors_total,
        "calls_total": rec.calls,
        "error_rate": error_rate,
        "queues": queues,
        "gateway": {"before": gateway_before, "charges_delta": verdict.gateway_charges_delta},
        "steps": steps,
        "checks": verdict.checks,
        "invariants_ok": invariants_ok,
        "targets": targets,
        "targets_ok": targets_ok,
        "verdict": if pass { "pass" } else { "fail" },
        "timeline": timeline,
        "report_json": json_path,
        "report_svg": svg_path,
    });
    drop(replays);
    let dist = Distributions::of(vec![
        ("pay", rec.api.get("pay").unwrap_or(&stats::histogram())),
        ("read", rec.api.get("read").unwrap_or(&stats::histogram())),
        ("finalize (server)", &verdict.finalize),
        ("finalize (client poll)", &rec.finalize_observed),
    ]);
    drop(rec);
    let headline = format!("loadtest: {mode} — {}", if pass { "PASS" } else { "FAIL" });
    let subtitle = format!(
        "seed {}, {} wallets, {} x {}; offered {} achieved {:.1}/s; pay p99 {} ms; finalize p99 {} ms; {}",
        args.seed,
        args.wallets,
        machine.nproc,
        machine.cpu_model,
        offered.map_or("-".into(), |o| format!("{o:.1}/s,")),
        achieved,
        pay.p99,
        finalize.p99,
        report["started_at"].as_str().unwrap_or(""),
    );
    let svg = report::svg(&headline, &subtitle, &timeline, &dist);

    let json_text = serde_json::to_string_pretty(&report)?;
    std::fs::write(&json_path, &json_text)
        .with_context(|| format!("writing {}", json_path.display()))?;
    std::fs::write(&svg_path, &svg).with_context(|| format!("writing {}", svg_path.display()))?;
    // Stable names for scripts: the latest run in this directory.
    let _ = std::fs::write(args.report_dir.join("latest.json"), &json_text);
    let _ = std::fs::write(args.report_dir.join("latest.svg"), &svg);

    print!("{}", report::table(&report));
    println!("report: {}", json_path.display());
    println!("report: {}", svg_path.display());
    Ok(pass)
}
