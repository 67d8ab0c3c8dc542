//! A card payment gateway simulator: idempotent charges and refunds by `Idempotency-Key`,
//! with configurable latency, declines and outages, so the processor-service's retries,
//! timeouts and reconciliation can be tested against a real HTTP service.
//!
//! [`Config`] is read from flags or `GATEWAY_*` variables, [`app`] is the router, and
//! [`spawn`] starts the whole service in-process (tests bind port 0). Metrics are served on
//! a listener of their own (`GATEWAY_METRICS_BIND`). Charges are kept for a retention period
//! ([`retention`]), so that a gateway running for months holds one period's worth.

mod config;
mod http;
mod refunds;
pub mod retention;
mod store;

pub use config::{Behaviour, BehaviourPatch, Config};
pub use http::app;
pub use refunds::Refund;
pub use store::{Charge, ChargeStatus};

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::{lock, Store};
use tokio::task::JoinHandle;

/// The shared state behind every route.
pub struct Gateway {
    store: Arc<Store>,
    behaviour: Mutex<Behaviour>,
    rng: Mutex<fastrand::Rng>,
    requests: AtomicU64,
    replays: AtomicU64,
    unavailable: AtomicU64,
    /// What `/v1/stats` reports of `GATEWAY_RETENTION_SECS`.
    retention_secs: u64,
}

impl Gateway {
    /// Builds the state, loading the data file if one is configured.
    pub fn new(config: &Config) -> anyhow::Result<Arc<Self>> {
        let store = match &config.data_file {
            Some(path) => Store::open(path)?,
            None => Store::in_memory(),
        };
        let seed = config.seed.unwrap_or_else(|| fastrand::u64(..));
        tracing::info!(
            seed,
            behaviour = ?config.behaviour(),
            retention_secs = config.retention_secs,
            "gateway configured (charges are forgotten after retention_secs without activity)"
        );
        Ok(Arc::new(Self {
            store: Arc::new(store),
            behaviour: Mutex::new(config.behaviour()),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            requests: AtomicU64::new(0),
            replays: AtomicU64::new(0),
            unavailable: AtomicU64::new(0),
            retention_secs: config.retention_secs,
        }))
    }

    pub fn behaviour(&self) -> Behaviour {
        *lock(&self.behaviour)
    }

    /// Applies a runtime change; on an invalid value nothing changes.
    fn update_behaviour(&self, patch: BehaviourPatch) -> Result<Behaviour, String> {
        let mut behaviour = lock(&self.behaviour);
        *behaviour = behaviour.apply(patch)?;
        Ok(*behaviour)
    }

    /// One request's latency: exponential with the configured mean (what real network and
    /// issuer delays look like: mostly fast, a long tail), capped at ten times the mean.
    fn latency(&self, mean_ms: u64) -> Duration {
        if mean_ms == 0 {
            return Duration::ZERO;
        }
        let uniform = 1.0 - lock(&self.rng).f64(); // (0, 1], so ln is finite
        let ms = (-(mean_ms as f64) * uniform.ln()).min(10.0 * mean_ms as f64);
        Duration::from_micros((ms * 1000.0) as u64)
    }

    /// The outcome of a charge: `None` is an outage (503, nothing charged).
    fn decide(&self, merchant_id: &str, behaviour: &Behaviour) -> Option<ChargeStatus> {
        match merchant_id {
            "test_unavailable" => None,
            "test_decline" => Some(ChargeStatus::Declined),
            // Charges succeed so that its refunds can be declined (`refunds.rs`).
            refunds::DECLINES_REFUNDS => Some(ChargeStatus::Succeeded),
            _ => {
                let mut rng = lock(&self.rng);
                if rng.f64() < behaviour.error_rate {
                    None
                } else if rng.f64() < behaviour.decline_rate {
                    Some(ChargeStatus::Declined)
                } else {
                    Some(ChargeStatus::Succeeded)
                }
            }
        }
    }
}

impl Gateway {
    /// Starts the retention passes (`retention.rs`) in a background task.
    pub fn spawn_retention(&self, config: &Config) -> JoinHandle<()> {
        retention::spawn(
            Arc::clone(&self.store),
            Duration::from_secs(config.retention_secs),
            Duration::from_secs(config.retention_interval_secs),
        )
    }

    /// One retention pass now, forgetting what had no activity since `cutoff`. Blocking.
    pub fn forget_before(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
    ) -> std::io::Result<retention::Pass> {
        self.store.forget_before(cutoff)
    }
}

impl Gateway {
    /// Whether this request meets a simulated outage (`error_rate`).
    fn outage(&self, behaviour: &Behaviour) -> bool {
        lock(&self.rng).f64() < behaviour.error_rate
    }
}

/// A gateway running in-process; dropping it stops the server (like a kill: nothing is
/// drained, only what the data file holds survives).
pub struct Running {
    pub addr: SocketAddr,
    /// Where `GET /metrics` is served.
    pub metrics_addr: SocketAddr,
    /// The state behind the routes, for what tests do besides HTTP (a retention pass now).
    pub gateway: Arc<Gateway>,
    task: JoinHandle<()>,
    metrics_task: JoinHandle<()>,
    retention_task: JoinHandle<()>,
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://<metrics listener>/metrics`.
    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics_addr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
        self.metrics_task.abort();
        self.retention_task.abort();
    }
}

/// Starts the gateway on `config.bind` and its metrics on `config.metrics_bind` (port 0
/// picks a free one) in background tasks.
pub async fn spawn(config: Config) -> anyhow::Result<Running> {
    let gateway = Gateway::new(&config)?;
    let listener = tokio::net::TcpListener::bind(config.bind).await?;
    let addr = listener.local_addr()?;
    let metrics = shared::telemetry::MetricsServer::bind(
        &config.metrics_bind.to_string(),
        shared::telemetry::install_metrics(),
    )
    .await?;
    let metrics_addr = metrics.local_addr()?;
    let retention_task = gateway.spawn_retention(&config);
    let app = app(Arc::clone(&gateway));
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "gateway server failed");
        }
    });
    let metrics_task = tokio::spawn(metrics.serve(std::future::pending()));
    Ok(Running {
        addr,
        metrics_addr,
        gateway,
        task,
        metrics_task,
        retention_task,
    })
}
