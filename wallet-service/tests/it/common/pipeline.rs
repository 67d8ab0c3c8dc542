//! Pipeline pieces for tests that run more than the API: an in-memory gateway, a processor,
//! direct access to the queues and topics.

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use sqlx::PgPool;
use std::time::{Duration, Instant};

use super::{amqp_url, kafka_brokers};

/// A gateway of its own, in memory; built field by field, so nothing of the running
/// system's environment (.run/env) leaks in.
pub async fn gateway(latency_ms: u64) -> mock_gateway::Running {
    let cfg = mock_gateway::Config {
        bind: "127.0.0.1:0".parse().unwrap(),
        metrics_bind: "127.0.0.1:0".parse().unwrap(),
        latency_ms,
        decline_rate: 0.0,
        error_rate: 0.0,
        seed: Some(42),
        data_file: None,
        retention_secs: 604_800,
        retention_interval_secs: 60,
    };
    mock_gateway::spawn(cfg).await.expect("gateway starts")
}

pub struct Processor {
    trigger: shared::shutdown::Trigger,
    running: processor_service::Running,
}

pub async fn processor(prefix: &str, gateway_url: &str) -> Processor {
    processor_with(prefix, gateway_url, 1000, 3).await
}

pub async fn processor_with(
    prefix: &str,
    gateway_url: &str,
    timeout_ms: u64,
    attempts: u32,
) -> Processor {
    // Field by field, so nothing of the environment leaks in; the rest are the defaults.
    let cfg = processor_service::config::Config {
        bind: "127.0.0.1:0".into(),
        metrics_bind: "127.0.0.1:0".into(),
        amqp_url: amqp_url(),
        kafka_brokers: kafka_brokers(),
        gateway_url: gateway_url.into(),
        gateway_timeout: Duration::from_millis(timeout_ms),
        gateway_attempts: attempts,
        gateway_backoff: Duration::from_millis(20),
        concurrency: 64,
        drain_timeout: Duration::from_millis(20_000),
        broker_prefix: prefix.into(),
    };
    let (trigger, shutdown) = shared::shutdown::channel();
    let running = processor_service::start(cfg, shared::telemetry::install_metrics(), shutdown)
        .await
        .expect("processor starts");
    Processor { trigger, running }
}

impl Processor {
    pub async fn stop(self) {
        self.trigger.fire();
        tokio::time::timeout(Duration::from_secs(30), self.running.wait())
            .await
            .expect("processor drains");
    }
}

pub async fn gateway_stats(gw: &mock_gateway::Running) -> Value {
    reqwest::get(gw.url("/v1/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub async fn pending_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM payments WHERE status = 'pending'")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A channel on a new RabbitMQ connection (kept alongside, so it stays open).
pub async fn amqp_channel() -> (Connection, Channel) {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    (conn, channel)
}

/// Messages ready in `queue`, by a passive declare (which closes the channel if the queue
/// does not exist).
pub async fn queue_len(channel: &Channel, queue: &str) -> lapin::Result<u32> {
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(q.message_count())
}

/// Raw bytes onto the results topic under `key`, as the processor would publish a result.
pub async fn send_result(producer: &FutureProducer, topic: &str, key: &str, payload: &[u8]) {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(10),
        )
        .await
        .expect("delivered");
}

/// Every message on `topics` (all partitions, from the beginning up to the high watermark
/// taken now), as (key, payload, partition).
pub async fn read_topics(topics: &[&str]) -> Vec<(String, Value, i32)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = shared::topology::kafka_config(&kafka_brokers())
            .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        let mut remaining = 0;
        let mut ends = std::collections::HashMap::new();
        for topic in &topics {
            let md = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .unwrap();
            for p in md.topics()[0].partitions() {
                let (low, high) = consumer
                    .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                    .unwrap();
                if high > low {
                    tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Offset(low))
                        .unwrap();
                    ends.insert((topic.clone(), p.id()), high);
                    remaining += high - low;
                }
            }
        }
        let mut out = Vec::new();
        if remaining == 0 {
            return out;
        }
        consumer.assign(&tpl).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while (out.len() as i64) < remaining {
            assert!(
                Instant::now() < deadline,
                "read {} of {remaining} messages",
                out.len()
            );
            let Some(m) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let m = m.unwrap();
            if m.offset() >= ends[&(m.topic().to_owned(), m.partition())] {
                continue;
            }
            out.push((
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                serde_json::from_slice(m.payload().unwrap_or_default()).unwrap(),
                m.partition(),
            ));
        }
        out
    })
    .await
    .unwrap()
}
