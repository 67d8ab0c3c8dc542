//! Kafka clients configured for the pipeline's guarantees.

use crate::topology::kafka_config;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureProducer;
use rdkafka::statistics::Statistics;

/// A producer that waits for all in-sync replicas (`acks=all`), idempotent unless
/// `KAFKA_IDEMPOTENCE=false`: with it, broker-side retries never duplicate a message.
///
/// Correctness does not rest on it (consumers dedupe by event id and the wallet moves a
/// payment out of `pending` once), which is why it can be turned off for brokers whose
/// idempotent-producer support is broken: Tansu 0.6.0 panics in its idempotency check
/// ("more or less than one row", storage/src/lite.rs:503) after producers restart, and then
/// refuses every request until it is restarted. `scripts/up` turns it off for Tansu only.
pub fn producer(brokers: &str) -> KafkaResult<FutureProducer> {
    let idempotent = idempotence_enabled();
    kafka_config(brokers)
        .set(
            "enable.idempotence",
            if idempotent { "true" } else { "false" },
        )
        .set("acks", "all")
        .set("linger.ms", linger_ms().to_string())
        .set("message.timeout.ms", "10000")
        .create()
}

/// How long a producer waits to fill a batch before sending it (`KAFKA_LINGER_MS`, default 1).
///
/// Tansu 0.6.0 writes each produce request in a SQLite transaction of its own, so records
/// that share a request share its cost; but at 100 payments/s 5 ms moved neither Tansu's
/// CPU per payment (3.0 ms either way) nor anything else, and added its wait to every
/// result's way to the wallet. A knob for brokers and rates where batches do fill.
pub fn linger_ms() -> u32 {
    or_default(env_u32("KAFKA_LINGER_MS"), 1)
}

/// A Kafka setting in the environment that the services cannot use.
#[derive(Debug, thiserror::Error)]
#[error("{name}={value:?} is not valid: {expected}")]
pub struct EnvError {
    name: &'static str,
    value: String,
    expected: &'static str,
}

/// Checks the Kafka settings read from the environment (`KAFKA_LINGER_MS`,
/// `KAFKA_FETCH_WAIT_MS`, `KAFKA_IDEMPOTENCE`), so that a typo stops the service at start
/// instead of running it on the default without a word.
pub fn check_env() -> Result<(), EnvError> {
    env_u32("KAFKA_LINGER_MS")?;
    env_u32("KAFKA_FETCH_WAIT_MS")?;
    env_bool("KAFKA_IDEMPOTENCE")?;
    Ok(())
}

/// A setting's value, or `default` when unset. An unusable value also gives the default
/// here: [`check_env`] has refused it when the service started.
fn or_default<T>(value: Result<Option<T>, EnvError>, default: T) -> T {
    value.ok().flatten().unwrap_or(default)
}

/// A whole number from the environment; None when unset.
fn env_u32(name: &'static str) -> Result<Option<u32>, EnvError> {
    parse_u32(name, std::env::var(name).ok())
}

/// `true` or `false` from the environment; None when unset.
fn env_bool(name: &'static str) -> Result<Option<bool>, EnvError> {
    parse_bool(name, std::env::var(name).ok())
}

fn parse_u32(name: &'static str, value: Option<String>) -> Result<Option<u32>, EnvError> {
    let Some(value) = value else { return Ok(None) };
    value.parse().map(Some).map_err(|_| EnvError {
        name,
        value,
        expected: "a whole number of milliseconds",
    })
}

fn parse_bool(name: &'static str, value: Option<String>) -> Result<Option<bool>, EnvError> {
    match value.as_deref() {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(EnvError {
            name,
            value: value.unwrap_or_default(),
            expected: "true or false",
        }),
    }
}

/// Whether producers are idempotent (`KAFKA_IDEMPOTENCE`, default true). Only an idempotent
/// producer keeps a partition's order when a send fails and is retried.
pub fn idempotence_enabled() -> bool {
    or_default(env_bool("KAFKA_IDEMPOTENCE"), true)
}

/// Exports the consumer lag librdkafka reports in its statistics, per topic and partition.
pub struct LagContext;

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // -1 means unknown (no committed offset yet or not assigned here).
                if *partition >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!(
                        "kafka_consumer_lag_messages",
                        "topic" => topic.clone(),
                        "partition" => partition.to_string()
                    )
                    .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for LagContext {}

pub type Consumer = StreamConsumer<LagContext>;

/// A consumer in `group` that never commits by itself: offsets are committed only after the
/// effect of a message is durable.
pub fn consumer(brokers: &str, group: &str) -> KafkaResult<Consumer> {
    metrics::describe_gauge!(
        "kafka_consumer_lag_messages",
        "Messages between the consumer group's position and the end of each partition."
    );
    kafka_config(brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", fetch_wait_ms().to_string())
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("statistics.interval.ms", "5000")
        .create_with_context(LagContext)
}

/// How long the broker may hold a fetch that found nothing (`KAFKA_FETCH_WAIT_MS`, default
/// 100, at least 1).
///
/// Apache Kafka answers as soon as data arrives, so the wait costs it no latency. Tansu 0.6.0
/// holds every fetch for the full wait even when data is there, and runs its SQL for each
/// fetch without prepared statements: the wait is then both the latency added to every
/// result and what the broker spends polling (about 38 % of a core at 10 ms, idle), so
/// `scripts/up` sets it for Tansu (see docs/BROKER.md).
pub fn fetch_wait_ms() -> u32 {
    or_default(env_u32("KAFKA_FETCH_WAIT_MS"), 100).max(1)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_are_not_numbers_or_booleans_are_refused_by_name() {
        assert_eq!(parse_u32("KAFKA_LINGER_MS", None).unwrap(), None);
        assert_eq!(
            parse_u32("KAFKA_LINGER_MS", Some("5".into())).unwrap(),
            Some(5)
        );
        let e = parse_u32("KAFKA_LINGER_MS", Some("5ms".into())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "KAFKA_LINGER_MS=\"5ms\" is not valid: a whole number of milliseconds"
        );
        assert!(parse_u32("KAFKA_FETCH_WAIT_MS", Some("-1".into())).is_err());
        assert_eq!(
            parse_bool("KAFKA_IDEMPOTENCE", Some("false".into())).unwrap(),
            Some(false)
        );
        assert_eq!(
            parse_bool("KAFKA_IDEMPOTENCE", Some("true".into())).unwrap(),
            Some(true)
        );
        let e = parse_bool("KAFKA_IDEMPOTENCE", Some("no".into())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "KAFKA_IDEMPOTENCE=\"no\" is not valid: true or false"
        );
    }
}
