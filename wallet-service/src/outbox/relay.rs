//! Relays events for other systems (`payment.finalized`, `wallet.deposited`,
//! `payment.alert`) from the outbox to Kafka.
//!
//! One relay works at a time (a transaction-level advisory lock), claiming rows in `seq`
//! order, so one wallet's events reach their partition (key = wallet id) in the order its
//! changes committed. A row is marked published only after Kafka acknowledged it (`acks=all`)
//! and in the transaction holding the claim; a crash in between sends it again, with the same
//! `event_id`, which is what consumers dedupe on. An event the producer refuses for good
//! (larger than its `message.max.bytes`) is moved to `outbox_parked` instead of holding up
//! every event behind it; an operator requeues it with `wallet-service review`.

use crate::config::{BrokerConfig, DispatcherConfig};
use crate::outbox::{Batch, Channel, Chime, Next, Wakeup};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use shared::backoff::Backoff;
use shared::shutdown::Shutdown;
use shared::topology::KafkaTopics;
use sqlx::PgPool;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The advisory lock that keeps a second relay (another wallet-service) from interleaving
/// its batches with ours and reordering a wallet's events.
const RELAY_LOCK: i64 = 0x6576_656e_7473; // "events"

pub struct EventRelay {
    pub pool: PgPool,
    pub producer: FutureProducer,
    pub brokers: String,
    pub topics: KafkaTopics,
    pub config: DispatcherConfig,
    /// The producer is idempotent, so librdkafka itself keeps each partition's order
    /// through retries; otherwise the relay sends a wallet's events one round at a time.
    pub ordered_by_producer: bool,
    /// This process's doorbell for events, when its writers ring it.
    pub chime: Option<Chime>,
}

pub fn describe_metrics() {
    metrics::describe_counter!(
        "events_published_total",
        "Events for other systems produced to Kafka and acknowledged, by topic."
    );
    metrics::describe_counter!(
        "events_publish_failures_total",
        "Events Kafka did not acknowledge (sent again later)."
    );
    metrics::describe_counter!(
        "events_parked_total",
        "Events Kafka refused for good, moved to outbox_parked for an operator."
    );
    metrics::describe_histogram!(
        "events_publish_batch_duration_seconds",
        metrics::Unit::Seconds,
        "Time to produce and acknowledge one batch of events."
    );
}

/// The next events in `seq` order across both Kafka channels. Each channel is read from
/// `outbox_unpublished_idx (channel, seq)` in order and the two are merged, so a batch reads
/// its own rows only; `channel IN (...) ORDER BY seq` sorted every waiting row of both for
/// each batch, which after a Kafka outage made each batch cost the whole backlog.
const CLAIM_SQL: &str = "
    SELECT id, aggregate_id, event_type, channel, payload, traceparent FROM (
        (SELECT id, aggregate_id, event_type, channel, payload, traceparent, seq FROM outbox
         WHERE published_at IS NULL AND channel = 'events' ORDER BY seq LIMIT $1)
        UNION ALL
        (SELECT id, aggregate_id, event_type, channel, payload, traceparent, seq FROM outbox
         WHERE published_at IS NULL AND channel = 'alerts' ORDER BY seq LIMIT $1)
    ) waiting
    ORDER BY seq LIMIT $1";

/// A batch's claim as PostgreSQL ran it (`EXPLAIN (ANALYZE, FORMAT JSON)`: the read is
/// made, nothing is locked or changed), with the rows each step read.
pub async fn explain_claim(pool: &PgPool, batch: i64) -> Result<serde_json::Value, sqlx::Error> {
    let (plan,): (serde_json::Value,) =
        sqlx::query_as(&format!("EXPLAIN (ANALYZE, FORMAT JSON) {CLAIM_SQL}"))
            .bind(batch)
            .fetch_one(pool)
            .await?;
    Ok(plan)
}

/// An event waiting in the outbox; `aggregate_id` is its wallet (the Kafka key).
#[derive(sqlx::FromRow)]
struct Claimed {
    id: Uuid,
    aggregate_id: Uuid,
    event_type: String,
    channel: String,
    payload: serde_json::Value,
    traceparent: Option<String>,
}

impl EventRelay {
    pub fn new(
        pool: PgPool,
        producer: FutureProducer,
        brokers: &BrokerConfig,
        config: DispatcherConfig,
    ) -> Self {
        Self {
            pool,
            producer,
            brokers: brokers.kafka_brokers.clone(),
            topics: KafkaTopics::with_prefix(&brokers.broker_prefix),
            config,
            ordered_by_producer: shared::kafka::idempotence_enabled(),
            chime: None,
        }
    }

    /// Wakes on this process's doorbell (see [`crate::outbox::Doorbell`]).
    pub fn with_chime(mut self, chime: Chime) -> Self {
        self.chime = Some(chime);
        self
    }

    pub async fn run(mut self, mut shutdown: Shutdown) {
        if !self
            .topics
            .create_when_ready(&self.brokers, &mut shutdown)
            .await
        {
            return;
        }
        tracing::info!(
            events = %self.topics.events,
            alerts = %self.topics.alerts,
            "event relay started",
        );
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut failures = 0;
        let mut wakeup = Wakeup::new(
            self.pool.clone(),
            Channel::Events.notify_channel(),
            self.config.outbox_poll_interval,
        )
        .with_linger(self.config.events_linger)
        .with_chime(self.chime.take());
        while !shutdown.is_triggered() {
            wakeup.before_batch();
            match self.publish_batch().await {
                Ok(batch) => {
                    failures = 0;
                    // An event Kafka will not take fails the batch (the arm below) or is
                    // parked, so never BackOff here.
                    if batch.next(self.config.outbox_batch_size) == Next::Again {
                        continue;
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        attempt = failures,
                        "relaying events to Kafka failed; will retry",
                    );
                    wakeup.reset();
                    let delay = backoff.delay(failures);
                    failures += 1;
                    if !shutdown.sleep(delay).await {
                        break;
                    }
                    continue;
                }
            }
            if !wakeup.wait(&mut shutdown).await {
                break;
            }
        }
        tracing::info!("event relay stopped");
    }

    fn topic(&self, channel: &str) -> &str {
        match channel {
            "alerts" => &self.topics.alerts,
            _ => &self.topics.events,
        }
    }

    /// Claims, produces and marks one batch (none claimed when another relay holds the
    /// lock).
    async fn publish_batch(&self) -> anyhow::Result<Batch> {
        let mut tx = self.pool.begin().await?;
        let mine = sqlx::query_scalar!(
            r#"SELECT pg_try_advisory_xact_lock($1) AS "mine!""#,
            RELAY_LOCK
        )
        .fetch_one(&mut *tx)
        .await?;
        if !mine {
            return Ok(Batch::default());
        }
        let rows: Vec<Claimed> = sqlx::query_as(CLAIM_SQL)
            .bind(self.config.outbox_batch_size)
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            return Ok(Batch::default());
        }
        let start = Instant::now();
        // Per wallet, an event is sent only after the one before it was acknowledged (one
        // round per position); all wallets of a round go out together. Without an idempotent
        // producer a failed send followed by a successful one would otherwise put a wallet's
        // later event on its partition before the earlier one's retry. With idempotence
        // librdkafka keeps the partition's order itself, so the whole batch is one round.
        let rounds = if self.ordered_by_producer {
            vec![rows.iter().collect::<Vec<_>>()]
        } else {
            rounds_by_wallet(&rows)
        };
        let mut published = Vec::with_capacity(rows.len());
        let mut parked: Vec<(Uuid, String)> = Vec::new();
        let mut failed = 0u64;
        for round in rounds {
            let mut sent = Vec::with_capacity(round.len());
            for row in round {
                let body = serde_json::to_vec(&row.payload).expect("a JSON value serializes");
                let (key, event_id) = (row.aggregate_id.to_string(), row.id.to_string());
                let mut headers = vec![
                    ("event_type", row.event_type.as_str()),
                    ("event_id", &event_id),
                ];
                if let Some(t) = &row.traceparent {
                    headers.push(("traceparent", t));
                }
                let record = FutureRecord::to(self.topic(&row.channel))
                    .key(&key)
                    .payload(&body)
                    .headers(shared::kafka::headers(headers));
                // Queue the round first, then wait: one round of acknowledgements.
                match self.producer.send_result(record) {
                    Ok(delivery) => sent.push((row, Ok(delivery))),
                    Err((e, _)) => {
                        let refused = Delivered::refused_at_enqueue(e);
                        let stop = matches!(refused, Delivered::Failed(_));
                        sent.push((row, Err(refused)));
                        // Queueing what follows (with the idempotent producer, a wallet's
                        // later events) would let it overtake this one.
                        if stop {
                            break;
                        }
                    }
                }
            }
            // Rows are settled in order up to the first failure that a later attempt may
            // cure: the rest are sent again after it, so a wallet's later event is never
            // marked while an earlier one is still owed; and no later round is sent. A row
            // Kafka refuses for good is parked, and counts as settled.
            for (row, queued) in sent {
                let delivered = match queued {
                    Ok(delivery) => match delivery.await {
                        Ok(Ok(_)) => Delivered::Acked,
                        Ok(Err((e, _))) => Delivered::Failed(e.to_string()),
                        Err(_) => Delivered::Failed("the delivery report was lost".into()),
                    },
                    Err(refused) => refused,
                };
                match delivered {
                    Delivered::Failed(error) => {
                        // Every event of every batch while Kafka is down.
                        shared::warn_throttled!(
                            event_id = %row.id,
                            event_type = row.event_type,
                            error = %error,
                            "Kafka did not acknowledge an event; it will be sent again",
                        );
                        failed += 1;
                    }
                    // Sent again after the failure before it.
                    _ if failed > 0 => {}
                    Delivered::Acked => {
                        let topic = self.topic(&row.channel).to_owned();
                        metrics::counter!("events_published_total", "topic" => topic).increment(1);
                        tracing::debug!(event_id = %row.id, event_type = row.event_type, "event published");
                        published.push(row.id);
                    }
                    Delivered::RefusedForGood(error) => {
                        tracing::error!(
                            event_id = %row.id,
                            event_type = row.event_type,
                            wallet_id = %row.aggregate_id,
                            error = %error,
                            "Kafka refused an event for good; it is parked for an operator \
                             (wallet-service review) and the events behind it go on",
                        );
                        parked.push((row.id, error));
                    }
                }
            }
            if failed > 0 {
                break;
            }
        }
        sqlx::query!(
            "UPDATE outbox SET published_at = now(), attempts = attempts + 1 WHERE id = ANY($1)",
            &published,
        )
        .execute(&mut *tx)
        .await?;
        if !parked.is_empty() {
            park(&mut tx, &parked).await?;
        }
        tx.commit().await?;
        metrics::histogram!("events_publish_batch_duration_seconds")
            .record(start.elapsed().as_secs_f64());
        if !parked.is_empty() {
            metrics::counter!("events_parked_total").increment(parked.len() as u64);
        }
        if failed > 0 {
            metrics::counter!("events_publish_failures_total").increment(failed);
            anyhow::bail!("{failed} of {} events were not acknowledged", rows.len());
        }
        Ok(Batch {
            claimed: rows.len(),
            refused: 0,
        })
    }
}

/// What Kafka did with one event.
enum Delivered {
    Acked,
    /// The producer will never take the record: it is larger than `message.max.bytes`.
    RefusedForGood(String),
    /// Anything a later attempt may cure: the broker down, a full local queue, a timeout. A
    /// missing topic or a denied authorization is here too: it concerns every event, and
    /// parking them all would empty the stream instead of waiting for the fix.
    Failed(String),
}

impl Delivered {
    /// An error from queueing one record. Only the producer's own size check speaks of that
    /// record alone. A broker's refusal (in a delivery report) is never taken as final: the
    /// broker refuses a whole batch of records at once (a topic's `max.message.bytes` below
    /// the batch), which librdkafka does not split, so small events sent with a large one
    /// would be parked with it. Those are retried, and the outbox lag alerts say so.
    fn refused_at_enqueue(e: KafkaError) -> Self {
        match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::MessageSizeTooLarge) => Self::RefusedForGood(e.to_string()),
            _ => Self::Failed(e.to_string()),
        }
    }
}

/// Moves refused events from the outbox to `outbox_parked`, each with Kafka's reason.
async fn park(tx: &mut sqlx::PgConnection, parked: &[(Uuid, String)]) -> Result<(), sqlx::Error> {
    let (ids, reasons): (Vec<Uuid>, Vec<String>) = parked.iter().cloned().unzip();
    sqlx::query(
        "WITH refused (id, reason) AS (SELECT * FROM unnest($1::uuid[], $2::text[])),
              moved AS (DELETE FROM outbox o USING refused r WHERE o.id = r.id
                        RETURNING o.id, o.aggregate_id, o.event_type, o.channel, o.payload,
                                  o.traceparent, o.created_at, r.reason)
         INSERT INTO outbox_parked (id, aggregate_id, event_type, channel, payload,
                                    traceparent, created_at, reason)
         SELECT id, aggregate_id, event_type, channel, payload, traceparent, created_at, reason
         FROM moved",
    )
    .bind(&ids)
    .bind(&reasons)
    .execute(tx)
    .await?;
    Ok(())
}

/// Splits rows (in `seq` order) into rounds: round `n` holds each wallet's `n`th row, in
/// `seq` order, so that sending round by round keeps every wallet's order.
fn rounds_by_wallet<R: HasWallet>(rows: &[R]) -> Vec<Vec<&R>> {
    let mut position: std::collections::HashMap<Uuid, usize> = std::collections::HashMap::new();
    let mut rounds: Vec<Vec<&R>> = Vec::new();
    for row in rows {
        let n = position.entry(row.wallet()).or_insert(0);
        if rounds.len() <= *n {
            rounds.push(Vec::new());
        }
        rounds[*n].push(row);
        *n += 1;
    }
    rounds
}

trait HasWallet {
    fn wallet(&self) -> Uuid;
}

impl HasWallet for Claimed {
    fn wallet(&self) -> Uuid {
        self.aggregate_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl HasWallet for (Uuid, u32) {
        fn wallet(&self) -> Uuid {
            self.0
        }
    }

    #[test]
    fn each_round_holds_one_event_per_wallet_in_order() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let rows = vec![(a, 1), (b, 2), (a, 3), (a, 4), (b, 5)];
        let rounds: Vec<Vec<u32>> = rounds_by_wallet(&rows)
            .into_iter()
            .map(|r| r.into_iter().map(|x| x.1).collect())
            .collect();
        assert_eq!(rounds, vec![vec![1, 2], vec![3, 5], vec![4]]);
    }

    #[test]
    fn only_the_producers_size_check_parks_an_event() {
        use RDKafkaErrorCode as C;
        let parks = |code| {
            matches!(
                Delivered::refused_at_enqueue(KafkaError::MessageProduction(code)),
                Delivered::RefusedForGood(_)
            )
        };
        assert!(parks(C::MessageSizeTooLarge));
        // A full local queue, an unknown topic or partition, anything else: retried.
        for code in [
            C::QueueFull,
            C::UnknownTopic,
            C::UnknownPartition,
            C::UnknownTopicOrPartition,
            C::TopicAuthorizationFailed,
            C::InvalidArgument,
            C::InvalidRecord,
        ] {
            assert!(!parks(code), "{code:?}");
        }
        assert!(matches!(
            Delivered::refused_at_enqueue(KafkaError::Canceled),
            Delivered::Failed(_)
        ));
    }
}
