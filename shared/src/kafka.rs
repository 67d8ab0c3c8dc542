//! Kafka clients configured for the pipeline's guarantees.

use crate::topology::kafka_config;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::KafkaResult;
use rdkafka::message::{Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureProducer;

/// An idempotent producer that waits for all in-sync replicas: a delivered message is on
/// disk and retries never duplicate it within a producer session.
pub fn producer(brokers: &str) -> KafkaResult<FutureProducer> {
    kafka_config(brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("message.timeout.ms", "10000")
        .create()
}

/// A consumer in `group` that never commits by itself: offsets are committed only after the
/// effect of a message is durable.
pub fn consumer(brokers: &str, group: &str) -> KafkaResult<StreamConsumer> {
    kafka_config(brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Some brokers (Tansu) hold a fetch for the full wait even when data is there.
        .set("fetch.wait.max.ms", "10")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .create()
}

/// A string header of a Kafka message.
pub fn header_str<M: Message>(msg: &M, name: &str) -> Option<String> {
    msg.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Kafka headers from string pairs.
pub fn headers<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> OwnedHeaders {
    pairs
        .into_iter()
        .fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(rdkafka::message::Header {
                key,
                value: Some(value),
            })
        })
}
