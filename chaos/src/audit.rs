//! What the checks read after the run: conservation per currency, sane balances, the
//! gateway's record of every payment, dead letters on both brokers, flagged payments.

use crate::load::Load;
use crate::{log, Args, POISON_REFERENCE};
use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::Value;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Of the payments that got poison results, those that ended with a poison reference, and
/// the conflicts recorded with one: both mean a poison result got past decoding.
pub(crate) async fn poison_applied(
    pool: &PgPool,
    targets: &[uuid::Uuid],
) -> anyhow::Result<(i64, i64)> {
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
pub(crate) fn charge_records(
    path: &str,
    ids: &[uuid::Uuid],
) -> anyhow::Result<BTreeMap<String, u32>> {
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
pub(crate) async fn dead_letters(args: &Args) -> anyhow::Result<(i64, i64)> {
    // A passive declare answers the queue's depth from any node of a cluster (the management
    // API is a plugin of one node, and absent from the HA topology's).
    let conn = shared::amqp::AmqpNodes::parse(&args.amqp_url)
        .connect()
        .await?;
    let channel = conn.create_channel().await?;
    let dlq = shared::topology::AmqpTopology::default().dead_letter_queue;
    let q = channel
        .queue_declare(
            dlq.as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await?;
    let rabbit = i64::from(q.message_count());
    let _ = conn.close(0, "done".into()).await;
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
pub(crate) async fn kafka_dead_letter_sources(
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

pub(crate) struct Terminal {
    pub(crate) accepted: usize,
    /// Pending and not flagged for an operator.
    pub(crate) pending: i64,
    /// Pending, flagged for an operator after the reconciler's last re-drive.
    pub(crate) flagged: Vec<Flagged>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct Flagged {
    pub(crate) id: uuid::Uuid,
    pub(crate) wallet_id: uuid::Uuid,
    pub(crate) amount: i64,
}

/// Waits until no payment of the run is pending unless flagged for an operator (a flagged
/// payment is settled by a person, not by waiting), or `deadline`.
pub(crate) async fn wait_terminal(
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
pub(crate) async fn flagged_charged(
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

/// Per currency: deposits + refunds - (available + held) - captured, which must be 0.
pub(crate) async fn conservation(pool: &PgPool) -> anyhow::Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT w.currency::text,
                (COALESCE(sum(l.deposits), 0) + COALESCE(sum(l.refunds), 0)
                 - sum(w.available + w.held) - COALESCE(sum(l.captured), 0))::bigint
         FROM wallets w
         LEFT JOIN (SELECT wallet_id,
                           sum(amount) FILTER (WHERE kind = 'deposit') AS deposits,
                           sum(amount) FILTER (WHERE kind = 'capture') AS captured,
                           sum(amount) FILTER (WHERE kind = 'refund') AS refunds
                    FROM ledger_entries GROUP BY wallet_id) l ON l.wallet_id = w.id
         GROUP BY w.currency ORDER BY 1",
    )
    .fetch_all(pool)
    .await?)
}

/// Wallets with a negative balance, and wallets whose balances differ from their last
/// ledger entry.
pub(crate) async fn balances_sane(pool: &PgPool) -> anyhow::Result<(i64, i64)> {
    let negative: i64 =
        sqlx::query_scalar("SELECT count(*) FROM wallets WHERE available < 0 OR held < 0")
            .fetch_one(pool)
            .await?;
    let mismatched: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM wallets w
         JOIN LATERAL (SELECT available_after, held_after FROM ledger_entries
                       WHERE wallet_id = w.id ORDER BY created_at DESC, seq DESC LIMIT 1) last ON true
         WHERE last.available_after <> w.available OR last.held_after <> w.held",
    )
    .fetch_one(pool)
    .await?;
    Ok((negative, mismatched))
}

pub(crate) struct GatewayCheck {
    pub(crate) succeeded: i64,
    pub(crate) mismatches: Vec<String>,
}

/// Each payment's final status against the gateway's record for its key.
pub(crate) async fn gateway_agrees(
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
