//! `loadtest`: the payment backend's load generator and verdict. See `--help` and
//! docs/LOADTEST.md.

mod api;
mod capacity;
mod check;
mod cli;
mod mix;
mod report;
mod run;
mod schedule;
mod stats;

use anyhow::Context as _;
use capacity::{Capacity, StepVerdict};
use clap::Parser;
use cli::{Args, Ramp};
use mix::Mix;
use report::{Machine, Report};
use run::Ctx;
use schedule::Schedule;
use stats::round3;
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
    let outcome = if let Some(path) = &args.show {
        show(path, args.markdown)
    } else if args.capacity.is_some() {
        runtime.block_on(find_capacity(args))
    } else {
        runtime.block_on(run(args)).map(|report| {
            print!("{}", report.table());
            println!("report: {}", report.report_json.display());
            println!("report: {}", report.report_svg.display());
            report.passed()
        })
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("[loadtest] error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `--show`: a report written earlier, read back and printed.
fn show(path: &std::path::Path, markdown: bool) -> anyhow::Result<bool> {
    let report = Report::read(path)?;
    if markdown {
        print!("{}", report.markdown());
    } else {
        print!("{}", report.table());
    }
    Ok(report.passed())
}

/// `--capacity`: one run per rate until a step does not hold. Passes when one held.
async fn find_capacity(args: Args) -> anyhow::Result<bool> {
    let rates = args.capacity.clone().map(|r| r.0).unwrap_or_default();
    let started_at = chrono::Utc::now();
    let mut ramp = Capacity {
        tool: "loadtest".into(),
        started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        machine: Machine::detect(),
        step_duration_s: round3(args.step_duration.as_secs_f64()),
        steps: Vec::new(),
        capacity: None,
    };
    for rate in rates {
        eprintln!(
            "[loadtest] capacity: {rate}/s for {}...",
            secs(args.step_duration)
        );
        let mut step = args.clone();
        step.capacity = None;
        step.rate = rate;
        step.duration = args.step_duration;
        step.target_rate = Some(capacity::MIN_ACHIEVED_SHARE * rate);
        step.target_p99_ms = Some(capacity::MAX_PAY_P99_MS);
        step.report_dir = args.report_dir.join(format!("step-{rate}"));
        let report = run(step).await?;
        let verdict = StepVerdict::of(rate, &report);
        eprintln!(
            "[loadtest] capacity: {rate}/s -> achieved {}/s, pay p99 {} ms, finalize p99 {} ms, drain {} s: {}",
            verdict.achieved_rate,
            verdict.pay_p99_ms,
            verdict.finalize_p99_ms,
            verdict.drain_seconds,
            verdict.verdict_text()
        );
        let held = verdict.held;
        ramp.steps.push(verdict);
        if !held {
            break;
        }
        ramp.capacity = Some(rate);
    }
    let path = args.report_dir.join("capacity.json");
    std::fs::write(&path, serde_json::to_string_pretty(&ramp)?)
        .with_context(|| format!("writing {}", path.display()))?;
    print!("{}", ramp.markdown());
    eprintln!("[loadtest] capacity: {}", path.display());
    Ok(ramp.capacity.is_some())
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

/// One run: set up wallets, offer the load, check, write the report.
async fn run(args: Args) -> anyhow::Result<Report> {
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
        refund_share: args.refund_share,
    };

    let wall_t0 = chrono::Utc::now();
    let ctx = Arc::new(Ctx::new(
        args.clone(),
        api.clone(),
        mix,
        run_id.clone(),
        wallets,
        schedule.clone(),
        admin,
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
    // The poller ends once every sampled payment is final; the refunds it started are
    // awaited by the checks.
    let _ = poller.await;
    let verdict = check::verify(&ctx, load_end, wall_t0, &gateway_before).await?;
    run::stop_scraper(&ctx);

    let stamp = started_at.format("%Y%m%dT%H%M%SZ");
    std::fs::create_dir_all(&args.report_dir)
        .with_context(|| format!("creating {}", args.report_dir.display()))?;
    let base = args.report_dir.join(format!("loadtest-{stamp}-{run_id}"));
    let (report, svg) = report::build(report::Finished {
        ctx: &ctx,
        mode_text: mode,
        started_at,
        machine,
        load_seconds,
        verdict,
        gateway_before,
        setup_latency,
        json_path: base.with_extension("json"),
        svg_path: base.with_extension("svg"),
    });
    let json_text = serde_json::to_string_pretty(&report)?;
    let (json_path, svg_path) = (&report.report_json, &report.report_svg);
    std::fs::write(json_path, &json_text)
        .with_context(|| format!("writing {}", json_path.display()))?;
    std::fs::write(svg_path, &svg).with_context(|| format!("writing {}", svg_path.display()))?;
    // Stable names for scripts: the latest run in this directory.
    let _ = std::fs::write(args.report_dir.join("latest.json"), &json_text);
    let _ = std::fs::write(args.report_dir.join("latest.svg"), &svg);
    Ok(report)
}
