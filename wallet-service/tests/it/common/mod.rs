//! Test harness: the wallet service in-process on a fresh database and a random port.
//!
//! This file holds the settings and the start and stop of a [`TestApp`]; `client` the
//! requests the tests make through it, `idp` the identity provider it trusts, `wait` and
//! `money` the polling, the money invariant and wallets written straight to the table,
//! `pipeline` the pieces beyond the API.

use reqwest::Client;
use sqlx::PgPool;
use std::time::Duration;
use wallet_service::config::{BrokerConfig, DbConfig, DispatcherConfig, ServeConfig};

mod client;
mod idp;
mod money;
pub mod pipeline;
mod wait;

pub use idp::{admin_token, idp, spawn_idp, token, TestIdp};
pub use money::{assert_money_conserved, insert_wallet};
pub use wait::eventually;

/// The secret of the tests that run the HS256 development mode.
pub const SECRET: &str = "integration-test-secret-0123456789";
/// The audience the test identity provider writes and the services require.
pub const AUDIENCE: &str = "wallet-api";
/// Payments of 500.00 EUR and more raise a `payment.alert` in tests.
pub const ALERT_THRESHOLDS: &str = "EUR=50000";

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A prefix that gives one test its own exchanges, queues and topics.
pub fn unique_prefix() -> String {
    format!("t{}.", uuid::Uuid::new_v4().simple())
}

pub struct Opts {
    pub dispatcher: bool,
    pub finalizer: bool,
    pub prefix: String,
    /// 0 disables the reconciler.
    pub reconcile_after_secs: f64,
    /// (longest wait between re-drives in seconds, re-drives before a payment is flagged).
    pub redrive_budget: (f64, i32),
    /// (per second, burst); (0, 0) disables the limit.
    pub rate_limit: (u32, u32),
    pub request_timeout: Duration,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            dispatcher: false,
            finalizer: false,
            prefix: unique_prefix(),
            reconcile_after_secs: 0.0,
            redrive_budget: (3600.0, 8),
            rate_limit: (0, 0),
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl Opts {
    /// The whole pipeline in the instance: outbox dispatcher and result consumer.
    pub fn pipeline() -> Self {
        Self {
            dispatcher: true,
            finalizer: true,
            ..Default::default()
        }
    }
}

pub struct TestApp {
    pub url: String,
    /// `http://<metrics listener>/metrics` (its own port, not the API's).
    pub metrics_url: String,
    pub http: Client,
    pub prefix: String,
    trigger: shared::shutdown::Trigger,
    running: Option<wallet_service::app::Running>,
}

/// The local brokers, with this test's prefix on every exchange, queue and topic.
pub fn broker_config(prefix: &str) -> BrokerConfig {
    BrokerConfig {
        amqp_url: amqp_url(),
        kafka_brokers: kafka_brokers(),
        broker_prefix: prefix.into(),
    }
}

/// The outbox dispatcher's settings in tests.
pub fn dispatcher_config() -> DispatcherConfig {
    DispatcherConfig {
        outbox_batch_size: 50,
        outbox_poll_interval: Duration::from_millis(500),
        outbox_linger: Duration::ZERO,
        events_linger: Duration::from_millis(50),
        outbox_retention_secs: 3600,
        inbox_retention_secs: 3600,
        prune_interval: Duration::from_secs(10),
    }
}

pub fn serve_config(opts: &Opts) -> ServeConfig {
    ServeConfig {
        bind: "127.0.0.1:0".into(),
        metrics_bind: "127.0.0.1:0".into(),
        auth: idp().auth_config(),
        request_timeout: opts.request_timeout,
        consumer_group: format!("{}wallet-service", opts.prefix),
        results_batch_size: 64,
        run_dispatcher: opts.dispatcher,
        run_finalizer: opts.finalizer,
        reconcile_after_secs: opts.reconcile_after_secs,
        reconcile_max_backoff_secs: opts.redrive_budget.0,
        reconcile_max_redrives: opts.redrive_budget.1,
        rate_limit_per_sec: opts.rate_limit.0,
        rate_limit_burst: opts.rate_limit.1,
        alert_thresholds: wallet_service::alerts::AlertThresholds::parse(ALERT_THRESHOLDS).unwrap(),
        db: DbConfig {
            database_url: String::new(),
            db_max_connections: 10,
            db_acquire_timeout: Duration::from_secs(3),
            db_statement_timeout: Duration::from_secs(5),
        },
        brokers: broker_config(&opts.prefix),
        dispatcher: dispatcher_config(),
    }
}

/// With `TEST_LOG` set (`TEST_LOG=1`, or a filter such as `TEST_LOG=wallet_service=debug`),
/// the service's logs go to the test's output, which cargo shows for a failing test (and
/// for every test with `-- --nocapture`).
pub fn show_logs_when_asked() {
    if let Some(filter) = std::env::var("TEST_LOG").ok().filter(|v| !v.is_empty()) {
        let filter = if filter == "1" {
            "info".to_owned()
        } else {
            filter
        };
        // The first test to start installs it; the rest find it there.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .with_ansi(false)
            .try_init();
    }
}

pub async fn spawn(pool: PgPool, opts: Opts) -> TestApp {
    spawn_with(pool, serve_config(&opts)).await
}

/// The service with settings of the test's own making.
pub async fn spawn_with(pool: PgPool, cfg: ServeConfig) -> TestApp {
    // The service's own pool on the test database, with the session settings it runs with
    // in production (lock and statement timeouts); `pool` stays the test's view.
    let service_pool = wallet_service::app::pool_with(&cfg.db, (*pool.connect_options()).clone());
    spawn_on(service_pool, cfg).await
}

/// The service on a pool of the test's making (e.g. one from `app::connect_db`).
pub async fn spawn_on(service_pool: PgPool, cfg: ServeConfig) -> TestApp {
    show_logs_when_asked();
    let prefix = cfg.brokers.broker_prefix.clone();
    let (trigger, shutdown) = shared::shutdown::channel();
    let metrics = shared::telemetry::install_metrics();
    let running = wallet_service::app::start_with_pool(cfg, service_pool, metrics, shutdown)
        .await
        .expect("app starts");
    TestApp {
        url: format!("http://{}", running.addr),
        metrics_url: format!(
            "http://{}/metrics",
            running.metrics_addr.expect("a metrics listener")
        ),
        http: Client::new(),
        prefix,
        trigger,
        running: Some(running),
    }
}

impl TestApp {
    /// Graceful shutdown: waits for every task to drain.
    pub async fn stop(mut self) {
        self.trigger.fire();
        if let Some(r) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(30), r.wait())
                .await
                .expect("drains within 30s");
        }
    }

    /// An abrupt stop, like kill -9: every task is aborted where it stands (open
    /// transactions roll back, nothing is flushed or acknowledged).
    pub fn crash(mut self) {
        drop(self.running.take());
    }
}

/// Starts the service with `cfg`, expecting it to refuse before it touches the database
/// (which is never reachable here); returns why it refused.
pub async fn start_refused(cfg: ServeConfig) -> anyhow::Error {
    let pool = sqlx::PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
    let (_trigger, shutdown) = shared::shutdown::channel();
    wallet_service::app::start_with_pool(cfg, pool, shared::telemetry::install_metrics(), shutdown)
        .await
        .err()
        .expect("refused")
}
