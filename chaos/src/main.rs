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
use std::collections::BTreeMap;
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
    #[arg(long, env = "AUTH_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// RabbitMQ management API (for the dead-letter queue depth).
    #[arg(long, default_value = "http://guest:guest@127.0.0.1:15672")]
    rabbit_api: String,
    /// The gateway's durable record of charges (one JSON line per charge or voided key).
    #[arg(long, env = "GATEWAY_DATA_FILE")]
    gateway_data_file: String,
    /// Where scripts/chaos-ctl lives.
    #[arg(long, default_value = "scripts/chaos-ctl")]
    ctl: String,
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

    let load = Arc::new(Load::new(
        http.clone(),
        &args.wallet_url,
        &args.jwt_secret,
        seed,
        args.wallets,
    ));
    load.fund().await?;
    log(format!(
        "{} wallets funded; offering {rate}/s for {}s",
        args.wallets, profile.load_secs
    ));

    let schedule = schedule::build(seed, profile.rounds, 10.0, profile.load_secs - 10.0, 6.0);
    for (at, f) in &schedule {
        log(format!("  scheduled at {at:>5.1}s: {f}"));
    }

    let started = Instant::now();
    let driver = tokio::spawn(
        load.clone()
            .drive(rate, Duration::from_secs_f64(profile.load_secs)),
    );
    let mut injected_poison = (0u64, 0u64);
    let mut counts: BTreeMap<&'static str, u32> = BTreeMap::new();
    let mut last_fault_end = started;
    for (at, fault) in &schedule {
        let wait = Duration::from_secs_f64(*at).saturating_sub(started.elapsed());
        tokio::time::sleep(wait).await;
        log(format!("FAULT {fault}"));
        match inject(*fault, &args, &http, &pool, &load, seed).await {
            Ok(poison) => {
                injected_poison.0 += poison.0;
                injected_poison.1 += poison.1;
            }
            Err(e) => log(format!(
                "  fault {fault} could not be injected fully: {e:#}"
            )),
        }
        *counts.entry(fault.label()).or_default() += 1;
        last_fault_end = Instant::now();
    }
    driver.await??;
    log("load finished; restoring everything and waiting for quiescence");
    ctl(&args, &["restore"]).await?;
    reset_gateway(&http, &args.gateway_url).await;

    let (ids, quiesce) = wait_terminal(&pool, &load, Duration::from_secs(300)).await?;
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
    report.check(
        "every accepted payment terminal",
        ids.pending == 0,
        format!(
            "{} accepted, {} pending; last final {:.1}s after the last fault",
            ids.accepted,
            ids.pending,
            recovered.as_secs_f64()
        ),
    );
    let per_wallet = load.wallet_conservation().await?;
    report.check(
        "per wallet: deposits = available + held + captured",
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
    let (kafka_dead, kafka_copies) =
        kafka_dead_letter_sources(&args.kafka_brokers, dlq_before.1, dlq_after.1).await?;
    report.check(
        "messages dead-lettered = poison injected",
        rabbit_dead == injected_poison.0 as i64 && kafka_dead as u64 == injected_poison.1,
        format!(
            "RabbitMQ {rabbit_dead}/{} , Kafka {kafka_dead}/{} (dead-lettered/injected; {kafka_copies} Kafka copies)",
            injected_poison.0, injected_poison.1
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

/// Injects one fault and undoes it. Returns poison messages injected (RabbitMQ, Kafka).
async fn inject(
    fault: Fault,
    args: &Args,
    http: &reqwest::Client,
    pool: &PgPool,
    load: &Load,
    seed: u64,
) -> anyhow::Result<(u64, u64)> {
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
        Fault::Poison => return poison(args).await,
    }
    Ok((0, 0))
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
            let payload = serde_json::to_vec(r)?;
            let key = pid.to_string();
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&payload),
                    Duration::from_secs(15),
                )
                .await
                .map_err(|(e, _)| anyhow::anyhow!("producing a duplicate: {e}"))?;
        }
    }
    log(format!(
        "  re-published 3 results each for {} final payments",
        finals.len()
    ));
    Ok(())
}

/// Unparseable messages on both brokers.
async fn poison(args: &Args) -> anyhow::Result<(u64, u64)> {
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
    }
    let _ = conn.close(200, "done".into()).await;
    let producer: FutureProducer = shared::kafka::producer(&args.kafka_brokers)?;
    let topic = shared::topology::KafkaTopics::default().results;
    for body in bodies {
        producer
            .send(
                FutureRecord::<str, [u8]>::to(&topic)
                    .key("poison")
                    .payload(body),
                Duration::from_secs(15),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("producing poison: {e}"))?;
    }
    log("  published 2 poison messages to RabbitMQ and 2 to Kafka");
    Ok((2, 2))
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
/// distinct source messages (by their `source_*` headers) it holds, and how many copies.
async fn kafka_dead_letter_sources(
    brokers: &str,
    from: i64,
    to: i64,
) -> anyhow::Result<(usize, usize)> {
    use rdkafka::message::{Headers, Message};
    if to <= from {
        return Ok((0, 0));
    }
    let brokers = brokers.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<(usize, usize)> {
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
        let mut sources = std::collections::BTreeSet::new();
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
            if let Some(h) = m.headers() {
                for header in h.iter() {
                    if header.key.starts_with("source_") {
                        source.push(
                            String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
            }
            sources.insert(source);
        }
        Ok((sources.len(), copies))
    })
    .await?
}

struct Terminal {
    accepted: usize,
    pending: i64,
}

async fn wait_terminal(
    pool: &PgPool,
    load: &Load,
    deadline: Duration,
) -> anyhow::Result<(Terminal, Instant)> {
    let ids = load.accepted_ids();
    let start = Instant::now();
    loop {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM payments WHERE id = ANY($1) AND status = 'pending'",
        )
        .bind(&ids)
        .fetch_one(pool)
        .await?;
        if pending == 0 || start.elapsed() > deadline {
            return Ok((
                Terminal {
                    accepted: ids.len(),
                    pending,
                },
                Instant::now(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
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
        if gw != expected {
            check
                .mismatches
                .push(format!("{id}: wallet {status}/{reason:?}, gateway {gw}"));
        }
    }
    Ok(check)
}
