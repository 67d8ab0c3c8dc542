//! Test harness: the wallet service in-process on a fresh database and a random port.
#![allow(dead_code)]

use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::future::IntoFuture;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use wallet_service::config::{BrokerConfig, DbConfig, DispatcherConfig, ServeConfig};

pub mod pipeline;

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
    pub pool: PgPool,
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
    show_logs_when_asked();
    let prefix = cfg.brokers.broker_prefix.clone();
    let (trigger, shutdown) = shared::shutdown::channel();
    let metrics = shared::telemetry::install_metrics();
    // The service's own pool on the test database, with the session settings it runs with
    // in production (lock and statement timeouts); `pool` stays the test's view.
    let service_pool = wallet_service::app::pool_with(&cfg.db, (*pool.connect_options()).clone());
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
        pool,
        prefix,
        trigger,
        running: Some(running),
    }
}

/// An identity provider of the project's own, serving its JWKS over HTTP on loopback.
pub struct TestIdp {
    pub provider: Arc<local_idp::Provider>,
    /// Base URL; the JWKS is at `{url}/.well-known/jwks.json`.
    pub url: String,
}

impl TestIdp {
    pub fn jwks_url(&self) -> String {
        format!("{}/.well-known/jwks.json", self.url)
    }

    /// Sign-in settings that trust this provider.
    pub fn auth_config(&self) -> wallet_service::config::AuthConfig {
        wallet_service::config::AuthConfig::with_jwks(
            &self.jwks_url(),
            &self.provider.settings().issuer,
            AUDIENCE,
        )
    }

    pub fn token(&self, sub: &str, admin: bool) -> String {
        self.provider
            .mint(&local_idp::TokenRequest {
                sub: sub.into(),
                admin,
                ttl_secs: Some(600),
            })
            .expect("a valid token request")
    }
}

fn idp_settings(addr: std::net::SocketAddr) -> local_idp::Settings {
    local_idp::Settings {
        issuer: format!("http://{addr}/"),
        audience: AUDIENCE.into(),
        max_ttl_secs: 86_400,
        keys_file: None,
    }
}

/// The provider every test's service trusts by default: one per test binary, serving from
/// a thread of its own (each test runs on a runtime that ends with it).
pub fn idp() -> &'static TestIdp {
    static IDP: OnceLock<TestIdp> = OnceLock::new();
    IDP.get_or_init(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let provider = local_idp::Provider::new(idp_settings(addr)).unwrap();
        let served = provider.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, local_idp::router(served))
                    .await
                    .unwrap();
            });
        });
        TestIdp {
            provider,
            url: format!("http://{addr}"),
        }
    })
}

/// A provider of the calling test's own, on `listener` (tests that stop, break or rotate it).
pub fn spawn_idp(listener: tokio::net::TcpListener) -> TestIdp {
    let addr = listener.local_addr().unwrap();
    let provider = local_idp::Provider::new(idp_settings(addr)).unwrap();
    tokio::spawn(axum::serve(listener, local_idp::router(provider.clone())).into_future());
    TestIdp {
        provider,
        url: format!("http://{addr}"),
    }
}

pub fn token(sub: &str) -> String {
    idp().token(sub, false)
}

pub fn admin_token() -> String {
    idp().token("ops", true)
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

    pub async fn post(&self, path: &str, token: &str, key: Option<&str>, body: &Value) -> Response {
        let mut req = self
            .http
            .post(format!("{}{}", self.url, path))
            .bearer_auth(token)
            .json(body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        req.send().await.expect("request sent")
    }

    /// A GET without any `Authorization` header.
    pub async fn get_anonymous(&self, path: &str) -> Response {
        self.http
            .get(format!("{}{}", self.url, path))
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.http
            .get(format!("{}{}", self.url, path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn create_wallet(&self, owner: &str, currency: &str) -> String {
        let r = self
            .post(
                "/v1/wallets",
                &token(owner),
                None,
                &json!({"currency": currency}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn deposit(&self, wallet: &str, amount: i64, currency: &str) {
        let key = uuid::Uuid::new_v4().to_string();
        let r = self
            .post(
                &format!("/v1/wallets/{wallet}/deposits"),
                &admin_token(),
                Some(&key),
                &json!({"amount": amount, "currency": currency}),
            )
            .await;
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}",
            r.text().await.unwrap()
        );
    }

    pub async fn balance(&self, owner: &str, wallet: &str) -> (i64, i64) {
        let b: Value = self
            .get(&format!("/v1/wallets/{wallet}/balance"), &token(owner))
            .await
            .json()
            .await
            .unwrap();
        (
            b["available"].as_i64().unwrap(),
            b["held"].as_i64().unwrap(),
        )
    }

    /// `GET /v1/payments/{id}` as `owner`.
    pub async fn payment(&self, owner: &str, id: &str) -> Value {
        self.get(&format!("/v1/payments/{id}"), &token(owner))
            .await
            .json()
            .await
            .unwrap()
    }

    /// Waits until the payment leaves `pending`; returns its final status.
    pub async fn final_status(&self, owner: &str, id: &str, deadline: Duration) -> String {
        eventually(&format!("payment {id} final"), deadline, || async {
            let p = self.payment(owner, id).await;
            (p["status"] != "pending").then(|| p["status"].as_str().unwrap_or_default().to_owned())
        })
        .await
    }

    pub async fn pay(&self, owner: &str, wallet: &str, amount: i64, merchant: &str) -> Response {
        let key = uuid::Uuid::new_v4().to_string();
        self.post(
            "/v1/payments",
            &token(owner),
            Some(&key),
            &json!({"wallet_id": wallet, "amount": amount, "currency": "EUR", "merchant_id": merchant}),
        )
        .await
    }

    /// Pays as [`TestApp::pay`] and takes the payment's id from the answer, with the status
    /// for the caller to check.
    pub async fn pay_id(
        &self,
        owner: &str,
        wallet: &str,
        amount: i64,
        merchant: &str,
    ) -> (StatusCode, String) {
        let r = self.pay(owner, wallet, amount, merchant).await;
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        let id = body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no payment id in the {status} answer: {body}"))
            .to_owned();
        (status, id)
    }

    /// Every item of a cursor-paginated list: `path` (with its query, without a cursor)
    /// and then each `next_cursor`, in order. With `expect_ok`, every page must answer 200.
    pub async fn all_pages(&self, owner: &str, path: &str, expect_ok: bool) -> Vec<Value> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page_path = match &cursor {
                Some(c) => format!("{path}{sep}cursor={c}"),
                None => path.to_owned(),
            };
            let r = self.get(&page_path, &token(owner)).await;
            if expect_ok {
                assert_eq!(r.status(), StatusCode::OK);
            }
            let page: Value = r.json().await.unwrap();
            out.extend(page["data"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return out,
            }
        }
    }
}

/// Polls `check` every 50 ms until it returns Some or the deadline passes.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
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

/// Per wallet: deposits = available + held + captured, from the ledger and the balances.
pub async fn assert_money_conserved(pool: &PgPool) {
    let rows: Vec<(uuid::Uuid, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT w.id, w.available, w.held,
                COALESCE((SELECT sum(amount) FROM ledger_entries WHERE wallet_id = w.id AND kind = 'deposit'), 0)::bigint,
                COALESCE((SELECT sum(amount) FROM ledger_entries WHERE wallet_id = w.id AND kind = 'capture'), 0)::bigint
         FROM wallets w",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for (id, available, held, deposits, captured) in rows {
        assert_eq!(
            deposits,
            available + held + captured,
            "money not conserved in wallet {id}"
        );
        assert!(
            available >= 0 && held >= 0,
            "negative balance in wallet {id}"
        );
    }
}

impl TestApp {
    /// An abrupt stop, like kill -9: every task is aborted where it stands (open
    /// transactions roll back, nothing is flushed or acknowledged).
    pub fn crash(mut self) {
        drop(self.running.take());
    }
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
