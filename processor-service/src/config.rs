//! Settings: every one is a flag and an environment variable (`--help` lists them).

use clap::Parser;
use std::time::Duration;

fn parse_ms(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|e| format!("expected milliseconds: {e}"))
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "processor-service",
    version,
    about = "Charges payment requests at the gateway and publishes the results"
)]
pub struct Config {
    /// Address of the health endpoints (`/healthz`, `/readyz`).
    #[arg(long, env = "PROCESSOR_BIND", default_value = "127.0.0.1:8081")]
    pub bind: String,
    /// Address of `GET /metrics` (Prometheus), a listener of its own.
    #[arg(long, env = "PROCESSOR_METRICS_BIND", default_value = "127.0.0.1:9181")]
    pub metrics_bind: String,
    /// RabbitMQ connection string.
    #[arg(long, env = "AMQP_URL")]
    pub amqp_url: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: String,
    /// Base URL of the payment gateway.
    #[arg(long, env = "GATEWAY_URL", default_value = "http://127.0.0.1:8090")]
    pub gateway_url: String,
    /// Timeout of one gateway call.
    #[arg(
        long = "gateway-timeout-ms",
        env = "GATEWAY_TIMEOUT_MS",
        default_value = "2000",
        value_parser = parse_ms,
    )]
    pub gateway_timeout: Duration,
    /// Gateway calls per payment before asking the gateway what happened.
    #[arg(long, env = "GATEWAY_ATTEMPTS", default_value_t = 5)]
    pub gateway_attempts: u32,
    /// First retry delay; doubles per attempt, with jitter.
    #[arg(
        long = "gateway-backoff-ms",
        env = "GATEWAY_BACKOFF_MS",
        default_value = "100",
        value_parser = parse_ms,
    )]
    pub gateway_backoff: Duration,
    /// Messages processed at once (also the RabbitMQ prefetch).
    #[arg(long, env = "PROCESSOR_CONCURRENCY", default_value_t = 64)]
    pub concurrency: u16,
    /// How long SIGTERM waits for in-flight messages before giving up on them (they are
    /// redelivered, never lost).
    #[arg(
        long = "drain-timeout-ms",
        env = "DRAIN_TIMEOUT_MS",
        default_value = "20000",
        value_parser = parse_ms,
    )]
    pub drain_timeout: Duration,
    /// Prefix for broker object names (tests use it to get a private topology).
    #[arg(long, env = "BROKER_PREFIX", default_value = "")]
    pub broker_prefix: String,
}
