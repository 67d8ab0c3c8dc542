//! processor-service: turns payment requests into gateway charges and results.
//!
//! [`consumer`] takes `payment.requested` messages from RabbitMQ; [`gateway`] charges them
//! with retries under the payment id as idempotency key and decides only what is certain;
//! the result goes to Kafka `payment.results` before the RabbitMQ message is acked.
//! [`start`] wires it together with the health endpoints and the metrics listener.

pub mod config;
pub mod consumer;
pub mod gateway;

use anyhow::Context;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use config::Config;
use consumer::Processor;
use gateway::GatewayClient;
use rdkafka::producer::Producer;
use shared::shutdown::Shutdown;
use shared::telemetry::{
    readiness, MetricsServer, PrometheusHandle, ReadinessCache, ReadinessCheck,
};
use shared::topology::{AmqpTopology, KafkaTopics};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

#[derive(Clone)]
struct Ready {
    amqp: Arc<AtomicBool>,
    producer: rdkafka::producer::FutureProducer,
    gateway: Arc<GatewayClient>,
    cache: Arc<ReadinessCache>,
}

/// `/readyz`: answered from a probe at most a second old (one probe at a time), so a flood
/// costs one Kafka metadata call and one gateway call per second.
async fn readyz(State(r): State<Ready>) -> Response {
    let cache = r.cache.clone();
    readiness(cache.checks(|| probe(r)).await)
}

async fn probe(r: Ready) -> Vec<ReadinessCheck> {
    let mut checks = vec![if r.amqp.load(Ordering::Relaxed) {
        ReadinessCheck::ok("rabbitmq")
    } else {
        ReadinessCheck::down("rabbitmq", "not connected")
    }];
    let producer = r.producer.clone();
    let kafka = tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(None, Duration::from_secs(1))
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    checks.push(match kafka {
        Ok(()) => ReadinessCheck::ok("kafka"),
        Err(e) => ReadinessCheck::down("kafka", e),
    });
    checks.push(match r.gateway.ready().await {
        Ok(()) => ReadinessCheck::ok("gateway"),
        Err(e) => ReadinessCheck::down("gateway", e),
    });
    checks
}

pub use shared::shutdown::Running;

pub async fn start(
    cfg: Config,
    metrics: PrometheusHandle,
    shutdown: Shutdown,
) -> anyhow::Result<Running> {
    shared::kafka::check_env()?;
    consumer::describe_metrics();
    gateway::describe_metrics();
    let gateway = Arc::new(GatewayClient::new(
        &cfg.gateway_url,
        cfg.gateway_timeout,
        cfg.gateway_attempts,
        cfg.gateway_backoff,
    )?);
    let producer = shared::kafka::producer(&cfg.kafka_brokers)?;
    let topics = KafkaTopics::with_prefix(&cfg.broker_prefix);
    let connected = Arc::new(AtomicBool::new(false));
    let processor = Arc::new(Processor {
        amqp: shared::amqp::AmqpNodes::parse(&cfg.amqp_url),
        topology: AmqpTopology::with_prefix(&cfg.broker_prefix),
        topics: topics.clone(),
        gateway: gateway.clone(),
        producer: producer.clone(),
        concurrency: cfg.concurrency,
        drain_timeout: cfg.drain_timeout,
        connected: connected.clone(),
    });

    let mut tasks = JoinSet::new();
    let brokers = cfg.kafka_brokers.clone();
    let mut sd = shutdown.clone();
    tasks.spawn(async move {
        // Results need their topic; create it before consuming requests.
        if topics.create_when_ready(&brokers, &mut sd).await {
            processor.run(sd).await;
        }
    });

    let ready = Ready {
        amqp: connected,
        producer: producer.clone(),
        gateway,
        cache: Arc::default(),
    };
    // `/metrics` has a listener of its own (`PROCESSOR_METRICS_BIND`).
    let app = Router::new()
        .route("/healthz", get(shared::telemetry::healthz))
        .route("/readyz", get(readyz).with_state(ready))
        .layer(axum::middleware::from_fn(shared::telemetry::track_http))
        .layer(axum::middleware::from_fn(shared::telemetry::request_span));
    let listener = tokio::net::TcpListener::bind(&cfg.bind)
        .await
        .with_context(|| format!("binding {}", cfg.bind))?;
    let addr = listener.local_addr()?;
    let metrics_server = MetricsServer::bind(&cfg.metrics_bind, metrics).await?;
    let metrics_addr = metrics_server.local_addr()?;
    let mut sd = shutdown.clone();
    tasks.spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { sd.wait().await })
            .await;
    });
    let mut sd = shutdown.clone();
    tasks.spawn(metrics_server.serve(async move { sd.wait().await }));
    let mut sd = shutdown;
    tasks.spawn(async move {
        sd.wait().await;
        // Whatever Kafka still holds in its send queue is flushed before exit.
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
    });
    tracing::info!(%addr, %metrics_addr, "processor-service listening");
    Ok(Running::new(addr, tasks).with_metrics_addr(metrics_addr))
}
