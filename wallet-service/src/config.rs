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

/// Parsing accepts anything: a secret is checked where it is used ([`shared::auth::check_secret`]),
/// because a parse error would have clap print the value.
impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// Bearer token settings, shared by `serve` (verifying) and `token` (minting).
///
/// Two modes, never both: **JWKS** (`AUTH_JWKS_URL`, with `AUTH_ISSUER` and `AUTH_AUDIENCE`
/// required), tokens signed RS256/ES256 by an identity provider; **HS256**
/// (`AUTH_JWT_SECRET`), tokens signed with a shared secret, for development.
#[derive(Debug, Clone, Args)]
pub struct AuthConfig {
    /// The identity provider's JWKS (e.g. `https://TENANT.auth0.com/.well-known/jwks.json`):
    /// tokens are RS256/ES256, verified with the key their `kid` names.
    #[arg(long, env = "AUTH_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// HMAC secret of HS256 tokens (development mode): at least 32 random bytes (`openssl
    /// rand -hex 32`); the service refuses to start with a shorter one or a known placeholder.
    #[arg(long, env = "AUTH_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
    /// Required `iss` claim of every token (required with AUTH_JWKS_URL; with a secret, unset
    /// means not checked); `token` writes it.
    #[arg(long = "auth-issuer", visible_alias = "iss", env = "AUTH_ISSUER")]
    pub issuer: Option<String>,
    /// Required `aud` claim of every token (required with AUTH_JWKS_URL; with a secret, unset
    /// means tokens naming an audience are refused); `token` writes it.
    #[arg(long = "auth-audience", visible_alias = "aud", env = "AUTH_AUDIENCE")]
    pub audience: Option<String>,
    /// The scope (in `scope`) or permission (in `permissions`) that grants admin rights.
    #[arg(long, env = "AUTH_ADMIN_SCOPE", default_value = shared::auth::DEFAULT_ADMIN_SCOPE)]
    pub admin_scope: String,
    /// Longest lifetime (`exp - iat`) of an accepted token, in seconds; tokens without `iat`
    /// are refused, and `token --ttl` may not exceed it.
    #[arg(
        long,
        env = "AUTH_MAX_TOKEN_LIFETIME_SECS",
        default_value_t = shared::auth::DEFAULT_MAX_LIFETIME_SECS,
        value_parser = clap::value_parser!(u64).range(1..),
    )]
    pub max_token_lifetime_secs: u64,
    /// Refetch the JWKS this often, in seconds.
    #[arg(
        long,
        env = "AUTH_JWKS_REFRESH_SECS",
        default_value_t = 300,
        value_parser = clap::value_parser!(u64).range(1..),
    )]
    pub jwks_refresh_secs: u64,
    /// A token naming an unknown `kid` refetches the JWKS at most once per this many seconds.
    #[arg(
        long,
        env = "AUTH_JWKS_MIN_REFRESH_SECS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..),
    )]
    pub jwks_min_refresh_secs: u64,
    /// Accept a plain-http AUTH_JWKS_URL for a host other than loopback (a private
    /// development network, such as the compose file's); otherwise it must be https.
    #[arg(
        long,
        env = "AUTH_JWKS_ALLOW_HTTP",
        default_value_t = false,
        action = clap::ArgAction::Set,
    )]
    pub jwks_allow_http: bool,
}

/// Which kind of signature the service checks.
pub enum AuthMode<'a> {
    Jwks(shared::auth::JwksSettings),
    Secret(&'a Secret),
}

impl AuthConfig {
    /// Settings for a test or a tool: the secret, nothing else set.
    pub fn with_secret(secret: &str) -> Self {
        Self {
            jwks_url: None,
            jwt_secret: Some(Secret(secret.to_owned())),
            issuer: None,
            audience: None,
            admin_scope: shared::auth::DEFAULT_ADMIN_SCOPE.to_owned(),
            max_token_lifetime_secs: shared::auth::DEFAULT_MAX_LIFETIME_SECS,
            jwks_refresh_secs: 300,
            jwks_min_refresh_secs: 30,
            jwks_allow_http: false,
        }
    }

    /// Settings for a JWKS at `url` with the issuer and audience its tokens carry.
    pub fn with_jwks(url: &str, issuer: &str, audience: &str) -> Self {
        Self {
            jwks_url: Some(url.to_owned()),
            jwt_secret: None,
            issuer: Some(issuer.to_owned()),
            audience: Some(audience.to_owned()),
            ..Self::with_secret("")
        }
    }

    /// What tokens must satisfy; an empty issuer or audience counts as unset.
    pub fn policy(&self) -> shared::auth::TokenPolicy {
        shared::auth::TokenPolicy {
            issuer: set(&self.issuer),
            audience: set(&self.audience),
            max_lifetime_secs: self.max_token_lifetime_secs,
            admin_scope: self.admin_scope.clone(),
        }
    }

    /// The mode these settings choose; exactly one of `AUTH_JWKS_URL` and `AUTH_JWT_SECRET`
    /// must be set (empty counts as unset), and a JWKS needs an issuer and an audience.
    pub fn mode(&self) -> anyhow::Result<AuthMode<'_>> {
        let secret = self.jwt_secret.as_ref().filter(|s| !s.0.is_empty());
        match (set(&self.jwks_url), secret) {
            (Some(_), Some(_)) => anyhow::bail!(
                "both AUTH_JWKS_URL and AUTH_JWT_SECRET are set: choose one sign-in mode \
                 (JWKS for an identity provider, the secret for development), never both"
            ),
            (None, None) => anyhow::bail!(
                "no sign-in configured: set AUTH_JWKS_URL (with AUTH_ISSUER and AUTH_AUDIENCE) \
                 for an identity provider, or AUTH_JWT_SECRET for development"
            ),
            (None, Some(secret)) => Ok(AuthMode::Secret(secret)),
            (Some(url), None) => {
                anyhow::ensure!(
                    set(&self.issuer).is_some() && set(&self.audience).is_some(),
                    "AUTH_JWKS_URL needs AUTH_ISSUER and AUTH_AUDIENCE: the provider's issuer \
                     URL and this API's identifier, checked on every token"
                );
                Ok(AuthMode::Jwks(shared::auth::JwksSettings {
                    url,
                    refresh_every: Duration::from_secs(self.jwks_refresh_secs),
                    min_refresh_gap: Duration::from_secs(self.jwks_min_refresh_secs),
                    fetch_timeout: Duration::from_secs(5),
                    allow_http: self.jwks_allow_http,
                }))
            }
        }
    }
}

fn set(v: &Option<String>) -> Option<String> {
    v.clone().filter(|v| !v.is_empty())
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
    #[arg(
        long = "db-acquire-timeout-ms",
        env = "DB_ACQUIRE_TIMEOUT_MS",
        default_value = "3000",
        value_parser = parse_duration_ms,
    )]
    pub db_acquire_timeout: Duration,
    /// Longest a statement may run (PostgreSQL's `statement_timeout`). Lock waits end at
    /// three fifths of it ([`DbConfig::lock_timeout`]), so a statement stuck behind a lock
    /// reports the lock. `serve` refuses to start unless waiting for a connection and then
    /// for one statement fits in `REQUEST_TIMEOUT_MS`: a request that times out never
    /// leaves its statement running.
    #[arg(
        long = "db-statement-timeout-ms",
        env = "DB_STATEMENT_TIMEOUT_MS",
        default_value = "5000",
        value_parser = parse_duration_ms,
    )]
    pub db_statement_timeout: Duration,
}

impl DbConfig {
    /// PostgreSQL's `lock_timeout`: three fifths of the statement timeout.
    pub fn lock_timeout(&self) -> Duration {
        self.db_statement_timeout * 3 / 5
    }

    /// Refuses a request deadline that a connection wait plus one statement can outlast.
    pub fn check_fits_in(&self, request_timeout: Duration) -> anyhow::Result<()> {
        let worst = self.db_acquire_timeout + self.db_statement_timeout;
        anyhow::ensure!(
            worst < request_timeout,
            "REQUEST_TIMEOUT_MS ({} ms) must exceed DB_ACQUIRE_TIMEOUT_MS + DB_STATEMENT_TIMEOUT_MS ({} ms): \
             otherwise a request can time out while its statement still runs",
            request_timeout.as_millis(),
            worst.as_millis()
        );
        Ok(())
    }
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
    #[arg(
        long = "outbox-poll-interval-ms",
        env = "OUTBOX_POLL_INTERVAL_MS",
        default_value = "1000",
        value_parser = parse_duration_ms,
    )]
    pub outbox_poll_interval: Duration,
    /// How long the dispatcher lets payment requests gather once one is announced, so that
    /// one transaction and one round of publisher confirms carry several. Every payment
    /// waits up to this much longer for its result.
    #[arg(
        long = "outbox-linger-ms",
        env = "OUTBOX_LINGER_MS",
        default_value = "0",
        value_parser = parse_duration_ms,
    )]
    pub outbox_linger: Duration,
    /// How long the event relay lets events for other systems (`payment.finalized`,
    /// `wallet.deposited`, `payment.alert`) gather once one is announced, so that one
    /// transaction and one round of Kafka acknowledgements carry many. Other systems see
    /// events up to this much later; no payment waits for it.
    #[arg(
        long = "events-linger-ms",
        env = "EVENTS_LINGER_MS",
        default_value = "50",
        value_parser = parse_duration_ms,
    )]
    pub events_linger: Duration,
    /// How long published outbox rows are kept before they are pruned.
    #[arg(long, env = "OUTBOX_RETENTION_SECS", default_value_t = 86_400)]
    pub outbox_retention_secs: i64,
    /// How long the result consumer remembers an applied event id. Past it a redelivered
    /// result still changes nothing (the payment is final), it is just not told apart from
    /// a new one. Kafka keeps messages 7 days by default, hence the default.
    #[arg(long, env = "INBOX_RETENTION_SECS", default_value_t = 604_800)]
    pub inbox_retention_secs: i64,
    /// Time between two pruning passes.
    #[arg(
        long = "prune-interval-ms",
        env = "PRUNE_INTERVAL_MS",
        default_value = "10000",
        value_parser = parse_duration_ms,
    )]
    pub prune_interval: Duration,
}

impl DispatcherConfig {
    pub fn retention(&self) -> crate::housekeeping::Retention {
        crate::housekeeping::Retention {
            outbox_secs: self.outbox_retention_secs,
            inbox_secs: self.inbox_retention_secs,
            every: self.prune_interval,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address the HTTP API listens on.
    #[arg(long, env = "WALLET_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// Address of `GET /metrics` (Prometheus), a listener of its own kept off the API's port.
    #[arg(long, env = "WALLET_METRICS_BIND", default_value = "127.0.0.1:9180")]
    pub metrics_bind: String,
    #[command(flatten)]
    pub auth: AuthConfig,
    /// A request still running after this long answers 503.
    #[arg(
        long = "request-timeout-ms",
        env = "REQUEST_TIMEOUT_MS",
        default_value = "10000",
        value_parser = parse_duration_ms,
    )]
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
    /// Fractions are allowed. Each further re-drive of the same payment waits twice as long.
    #[arg(long, env = "RECONCILE_AFTER_SECS", default_value_t = 60.0)]
    pub reconcile_after_secs: f64,
    /// The longest wait between two re-drives of one payment, in seconds.
    #[arg(long, env = "RECONCILE_MAX_BACKOFF_SECS", default_value_t = 3600.0)]
    pub reconcile_max_backoff_secs: f64,
    /// Re-drives of one payment before the reconciler gives up on it and flags it for an
    /// operator (`wallet-service review`); the hold stays until its result arrives.
    #[arg(long, env = "RECONCILE_MAX_REDRIVES", default_value_t = 8)]
    pub reconcile_max_redrives: i32,
    /// Large-payment alert thresholds in minor units, `CUR=AMOUNT` pairs, `*` for every
    /// other currency (e.g. `EUR=500000,*=1000000`); empty disables alerts.
    #[arg(
        long,
        env = "ALERT_THRESHOLDS",
        default_value = "*=1000000",
        value_parser = crate::alerts::AlertThresholds::parse,
    )]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn db(acquire_ms: u64, statement_ms: u64) -> DbConfig {
        DbConfig {
            database_url: String::new(),
            db_max_connections: 1,
            db_acquire_timeout: Duration::from_millis(acquire_ms),
            db_statement_timeout: Duration::from_millis(statement_ms),
        }
    }

    #[test]
    fn database_waits_derive_from_the_statement_timeout_and_fit_in_the_request_deadline() {
        let defaults = db(3000, 5000);
        assert_eq!(defaults.lock_timeout(), Duration::from_millis(3000));
        assert!(defaults.check_fits_in(Duration::from_secs(10)).is_ok());
        let err = db(3000, 8000)
            .check_fits_in(Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(err.contains("REQUEST_TIMEOUT_MS (10000 ms)"), "{err}");
        assert!(err.contains("(11000 ms)"), "{err}");
        assert!(db(5000, 5000)
            .check_fits_in(Duration::from_secs(10))
            .is_err());
    }
}
