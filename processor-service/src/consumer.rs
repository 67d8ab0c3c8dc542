//! Consumes `payment.requested` and `refund.requested` from RabbitMQ, charges (or refunds)
//! at the gateway, publishes the result to Kafka, and only then acks.
//!
//! Manual acks and a prefetch equal to the concurrency bound the work in flight. A message is
//! acked only after Kafka confirmed the result, so a crash at any point redelivers it; the
//! gateway's idempotency key (the payment id) makes the second charge a replay. Poison
//! messages are rejected without requeue and RabbitMQ dead-letters them.

use crate::gateway::{Decision, GatewayClient, RefundDecision};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use rdkafka::producer::{FutureProducer, FutureRecord};
use shared::amqp::AmqpNodes;
use shared::backoff::Backoff;
use shared::events::{
    decode_request, PaymentRequested, PaymentResult, Poison, RefundRequested, RefundResult,
    Request, PAYMENT_REQUESTED,
};
use shared::ids::{EventId, PaymentId};
use shared::shutdown::Shutdown;
use shared::status::{FailureReason, Outcome};
use shared::topology::{header_str, AmqpTopology, KafkaTopics};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tracing::Instrument;

pub struct Processor {
    /// The RabbitMQ node or nodes (`AMQP_URL`), tried in turn.
    pub amqp: AmqpNodes,
    pub topology: AmqpTopology,
    pub topics: KafkaTopics,
    pub gateway: Arc<GatewayClient>,
    pub producer: FutureProducer,
    pub concurrency: u16,
    pub drain_timeout: Duration,
    pub connected: Arc<AtomicBool>,
}

/// Describes the consumer's metrics and starts their series at 0.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "requests_consumed_total",
        "payment.requested messages received from RabbitMQ."
    );
    metrics::describe_counter!(
        "requests_dead_lettered_total",
        "Poison payment requests rejected to the dead-letter queue, by reason."
    );
    metrics::describe_counter!(
        "requests_requeued_total",
        "Payment requests handed back to RabbitMQ because their outcome is not known yet."
    );
    metrics::describe_counter!(
        "results_published_total",
        "Results confirmed by Kafka, by outcome."
    );
    metrics::describe_counter!(
        "results_publish_failures_total",
        "Kafka publishes that failed and were retried."
    );
    metrics::describe_histogram!(
        "results_publish_duration_seconds",
        metrics::Unit::Seconds,
        "Time for Kafka to confirm one result."
    );
    metrics::describe_histogram!(
        "request_processing_duration_seconds",
        metrics::Unit::Seconds,
        "Time from receiving a payment request to acking it."
    );
    metrics::describe_gauge!("requests_in_flight", "Payment requests being processed.");
    // Series exist from the start (at 0), so rate() and alerts see their first increment.
    for name in [
        "requests_consumed_total",
        "requests_requeued_total",
        "results_publish_failures_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    // Every reason `decode_request` can give, by the label it is counted under.
    for poison in [
        Poison::NotJson(String::new()),
        Poison::WrongType(None),
        Poison::UnsupportedVersion(None),
        Poison::Invalid {
            kind: PAYMENT_REQUESTED,
            detail: String::new(),
        },
    ] {
        metrics::counter!("requests_dead_lettered_total", "reason" => poison.label()).increment(0);
    }
    for outcome in [Outcome::Succeeded, Outcome::Failed] {
        metrics::counter!("results_published_total", "outcome" => outcome.as_str()).increment(0);
    }
}

impl Processor {
    pub async fn run(self: Arc<Self>, mut shutdown: Shutdown) {
        let backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut attempt = 0;
        while !shutdown.is_triggered() {
            match self.consume(&mut shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    self.connected.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %e, attempt, "lost RabbitMQ; reconnecting");
                }
            }
            let delay = backoff.delay(attempt);
            attempt = attempt.saturating_add(1).min(10);
            if !shutdown.sleep(delay).await {
                break;
            }
        }
        tracing::info!("payment request consumer stopped");
    }

    /// One connection's lifetime: consume until shutdown (Ok) or a broker failure (Err).
    async fn consume(self: &Arc<Self>, shutdown: &mut Shutdown) -> anyhow::Result<()> {
        let conn = self.amqp.connect().await?;
        let channel = conn.create_channel().await?;
        self.topology.declare(&channel).await?;
        channel
            .basic_qos(self.concurrency, BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                self.topology.queue.as_str().into(),
                "processor-service".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.connected.store(true, Ordering::Relaxed);
        tracing::info!(
            queue = %self.topology.queue,
            prefetch = self.concurrency,
            "consuming payment requests",
        );

        let mut in_flight = JoinSet::new();
        let outcome = loop {
            tokio::select! {
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let this = self.clone();
                        in_flight.spawn(async move { this.handle(delivery).await });
                    }
                    Some(Err(e)) => break Err(e.into()),
                    None => break Err(anyhow::anyhow!("consumer stream ended")),
                },
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                _ = shutdown.wait() => break Ok(()),
            }
        };
        // Drain: stop taking new messages, let the ones in hand finish (their acks need the
        // channel open), then close. Whatever does not finish in time is redelivered.
        self.connected.store(false, Ordering::Relaxed);
        let _ = channel
            .basic_cancel("processor-service".into(), Default::default())
            .await;
        let pending = in_flight.len();
        if pending > 0 {
            tracing::info!(pending, "draining in-flight payment requests");
        }
        let drained = tokio::time::timeout(self.drain_timeout, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = in_flight.len(),
                "drain timeout: unfinished requests will be redelivered"
            );
            in_flight.abort_all();
        }
        let _ = conn.close(200, "processor stopping".into()).await;
        outcome
    }

    async fn handle(&self, delivery: Delivery) {
        metrics::counter!("requests_consumed_total").increment(1);
        let _in_flight = InFlight::start();
        let start = Instant::now();
        let headers = delivery.properties.headers().as_ref();
        let traceparent = shared::trace::child_of(header_str(headers, "traceparent").as_deref());
        let request = match decode_request(&delivery.data) {
            Ok(Request::Payment(r)) => r,
            Ok(Request::Refund(r)) => {
                self.handle_refund(delivery, r, &traceparent).await;
                metrics::histogram!("request_processing_duration_seconds")
                    .record(start.elapsed().as_secs_f64());
                return;
            }
            Err(poison) => {
                tracing::warn!(
                    payment_id = header_str(headers, "payment_id").unwrap_or_default(),
                    reason = poison.label(),
                    detail = %poison,
                    "poison payment request dead-lettered"
                );
                metrics::counter!("requests_dead_lettered_total", "reason" => poison.label())
                    .increment(1);
                let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
                return;
            }
        };
        let payment_id = request.payment.id;
        // Every line logged while charging and publishing (the gateway's retries included)
        // names the payment and its trace.
        let span = tracing::info_span!("payment", %payment_id, traceparent = %traceparent);
        async {
            let payment_id = request.payment.id;
            let decision = self.gateway.charge(&request.payment).await;
            metrics::counter!("gateway_decisions_total", "decision" => decision.label())
                .increment(1);
            match result_for(&request, decision) {
                Ok(result) => {
                    let payload = serde_json::to_vec(&result).expect("a result serializes");
                    self.publish(payment_id, &payload, result.outcome, &traceparent)
                        .await;
                    if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                        // The result is in Kafka; a redelivery replays the charge and the
                        // wallet ignores the second result.
                        tracing::warn!(
                            %payment_id,
                            error = %e,
                            "ack failed after publishing; the request will be redelivered",
                        );
                    }
                    tracing::info!(
                        %payment_id,
                        outcome = result.outcome.as_str(),
                        traceparent,
                        "payment result published",
                    );
                }
                Err(why) => {
                    // Keep the hold; try again later.
                    shared::warn_throttled!(
                        %payment_id,
                        reason = %why,
                        "charge outcome unknown; payment stays pending and the request is requeued",
                    );
                    requeue(delivery).await;
                }
            }
        }
        .instrument(span)
        .await;
        metrics::histogram!("request_processing_duration_seconds")
            .record(start.elapsed().as_secs_f64());
    }

    /// Refunds at the gateway, publishes the result, then acks; an unknown outcome leaves
    /// the refund pending and requeues the request.
    async fn handle_refund(&self, delivery: Delivery, request: RefundRequested, traceparent: &str) {
        let refund = &request.refund;
        let span = tracing::info_span!(
            "refund",
            refund_id = %refund.id,
            payment_id = %refund.payment_id,
            traceparent = %traceparent
        );
        async {
            let decision = self.gateway.refund(refund).await;
            metrics::counter!("gateway_refund_decisions_total", "decision" => decision.label())
                .increment(1);
            match refund_result_for(&request, decision) {
                Ok(result) => {
                    let payload = serde_json::to_vec(&result).expect("a result serializes");
                    self.publish(refund.payment_id, &payload, result.outcome, traceparent)
                        .await;
                    if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                        tracing::warn!(
                            refund_id = %refund.id,
                            error = %e,
                            "ack failed after publishing; the refund request will be redelivered",
                        );
                    }
                    tracing::info!(
                        refund_id = %refund.id,
                        payment_id = %refund.payment_id,
                        outcome = result.outcome.as_str(),
                        reason = result.failure_reason.map(|r| r.as_str()).unwrap_or(""),
                        "refund result published",
                    );
                }
                Err(why) => {
                    // Not throttled: refunds are few (an operator's), and the runbook finds
                    // a stuck one by this line.
                    tracing::warn!(
                        refund_id = %refund.id,
                        reason = %why,
                        "refund outcome unknown; refund stays pending and the request is requeued",
                    );
                    requeue(delivery).await;
                }
            }
        }
        .instrument(span)
        .await;
    }

    /// Publishes until Kafka confirms: the RabbitMQ message is not acked before that. The
    /// key is the payment id, so a payment's results (its charge's and its refunds') stay in
    /// order on one partition.
    async fn publish(
        &self,
        payment_id: PaymentId,
        payload: &[u8],
        outcome: Outcome,
        traceparent: &str,
    ) {
        let key = payment_id.to_string();
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut attempt = 0;
        loop {
            let start = Instant::now();
            let headers = shared::kafka::headers([
                ("traceparent", traceparent),
                ("payment_id", key.as_str()),
            ]);
            let record = FutureRecord::to(&self.topics.results)
                .key(&key)
                .payload(payload)
                .headers(headers);
            match self.producer.send(record, Duration::from_secs(10)).await {
                Ok(_) => {
                    metrics::histogram!("results_publish_duration_seconds")
                        .record(start.elapsed().as_secs_f64());
                    let outcome = outcome.as_str();
                    metrics::counter!("results_published_total", "outcome" => outcome).increment(1);
                    return;
                }
                Err((e, _)) => {
                    metrics::counter!("results_publish_failures_total").increment(1);
                    // Every message in flight retries through a Kafka outage: one line
                    // per period says so, with how many were held back.
                    shared::warn_throttled!(
                        %payment_id,
                        error = %e,
                        attempt,
                        "Kafka did not confirm the result; retrying",
                    );
                    tokio::time::sleep(backoff.delay(attempt)).await;
                    attempt = (attempt + 1).min(10);
                }
            }
        }
    }
}

/// How long a request whose outcome is unknown waits before it goes back to the queue, by
/// how often it was delivered before. The quorum queue dead-letters a request on its 10th
/// delivery (`x-delivery-limit`); a fixed second between them spent those in about 25 s
/// while the gateway kept a key "in progress", and put a legitimate request in the
/// dead-letter queue (seen in the chaos suite). Doubling from 1 s up to 15 s spreads ten
/// deliveries over at least 50 s; the reconciler sends the payment again meanwhile anyway.
const REQUEUE_BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(15));

/// Hands a request whose outcome is unknown back to RabbitMQ, after backing off so that a
/// redelivery loop neither hammers a struggling gateway nor reaches the delivery limit.
async fn requeue(delivery: Delivery) {
    metrics::counter!("requests_requeued_total").increment(1);
    let deliveries = delivery_count(delivery.properties.headers().as_ref());
    tokio::time::sleep(REQUEUE_BACKOFF.delay(deliveries)).await;
    let _ = delivery
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await;
}

/// Earlier deliveries of a message, from the `x-delivery-count` header quorum queues add on
/// redelivery (absent on the first delivery).
fn delivery_count(headers: Option<&FieldTable>) -> u32 {
    use lapin::types::AMQPValue;
    let n: i64 = match headers.and_then(|h| h.inner().get("x-delivery-count")) {
        Some(AMQPValue::ShortShortInt(n)) => (*n).into(),
        Some(AMQPValue::ShortShortUInt(n)) => (*n).into(),
        Some(AMQPValue::ShortInt(n)) => (*n).into(),
        Some(AMQPValue::ShortUInt(n)) => (*n).into(),
        Some(AMQPValue::LongInt(n)) => (*n).into(),
        Some(AMQPValue::LongUInt(n)) => (*n).into(),
        Some(AMQPValue::LongLongInt(n)) => *n,
        _ => 0,
    };
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

/// The result to publish for a refund decision, or why there is none yet.
pub fn refund_result_for(
    request: &RefundRequested,
    decision: RefundDecision,
) -> Result<RefundResult, String> {
    let (outcome, reason, reference) = match decision {
        RefundDecision::Refunded { reference } => (Outcome::Succeeded, None, Some(reference)),
        RefundDecision::Declined { reference } => (
            Outcome::Failed,
            Some(FailureReason::Declined),
            Some(reference),
        ),
        RefundDecision::Refused(_) => (Outcome::Failed, Some(FailureReason::NotRefundable), None),
        RefundDecision::Unknown(why) => return Err(why),
    };
    Ok(RefundResult::new(
        EventId::new(),
        &request.refund,
        outcome,
        reason,
        reference,
    ))
}

/// The result to publish for a decision, or why there is none yet.
pub fn result_for(request: &PaymentRequested, decision: Decision) -> Result<PaymentResult, String> {
    let id = request.payment.id;
    match decision {
        Decision::Charged { reference } => Ok(PaymentResult::new(
            EventId::new(),
            id,
            Outcome::Succeeded,
            None,
            Some(reference),
        )),
        Decision::Declined { reference } => Ok(PaymentResult::new(
            EventId::new(),
            id,
            Outcome::Failed,
            Some(FailureReason::Declined),
            Some(reference),
        )),
        Decision::NotCharged => Ok(PaymentResult::new(
            EventId::new(),
            id,
            Outcome::Failed,
            Some(FailureReason::GatewayUnavailable),
            None,
        )),
        Decision::Unknown(why) => Err(why),
    }
}

/// One request counted in `requests_in_flight` until dropped: also when its task is aborted
/// (a drain that timed out), which a decrement at the end of `handle` would miss, leaving
/// the gauge one higher after each such reconnect.
struct InFlight;

impl InFlight {
    fn start() -> Self {
        metrics::gauge!("requests_in_flight").increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("requests_in_flight").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::AMQPValue;

    #[test]
    fn the_delivery_count_is_read_from_any_integer_header() {
        assert_eq!(delivery_count(None), 0);
        let mut h = FieldTable::default();
        assert_eq!(delivery_count(Some(&h)), 0);
        h.insert("x-delivery-count".into(), AMQPValue::LongLongInt(3));
        assert_eq!(delivery_count(Some(&h)), 3);
        h.insert("x-delivery-count".into(), AMQPValue::LongInt(7));
        assert_eq!(delivery_count(Some(&h)), 7);
        h.insert("x-delivery-count".into(), AMQPValue::LongLongInt(-1));
        assert_eq!(delivery_count(Some(&h)), 0);
    }

    #[test]
    fn ten_deliveries_with_unknown_outcomes_span_more_than_fifty_seconds() {
        // Backoff::delay waits at least half of each ceiling.
        let least: Duration = (0..10).map(|n| REQUEUE_BACKOFF.ceiling(n) / 2).sum();
        assert!(least >= Duration::from_secs(50), "{least:?}");
        assert_eq!(REQUEUE_BACKOFF.ceiling(0), Duration::from_secs(1));
        assert_eq!(REQUEUE_BACKOFF.ceiling(9), Duration::from_secs(15));
    }
}
