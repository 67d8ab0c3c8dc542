//! Settings: every one is a flag and an environment variable (`--help` lists them).

use clap::Args;
use std::fmt;
use std::time::Duration;

/// A secret that never appears in logs or `Debug` output.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() < 16 {
            return Err("AUTH_JWT_SECRET must be at least 16 bytes".into());
        }
        Ok(Self(s.to_owned()))
    }
}

fn parse_duration_ms(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|e| format!("expected milliseconds: {e}"))
}

#[derive(Debug, Clone, Args)]
pub struct DbConfig {
    /// PostgreSQL connection string.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// Maximum connections in the pool.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 32)]
    pub db_max_connections: u32,
    /// How long a request waits for a connection before answering 503.
    #[arg(long = "db-acquire-timeout-ms", env = "DB_ACQUIRE_TIMEOUT_MS", default_value = "3000", value_parser = parse_duration_ms)]
    pub db_acquire_timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct BrokerConfig {
    /// RabbitMQ connection string.
    #[arg(long, env = "AMQP_URL")]
    pub amqp_url: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: String,
    /// Prefix for broker object names (tests use it to get a private topology).
    #[arg(long, env = "BROKER_PREFIX", default_value = "")]
    pub broker_prefix: String,
}

#[derive(Debug, Clone, Args)]
pub struct DispatcherConfig {
    /// Outbox rows claimed and published per batch.
    #[arg(long, env = "OUTBOX_BATCH_SIZE", default_value_t = 200)]
    pub outbox_batch_size: i64,
    /// Fallback poll interval when no notification arrives.
    #[arg(long = "outbox-poll-interval-ms", env = "OUTBOX_POLL_INTERVAL_MS", default_value = "1000", value_parser = parse_duration_ms)]
    pub outbox_poll_interval: Duration,
    /// How long published outbox rows are kept before they are pruned.
    #[arg(long, env = "OUTBOX_RETENTION_SECS", default_value_t = 86_400)]
    pub outbox_retention_secs: i64,
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address the HTTP API listens on.
    #[arg(long, env = "WALLET_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// HMAC secret of the HS256 bearer tokens.
    #[arg(long, env = "AUTH_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Secret,
    /// A request still running after this long answers 503.
    #[arg(long = "request-timeout-ms", env = "REQUEST_TIMEOUT_MS", default_value = "10000", value_parser = parse_duration_ms)]
    pub request_timeout: Duration,
    /// Kafka consumer group of the result consumer.
    #[arg(long, env = "RESULTS_CONSUMER_GROUP", default_value = "wallet-service")]
    pub consumer_group: String,
    /// Results applied per database transaction at most.
    #[arg(long, env = "RESULTS_BATCH_SIZE", default_value_t = 256)]
    pub results_batch_size: usize,
    /// Run the outbox dispatcher inside this process.
    #[arg(long, env = "RUN_DISPATCHER", default_value_t = true, action = clap::ArgAction::Set)]
    pub run_dispatcher: bool,
    /// Requests per second each principal may make on average (0 disables the limit).
    #[arg(long, env = "RATE_LIMIT_PER_SEC", default_value_t = 100)]
    pub rate_limit_per_sec: u32,
    /// Requests a principal may make at once before the rate applies.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 200)]
    pub rate_limit_burst: u32,
    /// Re-drive payments still pending after this many seconds (0 disables the reconciler).
    #[arg(long, env = "RECONCILE_AFTER_SECS", default_value_t = 60)]
    pub reconcile_after_secs: u64,
    /// Large-payment alert thresholds in minor units, `CUR=AMOUNT` pairs, `*` for every
    /// other currency (e.g. `EUR=500000,*=1000000`); empty disables alerts.
    #[arg(long, env = "ALERT_THRESHOLDS", default_value = "*=1000000", value_parser = crate::alerts::AlertThresholds::parse)]
    pub alert_thresholds: crate::alerts::AlertThresholds,
    /// Run the result consumer inside this process.
    #[arg(long, env = "RUN_FINALIZER", default_value_t = true, action = clap::ArgAction::Set)]
    pub run_finalizer: bool,
    #[command(flatten)]
    pub db: DbConfig,
    #[command(flatten)]
    pub brokers: BrokerConfig,
    #[command(flatten)]
    pub dispatcher: DispatcherConfig,
}
