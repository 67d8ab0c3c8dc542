//! Relays payment requests from the outbox to RabbitMQ.
//!
//! A batch is claimed with `FOR UPDATE SKIP LOCKED` (so several dispatchers share the work
//! without publishing the same row twice), published persistent with publisher confirms, and
//! marked published only for the rows the broker confirmed, in the same transaction that
//! holds the claim. A crash before that commit leaves the rows unpublished: they are sent
//! again (at-least-once) and the consumers deduplicate.

use crate::config::{BrokerConfig, DispatcherConfig};
use crate::outbox::{Batch, Chime, Next, Wakeup};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};
use shared::amqp::AmqpNodes;
use shared::backoff::Backoff;
use shared::shutdown::Shutdown;
use shared::topology::{self, AmqpTopology};
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A payment request waiting in the outbox.
struct Unpublished {
    id: Uuid,
    aggregate_id: Uuid,
    event_type: String,
    payload: serde_json::Value,
    traceparent: Option<String>,
}

pub struct Dispatcher {
    pub pool: PgPool,
    /// The RabbitMQ node or nodes (`AMQP_URL`), tried in turn.
    pub amqp: AmqpNodes,
    pub topology: AmqpTopology,
    pub config: DispatcherConfig,
    /// True while connected to RabbitMQ with the topology declared (for `/readyz`).
    pub connected: Arc<AtomicBool>,
    /// This process's doorbell for payment requests, when its writers ring it.
    pub chime: Option<Chime>,
}

#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
}

pub fn describe_metrics() {
    metrics::describe_counter!(
        "outbox_published_total",
        "Outbox events published and confirmed by RabbitMQ."
    );
    metrics::describe_counter!(
        "outbox_publish_failures_total",
        "Outbox publishes the broker refused or did not confirm."
    );
    metrics::describe_histogram!(
        "outbox_publish_batch_duration_seconds",
        metrics::Unit::Seconds,
        "Time to publish and confirm one outbox batch."
    );
    metrics::describe_gauge!(
        "outbox_backlog",
        format!(
            "Outbox events not yet published, by channel (payments, events, alerts), counted up to {}.",
            super::BACKLOG_COUNTED_UP_TO
        )
    );
    metrics::describe_gauge!(
        "outbox_oldest_unpublished_age_seconds",
        metrics::Unit::Seconds,
        "Age of the oldest unpublished outbox event, by channel."
    );
}

impl Dispatcher {
    pub fn new(pool: PgPool, brokers: &BrokerConfig, config: DispatcherConfig) -> Self {
        Self {
            pool,
            amqp: AmqpNodes::parse(&brokers.amqp_url),
            topology: AmqpTopology::with_prefix(&brokers.broker_prefix),
            config,
            connected: Default::default(),
            chime: None,
        }
    }

    /// Wakes on this process's doorbell (see [`crate::outbox::Doorbell`]).
    pub fn with_chime(mut self, chime: Chime) -> Self {
        self.chime = Some(chime);
        self
    }

    /// Runs until shutdown, reconnecting to RabbitMQ and PostgreSQL as needed.
    pub async fn run(mut self, mut shutdown: Shutdown) {
        let mut wakeup = Wakeup::new(
            self.pool.clone(),
            crate::outbox::Channel::Payments.notify_channel(),
            self.config.outbox_poll_interval,
        )
        .with_linger(self.config.outbox_linger)
        .with_chime(self.chime.take());
        let backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut attempt = 0;
        while !shutdown.is_triggered() {
            match self.connect().await {
                Ok((conn, channel)) => {
                    attempt = 0;
                    self.connected.store(true, Ordering::Relaxed);
                    tracing::info!(
                        exchange = %self.topology.exchange,
                        "outbox dispatcher connected to RabbitMQ",
                    );
                    let reason = self
                        .publish_while_connected(&channel, &mut wakeup, &mut shutdown)
                        .await;
                    self.connected.store(false, Ordering::Relaxed);
                    let _ = conn.close(200, "dispatcher stopping".into()).await;
                    match reason {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(
                                error = %e,
                                "outbox dispatcher lost RabbitMQ; reconnecting"
                            )
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        attempt,
                        "outbox dispatcher cannot reach RabbitMQ; retrying",
                    );
                }
            }
            let delay = backoff.delay(attempt);
            attempt = attempt.saturating_add(1);
            if !shutdown.sleep(delay).await {
                break;
            }
        }
        tracing::info!("outbox dispatcher stopped");
    }

    async fn connect(&self) -> Result<(Connection, Channel), lapin::Error> {
        let conn = self.amqp.connect().await?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        self.topology.declare(&channel).await?;
        Ok((conn, channel))
    }

    /// Publishes batches until shutdown (Ok) or a broker failure (Err).
    async fn publish_while_connected(
        &self,
        channel: &Channel,
        wakeup: &mut Wakeup,
        shutdown: &mut Shutdown,
    ) -> anyhow::Result<()> {
        let db_backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut db_failures = 0;
        let refusal_backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut refusals = 0;
        while !shutdown.is_triggered() {
            wakeup.before_batch();
            match self.publish_batch(channel).await {
                Ok(batch) => {
                    db_failures = 0;
                    match batch.next(self.config.outbox_batch_size) {
                        Next::Again => {
                            refusals = 0;
                            continue;
                        }
                        Next::Wait => refusals = 0,
                        Next::BackOff => {
                            let delay = refusal_backoff.delay(refusals);
                            refusals = refusals.saturating_add(1);
                            tracing::warn!(
                                refused = batch.refused,
                                of = batch.claimed,
                                retry_in_ms = delay.as_millis() as u64,
                                "RabbitMQ refused or returned payment requests (queue full or \
                                 not bound?); they stay in the outbox and are offered again",
                            );
                            if !shutdown.sleep(delay).await {
                                return Ok(());
                            }
                            continue;
                        }
                    }
                }
                Err(BatchError::Broker(e)) => return Err(e.into()),
                Err(BatchError::Db(e)) => {
                    tracing::warn!(
                        error = %e,
                        "outbox dispatcher cannot read the outbox; retrying",
                    );
                    wakeup.reset();
                    let delay = db_backoff.delay(db_failures);
                    db_failures += 1;
                    if !shutdown.sleep(delay).await {
                        return Ok(());
                    }
                    continue;
                }
            }
            if !wakeup.wait(shutdown).await {
                return Ok(());
            }
            if !channel.status().connected() {
                return Err(anyhow::anyhow!("channel closed"));
            }
        }
        Ok(())
    }

    /// Claims, publishes and marks one batch.
    async fn publish_batch(&self, channel: &Channel) -> Result<Batch, BatchError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query_as!(
            Unpublished,
            "SELECT id, aggregate_id, event_type, payload, traceparent FROM outbox
             WHERE published_at IS NULL AND channel = 'payments'
             ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
            self.config.outbox_batch_size,
        )
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(Batch::default());
        }
        let start = Instant::now();
        let mut pending = Vec::with_capacity(rows.len());
        for Unpublished {
            id,
            aggregate_id,
            event_type,
            payload,
            traceparent,
        } in &rows
        {
            let body = serde_json::to_vec(payload).expect("a JSON value serializes");
            let traceparent = traceparent
                .clone()
                .unwrap_or_else(shared::trace::new_traceparent);
            let headers = topology::headers([
                ("traceparent", traceparent.as_str()),
                ("payment_id", aggregate_id.to_string().as_str()),
            ]);
            let properties = BasicProperties::default()
                .with_delivery_mode(2) // persistent
                .with_content_type("application/json".into())
                .with_message_id(id.to_string().into())
                .with_correlation_id(aggregate_id.to_string().into())
                .with_type(event_type.as_str().into())
                .with_headers(headers);
            let confirm = channel
                .basic_publish(
                    self.topology.exchange.as_str().into(),
                    self.topology.routing_key_for(event_type).into(),
                    // Mandatory: an unroutable message comes back instead of vanishing.
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body,
                    properties,
                )
                .await?;
            pending.push((*id, *aggregate_id, confirm));
        }
        let mut published = Vec::with_capacity(pending.len());
        let mut failed = Vec::new();
        for (id, payment_id, confirm) in pending {
            match confirm.await {
                Ok(lapin::Confirmation::Ack(None)) => {
                    tracing::debug!(%payment_id, event_id = %id, "request published");
                    published.push(id);
                }
                Ok(_) => {
                    tracing::debug!(%payment_id, event_id = %id, "request refused or returned");
                    failed.push(id);
                }
                Err(e) => return Err(e.into()),
            }
        }
        sqlx::query!(
            "UPDATE outbox SET published_at = now(), attempts = attempts + 1 WHERE id = ANY($1)",
            &published,
        )
        .execute(&mut *tx)
        .await?;
        if !failed.is_empty() {
            sqlx::query!(
                "UPDATE outbox SET attempts = attempts + 1, last_error = 'nacked or returned by broker'
                 WHERE id = ANY($1)",
                &failed,
            )
            .execute(&mut *tx)
            .await?;
            metrics::counter!("outbox_publish_failures_total").increment(failed.len() as u64);
        }
        tx.commit().await?;
        metrics::counter!("outbox_published_total").increment(published.len() as u64);
        metrics::histogram!("outbox_publish_batch_duration_seconds")
            .record(start.elapsed().as_secs_f64());
        Ok(Batch {
            claimed: rows.len(),
            refused: failed.len(),
        })
    }
}
