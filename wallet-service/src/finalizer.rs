//! The result consumer: applies `payment.result` and `refund.result` messages from Kafka to
//! the database.
//!
//! Messages are taken in small batches and applied in one transaction; offsets are committed
//! only after that transaction committed. A crash in between redelivers the batch, and the
//! inbox (`processed_events`) turns the redelivery into a no-op. A message that cannot be
//! applied (unparseable, unknown version, unknown payment) is copied to the dead-letter topic
//! before its offset is committed, so it never blocks the partition.

use crate::outbox::Channel;
use crate::store::errors::refusal;
use crate::store::payments::{self, Applied};
use crate::store::refunds::{self, RefundOutcome};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use shared::backoff::Backoff;
use shared::events::{decode_decided, Decided, PaymentResult, RefundResult};
use shared::shutdown::Shutdown;
use shared::status::PaymentStatus;
use shared::topology::KafkaTopics;
use sqlx::Acquire;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::time::Duration;
use tracing::Instrument;

pub struct Finalizer {
    pub pool: PgPool,
    pub consumer: std::sync::Arc<shared::kafka::Consumer>,
    /// The consumer group it reads in (`RESULTS_CONSUMER_GROUP`).
    pub group: String,
    pub producer: FutureProducer,
    pub topics: KafkaTopics,
    pub batch_size: usize,
    /// Rung after a batch that finalized something (its `payment.finalized` and refund
    /// events wait in the outbox).
    pub doorbell: crate::outbox::Doorbell,
}

pub fn describe_metrics() {
    metrics::describe_counter!(
        "payments_finalized_total",
        "Payments moved to a final status, by outcome and reason."
    );
    metrics::describe_histogram!(
        "payment_finalization_seconds",
        metrics::Unit::Seconds,
        "Time from a payment's acceptance to its finalization."
    );
    metrics::describe_counter!(
        "results_consumed_total",
        "payment.result messages read from Kafka."
    );
    metrics::describe_counter!(
        "results_duplicates_total",
        "Results ignored because they were already applied or the payment was already final."
    );
    metrics::describe_counter!(
        "payment_outcome_conflicts_total",
        "Results contradicting a payment's final status (kept in payment_outcome_conflicts)."
    );
    metrics::describe_counter!(
        "results_dead_lettered_total",
        "Results sent to the dead-letter topic, by reason."
    );
    metrics::describe_counter!(
        "refunds_finalized_total",
        "Refunds moved to a final status, by outcome and reason."
    );
    metrics::describe_counter!(
        "refunds_refunded_minor_units_total",
        "Minor units credited back to wallets by succeeded refunds."
    );
    metrics::describe_histogram!(
        "refund_finalization_seconds",
        metrics::Unit::Seconds,
        "Time from a refund's acceptance to its finalization."
    );
    metrics::describe_counter!(
        "refund_outcome_conflicts_total",
        "Refund results contradicting the refund's final status (logged for an operator)."
    );
    metrics::describe_histogram!(
        "results_batch_duration_seconds",
        metrics::Unit::Seconds,
        "Time to apply one batch of results and commit it."
    );
}

/// Why [`Finalizer::run`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    Shutdown,
    /// The consumer kept failing; the caller should build a fresh one. librdkafka can stay
    /// stuck in "all brokers down" after a broker restart even once the broker is back.
    Unhealthy,
}

/// How a batch goes to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// All results in one transaction: the normal, cheap case.
    Together,
    /// Each result under its own savepoint, after the database refused one: a refusal that
    /// no retry can fix is dead-lettered alone and the rest of the batch is applied.
    OneByOne,
}

/// The database refused a result's data for a reason retrying cannot fix.
fn refused(e: &anyhow::Error) -> bool {
    e.downcast_ref::<sqlx::Error>()
        .is_some_and(|e| refusal(e).is_some())
}

/// What applying one result did, beside the result it applied.
enum Done<'a> {
    Payment(&'a PaymentResult, Applied),
    Refund(&'a RefundResult, refunds::Applied),
}

async fn apply_one<'a>(
    conn: &mut sqlx::PgConnection,
    d: &'a Decided,
) -> Result<Done<'a>, sqlx::Error> {
    match d {
        Decided::Payment(r) => {
            let span =
                tracing::info_span!("finalize", payment_id = %r.payment_id, event_id = %r.event_id);
            payments::finalize(
                conn,
                r.event_id,
                r.payment_id,
                r.outcome,
                r.failure_reason,
                r.gateway_reference.as_ref().map(|g| g.as_str()),
            )
            .instrument(span)
            .await
            .map(|applied| Done::Payment(r, applied))
        }
        Decided::Refund(r) => {
            let span = tracing::info_span!(
                "finalize_refund",
                refund_id = %r.refund_id,
                payment_id = %r.payment_id,
                event_id = %r.event_id
            );
            let outcome = RefundOutcome {
                event_id: r.event_id,
                refund_id: r.refund_id,
                payment_id: r.payment_id,
                outcome: r.outcome,
                failure_reason: r.failure_reason,
                gateway_reference: r.gateway_reference.as_ref().map(|g| g.as_str()),
            };
            refunds::finalize(conn, &outcome)
                .instrument(span)
                .await
                .map(|applied| Done::Refund(r, applied))
        }
    }
}

/// Consecutive consumer errors for this long mean the consumer is stuck.
const STUCK_AFTER: Duration = Duration::from_secs(15);
/// How often the consumer checks that someone reads every partition it does not hold. With
/// two instances (the HA topology) this bounds how long a dead instance's partitions go
/// unread on Tansu after its session expires (6 s): a metadata request every 5 s, and a group
/// listing only while this consumer holds fewer than all partitions.
const ASSIGNMENT_CHECK_EVERY: Duration = Duration::from_secs(5);

impl Finalizer {
    pub async fn run(self, mut shutdown: Shutdown) -> Stopped {
        let db_backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut failing_since: Option<std::time::Instant> = None;
        let mut check = tokio::time::interval(ASSIGNMENT_CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.tick().await;
        loop {
            let first = tokio::select! {
                m = self.consumer.recv() => m,
                _ = check.tick() => {
                    if self.partitions_read_by_nobody().await {
                        return Stopped::Unhealthy;
                    }
                    continue;
                }
                _ = shutdown.wait() => break,
            };
            let first = match first {
                Ok(m) => {
                    failing_since = None;
                    m.detach()
                }
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > STUCK_AFTER {
                        tracing::warn!(
                            error = %e,
                            "the Kafka consumer has failed for {STUCK_AFTER:?}; recreating it",
                        );
                        return Stopped::Unhealthy;
                    }
                    tracing::warn!(
                        error = %e,
                        "reading payment results from Kafka failed; retrying",
                    );
                    if !shutdown.sleep(Duration::from_millis(500)).await {
                        break;
                    }
                    continue;
                }
            };
            let mut batch = vec![first];
            while batch.len() < self.batch_size {
                match tokio::time::timeout(Duration::from_millis(2), self.consumer.recv()).await {
                    Ok(Ok(m)) => batch.push(m.detach()),
                    _ => break,
                }
            }
            // Retry the same batch until it is applied; shutdown abandons it uncommitted, to be
            // redelivered to whoever owns the partition next. A refusal by the database that no
            // retry can fix switches to one savepoint per result, which sets the refused one
            // aside (dead letter) and applies the rest.
            let mut attempt = 0;
            let mut mode = Mode::Together;
            loop {
                match self.apply_batch(&batch, mode).await {
                    Ok(()) => break,
                    Err(e) if mode == Mode::Together && refused(&e) => {
                        tracing::warn!(
                            error = %e,
                            messages = batch.len(),
                            "the database refused a payment result; applying the batch one result at a time to set the refused one aside",
                        );
                        mode = Mode::OneByOne;
                    }
                    Err(e) => {
                        tracing::warn!(
                            error = %e,
                            messages = batch.len(),
                            attempt,
                            "applying payment results failed; will retry the batch",
                        );
                        let delay = db_backoff.delay(attempt);
                        attempt += 1;
                        if !shutdown.sleep(delay).await {
                            tracing::info!("result consumer stopped");
                            return Stopped::Shutdown;
                        }
                    }
                }
            }
        }
        tracing::info!("result consumer stopped");
        Stopped::Shutdown
    }

    /// Whether some partition of the results topic is assigned to nobody alive.
    ///
    /// Tansu 0.6.0 can expire a member without a new assignment: seen after the
    /// wallet-service and the broker were killed seconds apart, the group kept a dead
    /// member's partitions assigned to it, the live consumer heartbeated without being told
    /// to rebalance, and two of three partitions went unread. So when this consumer holds
    /// fewer partitions than the topic has, it asks the broker who the members are; alone
    /// in the group, it is recreated (leave, then join), which makes the broker assign
    /// every partition again. With other live members it holds a share, as it should.
    async fn partitions_read_by_nobody(&self) -> bool {
        let consumer = self.consumer.clone();
        let topic = self.topics.results.clone();
        let group = self.group.clone();
        let check = tokio::task::spawn_blocking(
            move || -> rdkafka::error::KafkaResult<Option<(usize, usize)>> {
                let held = consumer.assignment()?.count();
                let timeout = Duration::from_secs(5);
                let metadata = consumer.fetch_metadata(Some(&topic), timeout)?;
                let partitions = metadata
                    .topics()
                    .first()
                    .map_or(0, |t| t.partitions().len());
                if held >= partitions {
                    return Ok(None);
                }
                let groups = consumer.fetch_group_list(Some(&group), timeout)?;
                let members = groups.groups().first().map_or(0, |g| g.members().len());
                Ok((members <= 1).then_some((held, partitions)))
            },
        )
        .await;
        match check {
            Ok(Ok(Some((held, partitions)))) => {
                tracing::warn!(
                    held,
                    partitions,
                    "this consumer is alone in its group but holds only some of the results partitions (the broker kept a dead member's share); rejoining the group",
                );
                true
            }
            Ok(Ok(None)) => false,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "could not check the results partitions' assignment");
                false
            }
            Err(_) => false,
        }
    }

    async fn apply_batch(&self, batch: &[OwnedMessage], mode: Mode) -> anyhow::Result<()> {
        let start = std::time::Instant::now();
        let decoded: Vec<_> = batch
            .iter()
            .map(|m| decode_decided(m.payload().unwrap_or_default()))
            .collect();

        let mut tx = self.pool.begin().await?;
        let mut finalized = Vec::new();
        let mut dead = Vec::new();
        let mut conflicts = Vec::new();
        let mut refunds_done = Vec::new();
        for (msg, d) in batch.iter().zip(&decoded) {
            let d = match d {
                Err(poison) => {
                    dead.push((msg, poison.label(), poison.to_string()));
                    continue;
                }
                Ok(d) => d,
            };
            let applied = match mode {
                Mode::Together => apply_one(&mut tx, d).await?,
                Mode::OneByOne => {
                    let mut savepoint = (&mut tx).begin().await?;
                    match apply_one(&mut savepoint, d).await {
                        Ok(applied) => {
                            savepoint.commit().await?;
                            applied
                        }
                        Err(e) => match refusal(&e) {
                            Some(why) => {
                                savepoint.rollback().await?;
                                dead.push((msg, "refused_by_database", why));
                                continue;
                            }
                            None => return Err(e.into()),
                        },
                    }
                }
            };
            let (r, applied) = match applied {
                Done::Payment(r, applied) => (r, applied),
                Done::Refund(r, applied) => {
                    if let refunds::Applied::UnknownRefund = applied {
                        let why = format!("no refund {}", r.refund_id);
                        dead.push((msg, "unknown_refund", why));
                    } else {
                        refunds_done.push((r, applied));
                    }
                    continue;
                }
            };
            match applied {
                Applied::Finalized {
                    status,
                    pending_for,
                } => finalized.push((r, status, pending_for)),
                Applied::DuplicateEvent => {
                    metrics::counter!("results_duplicates_total", "kind" => "event").increment(1);
                    tracing::info!(
                        payment_id = %r.payment_id,
                        event_id = %r.event_id,
                        "duplicate result ignored: event already applied",
                    );
                }
                Applied::AlreadyFinal {
                    status,
                    gateway_reference,
                } if status == PaymentStatus::from(r.outcome) => {
                    metrics::counter!("results_duplicates_total", "kind" => "payment_final")
                        .increment(1);
                    tracing::info!(
                        payment_id = %r.payment_id,
                        %status,
                        gateway_reference,
                        "result ignored: payment already final with this outcome",
                    );
                }
                Applied::AlreadyFinal {
                    status,
                    gateway_reference,
                } => {
                    let conflict = payments::Conflict {
                        event_id: r.event_id,
                        payment_id: r.payment_id,
                        recorded_status: status,
                        recorded_reference: gateway_reference.as_deref(),
                        reported_outcome: r.outcome,
                        reported_reason: r.failure_reason,
                        reported_reference: r.gateway_reference.as_ref().map(|g| g.as_str()),
                    };
                    payments::record_conflict(&mut tx, &conflict).await?;
                    conflicts.push((r, status, gateway_reference));
                }
                Applied::UnknownPayment => dead.push((
                    msg,
                    "unknown_payment",
                    format!("no payment {}", r.payment_id),
                )),
            }
        }
        // Dead letters are produced before the commit: if producing fails, nothing commits
        // and the batch is retried.
        for (msg, label, why) in &dead {
            self.dead_letter(msg, label, why).await?;
        }
        tx.commit().await?;
        if !finalized.is_empty() || !refunds_done.is_empty() {
            self.doorbell.ring(Channel::Events);
        }
        metrics::counter!("results_consumed_total").increment(batch.len() as u64);

        for (r, status, pending_for) in &finalized {
            let reason = r.failure_reason.map(|f| f.as_str()).unwrap_or("");
            metrics::counter!(
                "payments_finalized_total",
                "outcome" => status.as_str(),
                "reason" => reason
            )
            .increment(1);
            metrics::histogram!("payment_finalization_seconds")
                .record(pending_for.to_std().unwrap_or_default().as_secs_f64());
            tracing::info!(payment_id = %r.payment_id, %status, reason, "payment finalized");
        }
        for (r, applied) in &refunds_done {
            log_refund(r, applied);
        }
        for (r, status, recorded_reference) in &conflicts {
            metrics::counter!("payment_outcome_conflicts_total").increment(1);
            tracing::error!(
                payment_id = %r.payment_id,
                event_id = %r.event_id,
                recorded_status = %status,
                recorded_reference = recorded_reference.as_deref().unwrap_or(""),
                reported_outcome = r.outcome.as_str(),
                reported_reason = r.failure_reason.map(|f| f.as_str()).unwrap_or(""),
                reported_reference = r.gateway_reference.as_ref().map(|g| g.as_str()).unwrap_or(""),
                "CONFLICT: the gateway reports an outcome that contradicts the payment's final status; nothing was changed, an operator must reconcile it (payment_outcome_conflicts)"
            );
        }
        self.commit_offsets(batch)?;
        metrics::histogram!("results_batch_duration_seconds").record(start.elapsed().as_secs_f64());
        Ok(())
    }

    async fn dead_letter(&self, msg: &OwnedMessage, label: &str, why: &str) -> anyhow::Result<()> {
        let key = msg.key().unwrap_or_default();
        // The source coordinates identify a dead letter: a crash after producing it but
        // before committing the offset produces it again, and readers dedupe on them.
        let (partition, offset) = (msg.partition().to_string(), msg.offset().to_string());
        let headers = shared::kafka::headers([
            ("dlq_reason", label),
            ("dlq_detail", why),
            ("source_topic", msg.topic()),
            ("source_partition", &partition),
            ("source_offset", &offset),
        ]);
        let record = FutureRecord::to(&self.topics.results_dlq)
            .key(key)
            .payload(msg.payload().unwrap_or_default())
            .headers(headers);
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("dead-lettering failed: {e}"))?;
        metrics::counter!("results_dead_lettered_total", "reason" => label.to_owned()).increment(1);
        tracing::warn!(
            key = %String::from_utf8_lossy(key),
            partition = msg.partition(),
            offset = msg.offset(),
            reason = label,
            detail = why,
            "payment result dead-lettered"
        );
        Ok(())
    }

    fn commit_offsets(&self, batch: &[OwnedMessage]) -> anyhow::Result<()> {
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for m in batch {
            let e = next
                .entry((m.topic().to_owned(), m.partition()))
                .or_default();
            *e = (*e).max(m.offset() + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            tpl.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
        }
        self.consumer.commit(&tpl, CommitMode::Async)?;
        Ok(())
    }
}

/// Metrics and the log line for one applied refund result.
fn log_refund(r: &RefundResult, applied: &refunds::Applied) {
    let reason = r.failure_reason.map(|f| f.as_str()).unwrap_or("");
    match applied {
        refunds::Applied::Finalized {
            status,
            amount,
            pending_for,
        } => {
            metrics::counter!(
                "refunds_finalized_total",
                "outcome" => status.as_str(),
                "reason" => reason
            )
            .increment(1);
            metrics::histogram!("refund_finalization_seconds")
                .record(pending_for.to_std().unwrap_or_default().as_secs_f64());
            if *status == PaymentStatus::Succeeded {
                metrics::counter!("refunds_refunded_minor_units_total").increment(*amount as u64);
                tracing::info!(
                    refund_id = %r.refund_id,
                    payment_id = %r.payment_id,
                    amount,
                    "refund succeeded; wallet credited",
                );
            } else {
                tracing::info!(
                    refund_id = %r.refund_id,
                    payment_id = %r.payment_id,
                    reason,
                    "refund failed; its reservation on the payment is released",
                );
            }
        }
        refunds::Applied::DuplicateEvent => {
            metrics::counter!("results_duplicates_total", "kind" => "event").increment(1);
        }
        refunds::Applied::AlreadyFinal { status } if *status == PaymentStatus::from(r.outcome) => {
            metrics::counter!("results_duplicates_total", "kind" => "refund_final").increment(1);
        }
        refunds::Applied::AlreadyFinal { status } => {
            metrics::counter!("refund_outcome_conflicts_total").increment(1);
            tracing::error!(
                refund_id = %r.refund_id,
                payment_id = %r.payment_id,
                event_id = %r.event_id,
                recorded_status = %status,
                reported_outcome = r.outcome.as_str(),
                reported_reason = reason,
                "CONFLICT: the gateway reports a refund outcome that contradicts the refund's final status; nothing was changed, an operator must reconcile it with the gateway"
            );
        }
        refunds::Applied::UnknownRefund => {}
    }
}
