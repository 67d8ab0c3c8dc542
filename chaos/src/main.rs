//! `chaos`: the fault-injection suite. Drives a steady payment load against a system
//! started by `scripts/up` while a seeded schedule kills, restarts and slows its parts, then
//! waits for quiescence and checks that no money was lost, created or spent twice.
//!
//! Replay a run with the seed it prints: `scripts/chaos --seed N`.

mod audit;
mod faults;
mod load;
mod refunds;
mod schedule;

use audit::*;
use faults::*;

use anyhow::Context;
use clap::Parser;
use load::Load;
use schedule::Fault;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "chaos",
    about = "Fault-injection suite for the payment pipeline (run via scripts/chaos)"
)]
struct Args {
    /// Seed of the load mix and the fault schedule (random when omitted; always printed).
    #[arg(long)]
    seed: Option<u64>,
    /// `short` (about 2 minutes, one fault of each kind) or `long` (a soak: 10 minutes, 5 rounds).
    #[arg(long, default_value = "short")]
    profile: String,
    /// Payments offered per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Wallets the load spreads over.
    #[arg(long, default_value_t = 40)]
    wallets: usize,
    #[arg(long, env = "WALLET_URL")]
    wallet_url: String,
    #[arg(long, env = "GATEWAY_URL")]
    gateway_url: String,
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[arg(long, env = "AMQP_URL")]
    amqp_url: String,
    #[arg(long, env = "KAFKA_BROKERS")]
    kafka_brokers: String,
    /// The local identity provider that mints the tokens (the default stack's sign-in).
    #[arg(long, env = "IDP_URL")]
    idp_url: Option<String>,
    /// HS256 secret, when the stack runs the development sign-in instead.
    #[arg(long, env = "AUTH_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    #[arg(long, env = "AUTH_ISSUER", hide = true)]
    auth_issuer: Option<String>,
    #[arg(long, env = "AUTH_AUDIENCE", hide = true)]
    auth_audience: Option<String>,
    /// The gateway's durable record of charges (one JSON line per charge or voided key).
    #[arg(long, env = "GATEWAY_DATA_FILE")]
    gateway_data_file: String,
    /// Where scripts/chaos-ctl lives.
    #[arg(long, default_value = "scripts/chaos-ctl")]
    ctl: String,
    /// The wallet-service reconciler deadline the system runs with (scripts/chaos lowers it
    /// to 8 s); the gateway outage must outlast it.
    #[arg(long, env = "RECONCILE_AFTER_SECS", default_value_t = 60.0)]
    reconcile_after_secs: f64,
}

/// How long the gateway is hung by the gateway-outage fault: longer than the reconciler
/// deadline, so payments are re-driven while no outcome can be known.
const GATEWAY_OUTAGE: Duration = Duration::from_secs(20);
/// Payments that get poison results (U+0000 in the reference), one of them also an
/// over-long reference.
const POISON_RESULT_TARGETS: usize = 5;
/// How every poison result's gateway reference begins: no payment may end with it.
const POISON_REFERENCE: &str = "chaos-poison-";

/// What the faults injected that must end up dead-lettered, counted as each is confirmed by
/// its broker.
#[derive(Default)]
struct Poisoned {
    /// Messages for RabbitMQ's dead-letter queue.
    rabbit: u64,
    /// Messages for the Kafka dead-letter topic, by the `dlq_reason` they must get.
    kafka: BTreeMap<&'static str, u64>,
    /// Payments that got a poison result: the poison must not settle them.
    targets: Vec<uuid::Uuid>,
}

impl Poisoned {
    fn kafka_total(&self) -> u64 {
        self.kafka.values().sum()
    }
}

struct Profile {
    load_secs: f64,
    rate: f64,
    rounds: usize,
    faults: &'static [Fault],
}

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
    let profile = match args.profile.as_str() {
        "short" => Profile {
            load_secs: 75.0,
            rate: 20.0,
            rounds: 1,
            faults: &Fault::ALL,
        },
        "long" => Profile {
            load_secs: 600.0,
            rate: 30.0,
            rounds: 5,
            faults: &Fault::ALL,
        },
        // The HA topology (scripts/up --ha): each of its faults twice, while the load runs.
        "ha" => Profile {
            load_secs: 180.0,
            rate: 20.0,
            rounds: 2,
            faults: &Fault::HA,
        },
        other => anyhow::bail!("unknown profile {other:?} (short, long or ha)"),
    };
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

    // On the HA topology DATABASE_URL names both data nodes; the pool follows the primary.
    let target = shared::db::DbTarget::parse(&args.database_url).context("DATABASE_URL")?;
    let pool = shared::db::primary_pool(
        target,
        sqlx::postgres::PgPoolOptions::new().max_connections(8),
        |o| o,
    )
    .await;
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
    let dlq_before = dead_letters(&args).await?;
    let refunded_before = refunds::gateway_refunded(&http, &args.gateway_url).await?;

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

    let schedule = schedule::build(
        profile.faults,
        seed,
        profile.rounds,
        10.0,
        profile.load_secs - 10.0,
        6.0,
    );
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
    let asked = load.refunds();
    let asked_ids: Vec<uuid::Uuid> = asked.iter().map(|a| a.id).collect();
    let refunds_pending =
        refunds::wait_refunds(&pool, &asked_ids, Duration::from_secs(120)).await?;
    let flagged_charged = flagged_charged(&http, &args.gateway_url, &ids.flagged).await?;
    let recovered = quiesce.saturating_duration_since(last_fault_end);

    // ---- checks
    let mut report = Report::default();
    let conservation = conservation(&pool).await?;
    report.check(
        "money conserved per currency (deposits + refunds = available + held + captured)",
        conservation.iter().all(|c| c.1 == 0),
        conservation
            .iter()
            .map(|(cur, diff)| format!("{cur}: {diff:+} cents"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let (negative, ledger_mismatch) = balances_sane(&pool).await?;
    report.check(
        "no balance ever negative; balances match the ledger",
        negative == 0 && ledger_mismatch == 0,
        format!("{negative} negative, {ledger_mismatch} ledger mismatches"),
    );
    let stats = load.stats();
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
        "per wallet: deposits + refunds = available + held + captured; held only for flagged",
        per_wallet.is_empty(),
        per_wallet.join("; "),
    );
    let gateway = gateway_agrees(&http, &args.gateway_url, &pool, &load).await?;
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
    let disagreeing = refunds::payments_disagreeing(&pool).await?;
    report.check(
        "per payment: refunded + reserved <= captured, = its refunds and refund entries",
        disagreeing.is_empty(),
        if disagreeing.is_empty() {
            "every payment's refund columns agree with its refunds and ledger".into()
        } else {
            disagreeing.join("; ")
        },
    );
    let outcomes = refunds::outcomes(&http, &args.gateway_url, &pool, &asked).await?;
    let gateway_refunded =
        refunds::gateway_refunded(&http, &args.gateway_url).await? - refunded_before;
    report.check(
        "refunds final as the gateway decided them; gateway refunded = refunds credited",
        refunds_pending == 0
            && outcomes.wrong.is_empty()
            && gateway_refunded == outcomes.refunded_total,
        format!(
            "{} refunds: {} succeeded ({} credited, gateway refunded {gateway_refunded}), {} declined, {} flagged, {refunds_pending} pending{}",
            asked.len(),
            outcomes.succeeded,
            outcomes.refunded_total,
            outcomes.declined,
            outcomes.flagged,
            if outcomes.wrong.is_empty() {
                String::new()
            } else {
                format!("; {}", outcomes.wrong.join("; "))
            }
        ),
    );
    let dlq_after = dead_letters(&args).await?;
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
        poison_applied(&pool, &poisoned.targets).await?;
    report.check(
        "poison results settled nothing (the real result did)",
        settled_by_poison == 0 && conflicts_from_poison == 0,
        format!(
            "{} payments got poison results; {settled_by_poison} carry a poison reference, {conflicts_from_poison} conflicts record one",
            poisoned.targets.len()
        ),
    );

    println!();
    println!("faults injected (seed {seed}):");
    for (label, n) in &counts {
        println!("  {n:>3} x {label}");
    }
    println!(
        "load: {} payments attempted, {} accepted, {} refused (4xx), {} client retries, {} answers 503/timeout during faults",
        stats.attempted, stats.accepted, stats.refused, stats.retries, stats.unavailable
    );
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

#[derive(Default)]
struct Report(Vec<(String, bool, String)>);

impl Report {
    fn check(&mut self, what: &str, ok: bool, detail: String) {
        self.0.push((what.to_owned(), ok, detail));
    }
    fn ok(&self) -> bool {
        self.0.iter().all(|c| c.1)
    }
    fn print(&self) {
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

async fn ctl(args: &Args, a: &[&str]) -> anyhow::Result<()> {
    let status = tokio::process::Command::new("bash")
        .arg(&args.ctl)
        .args(a)
        .status()
        .await?;
    anyhow::ensure!(status.success(), "chaos-ctl {a:?} failed");
    Ok(())
}
