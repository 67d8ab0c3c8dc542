//! The faults that need more than a process signal: a hung gateway, duplicate and
//! contradicting results, and poison messages on both brokers, each counted as its broker
//! confirms it.

use crate::load::Load;
use crate::schedule::Fault;
use crate::{ctl, log, Args, Poisoned, GATEWAY_OUTAGE, POISON_REFERENCE, POISON_RESULT_TARGETS};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use shared::events::PaymentResult;
use shared::ids::{EventId, PaymentId};
use shared::status::{FailureReason, Outcome as ResultOutcome};
use sqlx::PgPool;
use std::time::Duration;

/// Injects one fault and undoes it. Poison messages are added to `poisoned` as their broker
/// confirms them, so a fault cut short still counts what it sent.
pub(crate) async fn inject(
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
        Fault::KillPgPrimary => {
            ctl(args, &["pg-kill-primary"]).await?;
            // The node stays dead while the standby is promoted and the load goes on.
            tokio::time::sleep(down * 5).await;
            ctl(args, &["restore"]).await?;
        }
        Fault::KillRabbitNode => {
            let node = (1 + seed % 3).to_string();
            ctl(args, &["rabbitmq-kill", &node]).await?;
            tokio::time::sleep(down * 3).await;
            ctl(args, &["restore"]).await?;
        }
        Fault::KillWalletInstance | Fault::KillProcessorInstance => {
            let service = match fault {
                Fault::KillWalletInstance => "wallet-service",
                _ => "processor-service",
            };
            // Either instance, by seed: the first one also runs what the second does.
            let name = if seed.is_multiple_of(2) {
                service.to_string()
            } else {
                format!("{service}-2")
            };
            ctl(args, &["kill9", &name]).await?;
            tokio::time::sleep(down * 3).await;
            ctl(args, &["restore"]).await?;
        }
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

pub(crate) async fn set_gateway_latency(
    http: &reqwest::Client,
    url: &str,
    ms: u64,
) -> anyhow::Result<()> {
    http.put(format!("{url}/v1/admin/behaviour"))
        .json(&json!({"latency_ms": ms}))
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

pub(crate) async fn reset_gateway(http: &reqwest::Client, url: &str) {
    let _ = set_gateway_latency(http, url, 0).await;
}

/// Re-publishes results for payments that are already final: the same outcome again, and the
/// opposite outcome after it. The wallet must ignore all of them.
pub(crate) async fn duplicate_results(
    args: &Args,
    pool: &PgPool,
    load: &Load,
) -> anyhow::Result<()> {
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
pub(crate) async fn produce(
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
pub(crate) async fn poison(args: &Args, poisoned: &mut Poisoned) -> anyhow::Result<()> {
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
pub(crate) async fn poison_results(
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
