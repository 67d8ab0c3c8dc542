//! `chaos`: the fault-injection suite. Drives a steady payment load against a system
//! started by `scripts/up` while a seeded schedule kills, restarts and slows its parts, then
//! waits for quiescence and checks that no money was lost, created or spent twice.
//!
//! Replay a run with the seed it prints: `scripts/chaos --seed N`.
//!
//! `cli` holds the options and profiles, `schedule` the seeded fault schedule, `faults` how
//! each fault is injected, `load` the payment load, `audit` what the checks read and
//! `report` the checks and the verdict; this file runs them in order.

mod audit;
mod cli;
mod faults;
mod load;
mod report;
mod schedule;

use anyhow::Context;
use audit::{dead_letters, wait_terminal};
use clap::Parser;
use cli::{Args, Profile};
use faults::{ctl, inject, reset_gateway, Poisoned, GATEWAY_OUTAGE};
use load::Load;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A progress line on stderr, stamped with the time of day.
fn log(msg: impl AsRef<str>) {
    eprintln!(
        "[chaos {}] {}",
        chrono::Utc::now().format("%H:%M:%S"),
        msg.as_ref()
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(1..1_000_000));
    let profile = Profile::named(&args.profile)?;
    let rate = args.rate.unwrap_or(profile.rate);
    log(format!(
        "seed {seed} (replay with: scripts/chaos --seed {seed} --profile {})",
        args.profile
    ));
    if GATEWAY_OUTAGE.as_secs_f64() <= args.reconcile_after_secs {
        log(format!(
            "warning: the reconciler deadline ({}s) is not shorter than the gateway outage ({}s): \
             the outage will not make the reconciler re-drive (scripts/chaos lowers it to 8 s)",
            args.reconcile_after_secs,
            GATEWAY_OUTAGE.as_secs()
        ));
    }

    let pool = PgPool::connect(&args.database_url)
        .await
        .context("connecting to PostgreSQL")?;
    // Crashing PostgreSQL is one of the faults: with synchronous_commit off it forgets
    // transactions it already acknowledged, and the suite would blame the system for it.
    let (sync_commit,): (String,) = sqlx::query_as("SHOW synchronous_commit")
        .fetch_one(&pool)
        .await?;
    if sync_commit == "off" {
        anyhow::bail!(
            "PostgreSQL runs with synchronous_commit=off, so a crash loses acknowledged commits; \
             restart it durable (scripts/down && scripts/up) before running the fault suite"
        );
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let dlq_before = dead_letters(&http, &args).await?;

    let load = Arc::new(
        Load::new(
            http.clone(),
            &args.wallet_url,
            shared::auth::TokenSource::new(
                args.idp_url.clone(),
                args.jwt_secret.clone(),
                args.auth_issuer.clone(),
                args.auth_audience.clone(),
            )?,
            seed,
            args.wallets,
        )
        .await?,
    );
    load.fund().await?;
    log(format!(
        "{} wallets funded; offering {rate}/s for {}s (longer if the faults run longer)",
        args.wallets, profile.load_secs
    ));

    let schedule = schedule::build(seed, profile.rounds, 10.0, profile.load_secs - 10.0, 6.0);
    for (at, f) in &schedule {
        log(format!("  scheduled at {at:>5.1}s: {f}"));
    }

    let started = Instant::now();
    let faults_done = Arc::new(AtomicBool::new(false));
    let driver = tokio::spawn(load.clone().drive(
        rate,
        Duration::from_secs_f64(profile.load_secs),
        faults_done.clone(),
    ));
    let mut poisoned = Poisoned::default();
    let mut counts: BTreeMap<&'static str, u32> = BTreeMap::new();
    let mut last_fault_end = started;
    for (at, fault) in &schedule {
        let wait = Duration::from_secs_f64(*at).saturating_sub(started.elapsed());
        tokio::time::sleep(wait).await;
        log(format!("FAULT {fault}"));
        if let Err(e) = inject(*fault, &args, &http, &pool, &load, seed, &mut poisoned).await {
            log(format!(
                "  fault {fault} could not be injected fully: {e:#}"
            ));
        }
        *counts.entry(fault.label()).or_default() += 1;
        last_fault_end = Instant::now();
    }
    // Long faults push the later ones back; the load runs until the last one is undone.
    faults_done.store(true, Ordering::Relaxed);
    driver.await??;
    log(format!(
        "load finished after {:.0}s; restoring everything and waiting for quiescence",
        started.elapsed().as_secs_f64()
    ));
    ctl(&args, &["restore"]).await?;
    reset_gateway(&http, &args.gateway_url).await;

    let (ids, quiesce) = wait_terminal(&pool, &load, Duration::from_secs(300)).await?;
    let stats = load.stats();
    let report = report::invariants(&report::Run {
        args: &args,
        http: &http,
        pool: &pool,
        load: &load,
        stats: &stats,
        poisoned: &poisoned,
        ids: &ids,
        recovered: quiesce.saturating_duration_since(last_fault_end),
        dlq_before,
    })
    .await?;

    report::print_run(seed, &counts, &stats);
    report.print();
    if report.ok() {
        println!("chaos: all invariants held (seed {seed})");
        Ok(())
    } else {
        eprintln!(
            "chaos: invariants violated (seed {seed}); replay with: \
             scripts/chaos --seed {seed} --profile {}",
            args.profile
        );
        std::process::exit(1)
    }
}
