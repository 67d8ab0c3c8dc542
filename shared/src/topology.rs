//! Names and declarations of the broker objects the pipeline uses.
//!
//! Both services declare what they touch at start (declarations are idempotent), so either
//! can start first. Names default to the public contract; tests use a prefix to get a
//! private copy of the topology on the shared brokers.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::ClientConfig;

/// How many times RabbitMQ redelivers a message before dead-lettering it.
pub const DELIVERY_LIMIT: i32 = 10;

/// RabbitMQ objects of the request hop.
#[derive(Debug, Clone)]
pub struct AmqpTopology {
    pub exchange: String,
    pub routing_key: String,
    /// Refund requests share the exchange and the queue under their own routing key.
    pub refund_routing_key: String,
    pub queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
}

impl Default for AmqpTopology {
    fn default() -> Self {
        Self::with_prefix("")
    }
}

impl AmqpTopology {
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            exchange: format!("{prefix}payments"),
            routing_key: crate::events::PAYMENT_REQUESTED.into(),
            refund_routing_key: crate::events::REFUND_REQUESTED.into(),
            queue: format!("{prefix}payments.requested"),
            dead_letter_exchange: format!("{prefix}payments.dlx"),
            dead_letter_queue: format!("{prefix}payments.requested.dlq"),
        }
    }

    /// The routing key of an outbox row of type `event_type`.
    pub fn routing_key_for(&self, event_type: &str) -> &str {
        if event_type == crate::events::REFUND_REQUESTED {
            &self.refund_routing_key
        } else {
            &self.routing_key
        }
    }

    /// Declares exchange, quorum queue, dead-letter exchange and queue, and the bindings.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.dead_letter_exchange.as_str().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;

        let queue_opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let mut dlq_args = FieldTable::default();
        dlq_args.insert("x-queue-type".into(), long_string("quorum"));
        channel
            .queue_declare(self.dead_letter_queue.as_str().into(), queue_opts, dlq_args)
            .await?;
        channel
            .queue_bind(
                self.dead_letter_queue.as_str().into(),
                self.dead_letter_exchange.as_str().into(),
                self.dead_letter_queue.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), long_string("quorum"));
        args.insert(
            "x-dead-letter-exchange".into(),
            long_string(&self.dead_letter_exchange),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            long_string(&self.dead_letter_queue),
        );
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(DELIVERY_LIMIT),
        );
        channel
            .queue_declare(self.queue.as_str().into(), queue_opts, args)
            .await?;
        for key in [&self.routing_key, &self.refund_routing_key] {
            channel
                .queue_bind(
                    self.queue.as_str().into(),
                    self.exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.to_owned()))
}

/// Reads a string header (either AMQP string type) from a message's headers.
pub fn header_str(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Builds a header table of string values.
pub fn headers<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in pairs {
        table.insert(k.into(), long_string(v));
    }
    table
}

/// Kafka's own default retention, 7 days.
pub const DEFAULT_RETENTION_MS: i64 = 7 * 24 * 3_600_000;

/// A topic whose `retention.ms` on the broker is not the configured one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionDrift {
    pub topic: String,
    /// `None`: the topic has no `retention.ms` of its own (the broker's default applies).
    pub on_broker: Option<String>,
}

impl std::fmt::Display for RetentionDrift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.on_broker {
            Some(ms) => write!(f, "{} (retention.ms={ms})", self.topic),
            None => write!(f, "{} (the broker's default retention)", self.topic),
        }
    }
}

/// Kafka topics of the result hop.
#[derive(Debug, Clone)]
pub struct KafkaTopics {
    pub results: String,
    pub results_dlq: String,
    /// `payment.finalized` and `wallet.deposited` for other systems (key = wallet id).
    pub events: String,
    /// `payment.alert` for large payments (key = wallet id).
    pub alerts: String,
    pub partitions: i32,
    /// `retention.ms` of every topic (`KAFKA_RETENTION_MS`, default Kafka's 7 days): old
    /// records go, so the broker's size and maintenance do not grow with its whole history.
    /// A result deleted unread leaves its payment pending and the reconciler re-drives it.
    pub retention_ms: i64,
}

impl Default for KafkaTopics {
    fn default() -> Self {
        Self::with_prefix("")
    }
}

impl KafkaTopics {
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            results: format!("{prefix}payment.results"),
            results_dlq: format!("{prefix}payment.results.dlq"),
            events: format!("{prefix}payment.events"),
            alerts: format!("{prefix}payment.alerts"),
            partitions: 3,
            retention_ms: std::env::var("KAFKA_RETENTION_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|ms: &i64| *ms > 0)
                .unwrap_or(DEFAULT_RETENTION_MS),
        }
    }

    /// Every topic with its partition count.
    fn all(&self) -> [(&str, i32); 4] {
        [
            (self.results.as_str(), self.partitions),
            (self.results_dlq.as_str(), 1),
            (self.events.as_str(), self.partitions),
            (self.alerts.as_str(), self.partitions),
        ]
    }

    /// Creates the topics if they do not exist yet (brokers need not auto-create topics),
    /// and warns about those that exist with another `retention.ms`: a topic's
    /// configuration is set when it is created, and a later start with another
    /// `KAFKA_RETENTION_MS` does not change it. The check runs until it succeeds once per
    /// process, which creates the topics from each of its Kafka tasks.
    pub async fn create(&self, brokers: &str) -> anyhow::Result<()> {
        static RETENTION_CHECKED: std::sync::atomic::AtomicBool =
            std::sync::atomic::AtomicBool::new(false);
        let admin: AdminClient<DefaultClientContext> = kafka_config(brokers).create()?;
        let retention = self.retention_ms.to_string();
        let topics = self.all().map(|(name, partitions)| {
            NewTopic::new(name, partitions, TopicReplication::Fixed(1))
                .set("cleanup.policy", "delete")
                .set("retention.ms", &retention)
        });
        let opts = AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10)));
        for result in admin.create_topics(&topics, &opts).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => anyhow::bail!("could not create Kafka topic {name}: {code}"),
            }
        }
        if RETENTION_CHECKED.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let checked = self.retention_drift(&admin).await;
        RETENTION_CHECKED.store(checked.is_ok(), std::sync::atomic::Ordering::Relaxed);
        match checked {
            Ok(drift) if drift.is_empty() => {}
            Ok(drift) => tracing::warn!(
                topics = %drift.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                configured_retention_ms = self.retention_ms,
                "Kafka topics keep the retention.ms they were created with, not KAFKA_RETENTION_MS; \
                 change it on the broker (docs/BROKER.md, \"Changing the retention\")"
            ),
            // Advisory only: the topics exist, and the pipeline runs either way.
            Err(e) => tracing::warn!(error = %e, "could not check the topics' retention.ms"),
        }
        Ok(())
    }

    /// The topics whose `retention.ms` on the broker is not [`Self::retention_ms`].
    pub async fn retention_drift(
        &self,
        admin: &AdminClient<DefaultClientContext>,
    ) -> anyhow::Result<Vec<RetentionDrift>> {
        let names = self.all().map(|(name, _)| name);
        let specifiers = names.map(ResourceSpecifier::Topic);
        let opts = AdminOptions::new().request_timeout(Some(std::time::Duration::from_secs(10)));
        let wanted = self.retention_ms.to_string();
        let mut drift = Vec::new();
        for (name, result) in names
            .iter()
            .zip(admin.describe_configs(&specifiers, &opts).await?)
        {
            let config = result.map_err(|code| {
                anyhow::anyhow!("could not read the configuration of Kafka topic {name}: {code}")
            })?;
            let on_broker = config
                .get("retention.ms")
                .and_then(|entry| entry.value.clone());
            if on_broker.as_deref() != Some(wanted.as_str()) {
                drift.push(RetentionDrift {
                    topic: name.to_string(),
                    on_broker,
                });
            }
        }
        Ok(drift)
    }

    /// Creates the topics, retrying every second while the broker is away, so a service can
    /// start before Kafka. Returns false when shutdown came first.
    pub async fn create_when_ready(
        &self,
        brokers: &str,
        shutdown: &mut crate::shutdown::Shutdown,
    ) -> bool {
        loop {
            match self.create(brokers).await {
                Ok(()) => return true,
                Err(e) => tracing::warn!(error = %e, "cannot create Kafka topics yet; retrying"),
            }
            if !shutdown.sleep(std::time::Duration::from_secs(1)).await {
                return false;
            }
        }
    }
}

/// The client settings every Kafka client here starts from.
pub fn kafka_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("socket.keepalive.enable", "true")
        // Small requests must not wait for Nagle's algorithm (40 ms stalls on loopback).
        .set("socket.nagle.disable", "true")
        // Reconnect quickly after a broker restart.
        .set("reconnect.backoff.max.ms", "2000");
    config
}
