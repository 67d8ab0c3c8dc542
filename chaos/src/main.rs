//! `chaos`: the fault-injection suite. Drives a steady payment load against a system
//! started by `scripts/up` while a seeded schedule kills, restarts and slows its parts, then
//! waits for quiescence and checks that no money was lost, created or spent twice.
//!
//! Replay a run with the seed it prints: `scripts/chaos --seed N`.

mod load;
mod schedule;

use anyhow::Context;
use clap::Parser;
use load::Load;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schedule::Fault;
use serde_json::{json, Value};
use shared::events::PaymentResult;
use shared::ids::{EventId, PaymentId};
use shared::status::{FailureReason, Outcome as ResultOutcome};
use sqlx::PgPool;
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
    /// RabbitMQ management API (for the dead-letter queue depth).
    #[arg(long, default_value = "http://guest:guest@127.0.0.1:15672")]
    rabbit_api: String,
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
        },
        "long" => Profile {
            load_secs: 600.0,
            rate: 30.0,
            rounds: 5,
        },
        other => anyhow::bail!("unknown profile {other:?} (short or long)"),
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
    let flagged_charged = flagged_charged(&http, &args.gateway_url, &ids.flagged).await?;
    let recovered = quiesce.saturating_duration_since(last_fault_end);

    // ---- checks
    let mut report = Report::default();
    let conservation = conservation(&pool).await?;
    report.check(
        "money conserved per currency (deposits = available + held + captured)",
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
        "per wallet: deposits = available + held + captured; held only for flagged",
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
    let dlq_after = dead_letters(&http, &args).await?;
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
        eprintln!("chaos: invariants violated (seed {seed}); replay with: scripts/chaos --seed {seed} --profile {}", args.profile);
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

/// Injects one fault and undoes it. Poison messages are added to `poisoned` as their broker
/// confirms them, so a fault cut short still counts what it sent.
async fn inject(
    fault: Fault,
    args: &Args,
    http: &reqwest::Client,
    pool: &PgPool,
    load: &Load,
    seed: u64,
    poisoned: &mut Poisoned,
) -> anyhow::Result<()> {
    let down = Duration::from_millis(1000 + seed % 2000);
    match fault {
        Fault::KillWallet | Fault::KillProcessor | Fault::KillGateway | Fault::KillKafka => {
            let name = match fault {
                Fault::KillWallet => "wallet-service",
                Fault::KillProcessor => "processor-service",
                Fault::KillGateway => "mock-gateway",
                _ => "tansu",
            };
            ctl(args, &["kill9", name]).await?;
            tokio::time::sleep(down).await;
            ctl(args, &["restore"]).await?;
        }
        Fault::RestartRabbitMq => ctl(args, &["rabbitmq-restart"]).await?,
        Fault::CrashPostgres => {
            ctl(args, &["postgres-crash"]).await?;
            tokio::time::sleep(down).await;
            ctl(args, &["restore"]).await?;
        }
        Fault::SlowGateway => {
            // Slower than the processor's 2 s timeout, for longer than the reconciler deadline,
            // while the load keeps coming: calls time out, keys stay in flight, payments are
            // re-driven; none of that may release funds of a charge that happens.
            set_gateway_latency(http, &args.gateway_url, 3_000).await?;
            tokio::time::sleep(Duration::from_secs(15)).await;
            reset_gateway(http, &args.gateway_url).await;
        }
        Fault::DuplicateResults => duplicate_results(args, pool, load).await?,
        Fault::Poison => poison(args, poisoned).await?,
        Fault::PoisonResults => poison_results(args, pool, load, poisoned).await?,
        Fault::GatewayOutage => {
            // Hung rather than gone: connections are accepted and never answered, so every
            // charge and every void times out and no outcome is known (a gateway answering
            // errors would still void, and the payments would fail cleanly). The processor
            // requeues, the reconciler re-drives past its deadline, funds stay held.
            ctl(args, &["pause", "mock-gateway"]).await?;
            tokio::time::sleep(GATEWAY_OUTAGE).await;
            ctl(args, &["resume", "mock-gateway"]).await?;
        }
    }
    Ok(())
}

async fn set_gateway_latency(http: &reqwest::Client, url: &str, ms: u64) -> anyhow::Result<()> {
    http.put(format!("{url}/v1/admin/behaviour"))
        .json(&json!({"latency_ms": ms}))
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

async fn reset_gateway(http: &reqwest::Client, url: &str) {
    let _ = set_gateway_latency(http, url, 0).await;
}

/// Re-publishes results for payments that are already final: the same outcome again, and the
/// opposite outcome after it. The wallet must ignore all of them.
async fn duplicate_results(args: &Args, pool: &PgPool, load: &Load) -> anyhow::Result<()> {
    let ids = load.accepted_ids();
    let finals: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "SELECT id, status FROM payments WHERE id = ANY($1) AND status <> 'pending' LIMIT 10",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let producer: FutureProducer = shared::kafka::producer(&args.kafka_brokers)?;
    let topic = shared::topology::KafkaTopics::default().results;
    for (id, status) in &finals {
        let pid = PaymentId(*id);
        let succeeded = |note: &str| {
            PaymentResult::new(
                EventId::new(),
                pid,
                ResultOutcome::Succeeded,
                None,
                Some(note.try_into().expect("a printable reference")),
            )
        };
        let declined = || {
            PaymentResult::new(
                EventId::new(),
                pid,
                ResultOutcome::Failed,
                Some(FailureReason::Declined),
                None,
            )
        };
        let (same, opposite) = if status == "succeeded" {
            (succeeded("dup"), declined())
        } else {
            (declined(), succeeded("late"))
        };
        for r in [&same, &same, &opposite] {
            produce(&producer, &topic, &pid.to_string(), &serde_json::to_vec(r)?)
                .await
                .map_err(|e| anyhow::anyhow!("producing a duplicate: {e}"))?;
        }
    }
    log(format!(
        "  re-published 3 results each for {} final payments",
        finals.len()
    ));
    Ok(())
}

/// One message onto `topic` under `key`, confirmed by the broker.
async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
) -> Result<(), rdkafka::error::KafkaError> {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(15),
        )
        .await
        .map(|_| ())
        .map_err(|(e, _)| e)
}

/// Unparseable messages on both brokers.
async fn poison(args: &Args, poisoned: &mut Poisoned) -> anyhow::Result<()> {
    let conn =
        lapin::Connection::connect(&args.amqp_url, lapin::ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel.confirm_select(Default::default()).await?;
    let topology = shared::topology::AmqpTopology::default();
    let bodies: [&[u8]; 2] = [
        b"not json at all",
        br#"{"type":"payment.requested","version":99}"#,
    ];
    for body in bodies {
        channel
            .basic_publish(
                topology.exchange.as_str().into(),
                topology.routing_key.as_str().into(),
                Default::default(),
                body,
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await?
            .await?;
        poisoned.rabbit += 1;
    }
    let _ = conn.close(200, "done".into()).await;
    let producer: FutureProducer = shared::kafka::producer(&args.kafka_brokers)?;
    let topic = shared::topology::KafkaTopics::default().results;
    for (body, reason) in bodies.into_iter().zip(["not_json", "wrong_type"]) {
        produce(&producer, &topic, "poison", body)
            .await
            .map_err(|e| anyhow::anyhow!("producing poison: {e}"))?;
        *poisoned.kafka.entry(reason).or_default() += 1;
    }
    log("  published 2 poison messages to RabbitMQ and 2 to Kafka");
    Ok(())
}

/// Results that are valid JSON but carry text the database would refuse, for payments still
/// pending (topped up with the latest accepted): U+0000 in the gateway reference, half of them
/// `succeeded` and half `failed/declined` (applied, those would release the funds of a charge
/// that happens), and one reference of 300 characters. Each must be dead-lettered at decode
/// (`invalid`) without touching its payment, which its real result from the processor settles.
async fn poison_results(
    args: &Args,
    pool: &PgPool,
    load: &Load,
    poisoned: &mut Poisoned,
) -> anyhow::Result<()> {
    let ids = load.accepted_ids();
    let mut targets: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT id FROM payments WHERE id = ANY($1) AND status = 'pending'
         ORDER BY created_at DESC LIMIT $2",
    )
    .bind(&ids)
    .bind(POISON_RESULT_TARGETS as i64)
    .fetch_all(pool)
    .await?;
    let pending = targets.len();
    for id in ids.iter().rev() {
        if targets.len() >= POISON_RESULT_TARGETS {
            break;
        }
        if !targets.contains(id) {
            targets.push(*id);
        }
    }
    anyhow::ensure!(
        !targets.is_empty(),
        "no accepted payment to send poison results for"
    );
    let mut poison: Vec<(uuid::Uuid, bool, String)> = targets
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, i % 2 == 0, format!("{POISON_REFERENCE}\u{0}{i}")))
        .collect();
    poison.push((
        targets[0],
        true,
        format!(
            "{POISON_REFERENCE}{}",
            "x".repeat(300 - POISON_REFERENCE.len())
        ),
    ));
    let producer: FutureProducer = shared::kafka::producer(&args.kafka_brokers)?;
    let topic = shared::topology::KafkaTopics::default().results;
    for (id, succeeded, reference) in &poison {
        let pid = PaymentId(*id);
        let (outcome, reason) = if *succeeded {
            (ResultOutcome::Succeeded, None)
        } else {
            (ResultOutcome::Failed, Some(FailureReason::Declined))
        };
        let mut v = serde_json::to_value(PaymentResult::new(
            EventId::new(),
            pid,
            outcome,
            reason,
            None,
        ))?;
        v["gateway_reference"] = reference.as_str().into();
        produce(
            &producer,
            &topic,
            &pid.to_string(),
            &serde_json::to_vec(&v)?,
        )
        .await
        .map_err(|e| anyhow::anyhow!("producing a poison result: {e}"))?;
        *poisoned.kafka.entry("invalid").or_default() += 1;
        if !poisoned.targets.contains(id) {
            poisoned.targets.push(*id);
        }
    }
    log(format!(
        "  published {} poison results (U+0000 or 300-character gateway references) for {} payments, {pending} of them pending",
        poison.len(),
        targets.len()
    ));
    Ok(())
}

/// Of the payments that got poison results, those that ended with a poison reference, and
/// the conflicts recorded with one: both mean a poison result got past decoding.
async fn poison_applied(pool: &PgPool, targets: &[uuid::Uuid]) -> anyhow::Result<(i64, i64)> {
    let pattern = format!("{POISON_REFERENCE}%");
    let payments: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM payments WHERE id = ANY($1) AND gateway_reference LIKE $2",
    )
    .bind(targets)
    .bind(&pattern)
    .fetch_one(pool)
    .await?;
    let conflicts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM payment_outcome_conflicts
         WHERE payment_id = ANY($1) AND reported_reference LIKE $2",
    )
    .bind(targets)
    .bind(&pattern)
    .fetch_one(pool)
    .await?;
    Ok((payments, conflicts))
}

/// Succeeded charges per key of this run's payments, from the gateway's own durable record.
fn charge_records(path: &str, ids: &[uuid::Uuid]) -> anyhow::Result<BTreeMap<String, u32>> {
    let ours: std::collections::HashSet<String> = ids.iter().map(|i| i.to_string()).collect();
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let mut counts = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_str(line).with_context(|| format!("{path}: bad line"))?;
        let key = v["idempotency_key"].as_str().unwrap_or_default();
        if v["status"] == "succeeded" && ours.contains(key) {
            *counts.entry(key.to_owned()).or_default() += 1;
        }
    }
    Ok(counts)
}

/// Messages in the RabbitMQ dead-letter queue and on the Kafka dead-letter topic.
async fn dead_letters(http: &reqwest::Client, args: &Args) -> anyhow::Result<(i64, i64)> {
    let q: Value = http
        .get(format!(
            "{}/api/queues/%2F/{}",
            args.rabbit_api,
            shared::topology::AmqpTopology::default().dead_letter_queue
        ))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let rabbit = q["messages"].as_i64().unwrap_or(0);
    let brokers = args.kafka_brokers.clone();
    let kafka = tokio::task::spawn_blocking(move || -> anyhow::Result<i64> {
        let consumer: BaseConsumer = shared::topology::kafka_config(&brokers)
            .set("group.id", "chaos-watermarks")
            .create()?;
        let (_, high) = consumer.fetch_watermarks(
            &shared::topology::KafkaTopics::default().results_dlq,
            0,
            Duration::from_secs(10),
        )?;
        Ok(high)
    })
    .await??;
    Ok((rabbit, kafka))
}

/// Reads the Kafka dead-letter topic from offset `from` up to `to` and returns how many
/// distinct source messages (by their `source_*` headers) it holds per `dlq_reason`, and how
/// many copies.
async fn kafka_dead_letter_sources(
    brokers: &str,
    from: i64,
    to: i64,
) -> anyhow::Result<(BTreeMap<String, u64>, usize)> {
    use rdkafka::message::{Headers, Message};
    if to <= from {
        return Ok((BTreeMap::new(), 0));
    }
    let brokers = brokers.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<(BTreeMap<String, u64>, usize)> {
        let consumer: BaseConsumer = shared::topology::kafka_config(&brokers)
            .set("group.id", "chaos-dead-letters")
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(
            &shared::topology::KafkaTopics::default().results_dlq,
            0,
            rdkafka::Offset::Offset(from),
        )?;
        consumer.assign(&tpl)?;
        let mut sources = BTreeMap::new();
        let mut copies = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while copies < (to - from) as usize {
            anyhow::ensure!(
                Instant::now() < deadline,
                "read {copies} of {} dead letters within 30 s",
                to - from
            );
            let Some(m) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let m = m?;
            if m.offset() >= to {
                break;
            }
            copies += 1;
            let mut source = Vec::new();
            let mut reason = String::from("(none)");
            if let Some(h) = m.headers() {
                for header in h.iter() {
                    let value =
                        String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned();
                    if header.key.starts_with("source_") {
                        source.push(value);
                    } else if header.key == "dlq_reason" {
                        reason = value;
                    }
                }
            }
            sources.insert(source, reason);
        }
        let mut reasons = BTreeMap::new();
        for reason in sources.into_values() {
            *reasons.entry(reason).or_default() += 1;
        }
        Ok((reasons, copies))
    })
    .await?
}

struct Terminal {
    accepted: usize,
    /// Pending and not flagged for an operator.
    pending: i64,
    /// Pending, flagged for an operator after the reconciler's last re-drive.
    flagged: Vec<Flagged>,
}

#[derive(sqlx::FromRow)]
struct Flagged {
    id: uuid::Uuid,
    wallet_id: uuid::Uuid,
    amount: i64,
}

/// Waits until no payment of the run is pending unless flagged for an operator (a flagged
/// payment is settled by a person, not by waiting), or `deadline`.
async fn wait_terminal(
    pool: &PgPool,
    load: &Load,
    deadline: Duration,
) -> anyhow::Result<(Terminal, Instant)> {
    let ids = load.accepted_ids();
    let start = Instant::now();
    loop {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM payments
             WHERE id = ANY($1) AND status = 'pending' AND attention_since IS NULL",
        )
        .bind(&ids)
        .fetch_one(pool)
        .await?;
        if pending == 0 || start.elapsed() > deadline {
            let at = Instant::now();
            let flagged: Vec<Flagged> = sqlx::query_as(
                "SELECT id, wallet_id, amount FROM payments
                 WHERE id = ANY($1) AND status = 'pending' AND attention_since IS NOT NULL",
            )
            .bind(&ids)
            .fetch_all(pool)
            .await?;
            return Ok((
                Terminal {
                    accepted: ids.len(),
                    pending,
                    flagged,
                },
                at,
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Flagged payments the gateway charged (they must not be: a charged payment's result
/// settles it, and a flagged one keeps its hold until an operator looks).
async fn flagged_charged(
    http: &reqwest::Client,
    url: &str,
    flagged: &[Flagged],
) -> anyhow::Result<Vec<String>> {
    let mut charged = Vec::new();
    for f in flagged {
        log(format!(
            "  payment {} flagged for an operator (wallet {}, {} cents held)",
            f.id, f.wallet_id, f.amount
        ));
        let r = http
            .get(format!("{url}/v1/charges/{}", f.id))
            .send()
            .await?;
        if r.status().is_success() && r.json::<Value>().await?["status"] == "succeeded" {
            charged.push(f.id.to_string());
        }
    }
    Ok(charged)
}

/// Per currency: deposits - (available + held) - captured, which must be 0.
async fn conservation(pool: &PgPool) -> anyhow::Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT w.currency::text,
                (COALESCE(sum(l.deposits), 0) - sum(w.available + w.held) - COALESCE(sum(l.captured), 0))::bigint
         FROM wallets w
         LEFT JOIN (SELECT wallet_id,
                           sum(amount) FILTER (WHERE kind = 'deposit') AS deposits,
                           sum(amount) FILTER (WHERE kind = 'capture') AS captured
                    FROM ledger_entries GROUP BY wallet_id) l ON l.wallet_id = w.id
         GROUP BY w.currency ORDER BY 1",
    )
    .fetch_all(pool)
    .await?)
}

/// Wallets with a negative balance, and wallets whose balances differ from their last
/// ledger entry.
async fn balances_sane(pool: &PgPool) -> anyhow::Result<(i64, i64)> {
    let negative: i64 =
        sqlx::query_scalar("SELECT count(*) FROM wallets WHERE available < 0 OR held < 0")
            .fetch_one(pool)
            .await?;
    let mismatched: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM wallets w
         JOIN LATERAL (SELECT available_after, held_after FROM ledger_entries
                       WHERE wallet_id = w.id ORDER BY seq DESC LIMIT 1) last ON true
         WHERE last.available_after <> w.available OR last.held_after <> w.held",
    )
    .fetch_one(pool)
    .await?;
    Ok((negative, mismatched))
}

struct GatewayCheck {
    succeeded: i64,
    mismatches: Vec<String>,
}

/// Each payment's final status against the gateway's record for its key.
async fn gateway_agrees(
    http: &reqwest::Client,
    url: &str,
    pool: &PgPool,
    load: &Load,
) -> anyhow::Result<GatewayCheck> {
    let rows: Vec<(uuid::Uuid, String, Option<String>)> =
        sqlx::query_as("SELECT id, status, failure_reason FROM payments WHERE id = ANY($1)")
            .bind(load.accepted_ids())
            .fetch_all(pool)
            .await?;
    let mut check = GatewayCheck {
        succeeded: 0,
        mismatches: Vec::new(),
    };
    for (id, status, reason) in rows {
        let r = http.get(format!("{url}/v1/charges/{id}")).send().await?;
        let gw = if r.status().is_success() {
            r.json::<Value>().await?["status"]
                .as_str()
                .unwrap_or("?")
                .to_owned()
        } else {
            r.status().as_u16().to_string()
        };
        let expected = match (status.as_str(), reason.as_deref()) {
            ("succeeded", _) => "succeeded",
            ("failed", Some("declined")) => "declined",
            ("failed", Some("gateway_unavailable")) => "voided",
            _ => "pending",
        };
        if status == "succeeded" {
            check.succeeded += 1;
        }
        // Still pending (flagged for an operator, or the wait ran out): whatever the gateway
        // knows, it must not have charged a payment whose funds are still held.
        let agrees = if expected == "pending" {
            gw != "succeeded"
        } else {
            gw == expected
        };
        if !agrees {
            check
                .mismatches
                .push(format!("{id}: wallet {status}/{reason:?}, gateway {gw}"));
        }
    }
    Ok(check)
}
