//! Starting and stopping the whole service: pool, HTTP server, outbox relays and consumer.

use crate::config::{BrokerConfig, DbConfig, DispatcherConfig, ServeConfig};
use crate::finalizer::{self, Finalizer};
use crate::http::{self, AppState, Health};
use crate::outbox::dispatcher::{self, Dispatcher};
use crate::outbox::relay::{self, EventRelay};
use crate::outbox::{Chimes, Doorbell};
use crate::signin::Verifier;
use anyhow::Context;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureProducer;
use shared::db::DbTarget;
use shared::shutdown::Shutdown;
use shared::topology::KafkaTopics;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// A pool that fails fast when PostgreSQL is away instead of hanging requests. When
/// `DATABASE_URL` names several hosts (a primary and standbys), the pool follows the primary
/// ([`shared::db`]).
pub async fn connect_db(cfg: &DbConfig) -> anyhow::Result<PgPool> {
    let target = DbTarget::parse(&cfg.database_url).context("DATABASE_URL")?;
    Ok(shared::db::primary_pool(target, pool_options(cfg), |o| session(cfg, o)).await)
}

/// The service's pool on `options` (the tests' databases come with their own), sized and
/// timed by `cfg`, every connection with the service's session settings.
pub fn pool_with(cfg: &DbConfig, options: PgConnectOptions) -> PgPool {
    pool_options(cfg).connect_lazy_with(session(cfg, options))
}

/// Session settings: a statement or lock wait ends in an error (a 503 the client may retry)
/// well before the request deadline, instead of leaving the statement running after the
/// request was abandoned.
fn session(cfg: &DbConfig, options: PgConnectOptions) -> PgConnectOptions {
    options.application_name("wallet-service").options([
        (
            "statement_timeout",
            cfg.db_statement_timeout.as_millis().to_string(),
        ),
        ("lock_timeout", cfg.lock_timeout().as_millis().to_string()),
    ])
}

fn pool_options(cfg: &DbConfig) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(cfg.db_max_connections)
        .acquire_timeout(cfg.db_acquire_timeout)
}

pub fn describe_metrics() {
    metrics::describe_counter!("payments_accepted_total", "Payments accepted (funds held).");
    metrics::describe_counter!("payments_refused_total", "Payments refused, by reason.");
    metrics::describe_counter!("deposits_total", "Deposits credited.");
    metrics::describe_counter!(
        "auth_jwks_fetches_total",
        "Fetches of the identity provider's JWKS, by result (ok, error)."
    );
    metrics::describe_counter!(
        "idempotent_replays_total",
        "Payment requests answered from a stored idempotent response."
    );
    metrics::describe_gauge!(
        "db_primary_available",
        "1 while the PostgreSQL host in use answers as the primary (only with several hosts)."
    );
    metrics::describe_counter!(
        "db_primary_changes_total",
        "Times the pool was pointed at a new PostgreSQL primary (failovers followed)."
    );
    dispatcher::describe_metrics();
    relay::describe_metrics();
    finalizer::describe_metrics();
    crate::reconciler::describe_metrics();
    crate::housekeeping::describe_metrics();
    // Series exist from the start (at 0), so rate() and alerts see their first increment.
    for reason in [
        "not_json",
        "wrong_type",
        "unsupported_version",
        "invalid",
        "unknown_payment",
        "unknown_refund",
        "refused_by_database",
    ] {
        metrics::counter!("results_dead_lettered_total", "reason" => reason).increment(0);
    }
    let topics = KafkaTopics::default();
    for topic in [topics.events, topics.alerts] {
        metrics::counter!("events_published_total", "topic" => topic).increment(0);
    }
    for kind in ["event", "payment_final", "refund_final"] {
        metrics::counter!("results_duplicates_total", "kind" => kind).increment(0);
    }
    for (outcome, reason) in [
        ("succeeded", ""),
        ("failed", "declined"),
        ("failed", "gateway_unavailable"),
    ] {
        metrics::counter!("payments_finalized_total", "outcome" => outcome, "reason" => reason)
            .increment(0);
    }
    metrics::counter!("payments_refused_total", "reason" => "insufficient_funds").increment(0);
    for (outcome, reason) in [
        ("succeeded", ""),
        ("failed", "declined"),
        ("failed", "not_refundable"),
    ] {
        metrics::counter!("refunds_finalized_total", "outcome" => outcome, "reason" => reason)
            .increment(0);
    }
    for reason in ["payment_not_refundable", "exceeds_captured"] {
        metrics::counter!("refunds_refused_total", "reason" => reason).increment(0);
    }
    for name in [
        "payments_accepted_total",
        "deposits_total",
        "idempotent_replays_total",
        "outbox_published_total",
        "outbox_publish_failures_total",
        "events_publish_failures_total",
        "payments_redriven_total",
        "results_consumed_total",
        "payment_outcome_conflicts_total",
        "payments_redrive_exhausted_total",
        "refunds_accepted_total",
        "refunds_refunded_minor_units_total",
        "refund_outcome_conflicts_total",
        "refunds_redriven_total",
    ] {
        metrics::counter!(name).increment(0);
    }
}

pub use shared::shutdown::Running;

/// The outbox relays (payment requests to RabbitMQ, events to Kafka), started the same way by
/// `serve` (with `RUN_DISPATCHER`) and by `dispatch`. Returns the RabbitMQ connection flag
/// `/readyz` reports.
///
/// With `chimes`, the relays also wake when this process's doorbell rings.
pub fn spawn_relays(
    tasks: &mut JoinSet<()>,
    pool: &PgPool,
    producer: FutureProducer,
    brokers: &BrokerConfig,
    cfg: &DispatcherConfig,
    chimes: Option<Chimes>,
    shutdown: &Shutdown,
) -> Arc<AtomicBool> {
    let mut d = Dispatcher::new(pool.clone(), brokers, cfg.clone());
    let mut relay = EventRelay::new(pool.clone(), producer, brokers, cfg.clone());
    if let Some(chimes) = chimes {
        d = d.with_chime(chimes.payments);
        relay = relay.with_chime(chimes.events);
    }
    let connected = d.connected.clone();
    tasks.spawn(d.run(shutdown.clone()));
    tasks.spawn(relay.run(shutdown.clone()));
    connected
}

/// `wallet-service dispatch`: the relays and housekeeping, no API, no consumer.
pub async fn dispatch(
    db: DbConfig,
    brokers: BrokerConfig,
    cfg: DispatcherConfig,
    (metrics_bind, metrics): (&str, shared::telemetry::PrometheusHandle),
    shutdown: Shutdown,
) -> anyhow::Result<Running> {
    shared::kafka::check_env()?;
    describe_metrics();
    let pool = connect_db(&db).await?;
    let producer = shared::kafka::producer(&brokers.kafka_brokers)?;
    let mut tasks = JoinSet::new();
    spawn_relays(&mut tasks, &pool, producer, &brokers, &cfg, None, &shutdown);
    tasks.spawn(crate::housekeeping::run(
        pool,
        cfg.retention(),
        shutdown.clone(),
    ));
    let metrics_server = shared::telemetry::MetricsServer::bind(metrics_bind, metrics).await?;
    let metrics_addr = metrics_server.local_addr()?;
    let mut sd = shutdown;
    tasks.spawn(metrics_server.serve(async move { sd.wait().await }));
    tracing::info!(%metrics_addr, "wallet-service dispatcher running");
    Ok(Running::new(metrics_addr, tasks).with_metrics_addr(metrics_addr))
}

pub async fn start(
    cfg: ServeConfig,
    metrics: shared::telemetry::PrometheusHandle,
    shutdown: Shutdown,
) -> anyhow::Result<Running> {
    cfg.db.check_fits_in(cfg.request_timeout)?;
    let pool = connect_db(&cfg.db).await?;
    start_with_pool(cfg, pool, metrics, shutdown).await
}

/// Starts the service on an existing pool (tests hand in one from [`pool_with`] on a fresh
/// database).
pub async fn start_with_pool(
    cfg: ServeConfig,
    pool: PgPool,
    metrics: shared::telemetry::PrometheusHandle,
    shutdown: Shutdown,
) -> anyhow::Result<Running> {
    // Before anything else: sign-in settings that cannot work are an operator's error, said
    // plainly (a weak AUTH_JWT_SECRET, both modes, a JWKS without issuer and audience).
    let verifier = Verifier::from_config(&cfg.auth)?;
    shared::kafka::check_env()?;
    describe_metrics();
    // Migrations need the database; retry for a while so start order does not matter.
    let mut tries = 0;
    loop {
        match crate::migrate(&pool).await {
            Ok(()) => break,
            Err(e) if tries < 30 => {
                tries += 1;
                tracing::warn!(error = %e, "cannot apply migrations yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e).context("applying migrations"),
        }
    }

    let prefix = cfg.brokers.broker_prefix.clone();
    let mut tasks = JoinSet::new();
    if let Some(jwks) = verifier.jwks() {
        // One try before serving; if the provider is away, the API comes up answering 503
        // (and not ready) until a retry in the background succeeds.
        let _ = jwks.refresh_now("service start").await;
        tasks.spawn(jwks.clone().keep_fresh(shutdown.clone()));
    }
    let mut health = Health::default();

    // One Kafka producer serves the event relay, the result consumer's dead letters and the
    // readiness probe.
    let producer = if cfg.run_dispatcher || cfg.run_finalizer {
        Some(shared::kafka::producer(&cfg.brokers.kafka_brokers)?)
    } else {
        None
    };

    // What writes outbox rows here rings the relays after committing: in memory when they
    // run here, with a NOTIFY when they run elsewhere.
    let doorbell = match producer.clone().filter(|_| cfg.run_dispatcher) {
        Some(producer) => {
            let (doorbell, chimes) = Doorbell::local();
            health.amqp = Some(spawn_relays(
                &mut tasks,
                &pool,
                producer,
                &cfg.brokers,
                &cfg.dispatcher,
                Some(chimes),
                &shutdown,
            ));
            doorbell
        }
        None => Doorbell::remote(&mut tasks, &pool, &shutdown),
    };
    // Whatever else this instance runs: the tables it writes must not grow without end.
    tasks.spawn(crate::housekeeping::run(
        pool.clone(),
        cfg.dispatcher.retention(),
        shutdown.clone(),
    ));

    if cfg.reconcile_after_secs > 0.0 {
        let r = crate::reconciler::Reconciler {
            pool: pool.clone(),
            policy: crate::reconciler::RedrivePolicy {
                deadline: Duration::from_secs_f64(cfg.reconcile_after_secs),
                max_backoff: Duration::from_secs_f64(cfg.reconcile_max_backoff_secs),
                max_redrives: cfg.reconcile_max_redrives,
            },
            batch_size: 500,
            doorbell: doorbell.clone(),
        };
        tasks.spawn(r.run(shutdown.clone()));
    }

    if let Some(producer) = producer.filter(|_| cfg.run_finalizer) {
        let topics = KafkaTopics::with_prefix(&prefix);
        let brokers = cfg.brokers.kafka_brokers.clone();
        let group = cfg.consumer_group.clone();
        let batch_size = cfg.results_batch_size;
        health.kafka = Some(producer.clone());
        let pool = pool.clone();
        let doorbell = doorbell.clone();
        let mut sd = shutdown.clone();
        tasks.spawn(async move {
            // Topic creation needs the broker; keep trying in the background so the API
            // comes up (and reports Kafka as down) even while Kafka is away.
            if !topics.create_when_ready(&brokers, &mut sd).await {
                return;
            }
            loop {
                let consumer = match shared::kafka::consumer(&brokers, &group) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot create the Kafka consumer");
                        return;
                    }
                };
                if let Err(e) = consumer.subscribe(&[&topics.results]) {
                    tracing::error!(error = %e, "cannot subscribe to the results topic");
                    return;
                }
                tracing::info!(topic = %topics.results, "result consumer subscribed");
                let f = Finalizer {
                    pool: pool.clone(),
                    consumer: Arc::new(consumer),
                    group: group.clone(),
                    producer: producer.clone(),
                    topics: topics.clone(),
                    batch_size,
                    doorbell: doorbell.clone(),
                };
                if f.run(sd.clone()).await == finalizer::Stopped::Shutdown {
                    return;
                }
            }
        });
    }

    let state = AppState {
        db: pool.clone(),
        verifier,
        health,
        alerts: Arc::new(cfg.alert_thresholds.clone()),
        doorbell,
        limiter: (cfg.rate_limit_per_sec > 0).then(|| {
            Arc::new(crate::http::rate_limit::RateLimiter::new(
                cfg.rate_limit_per_sec,
                cfg.rate_limit_burst,
            ))
        }),
    };
    let app = http::router(state, cfg.request_timeout);
    let listener = TcpListener::bind(&cfg.bind)
        .await
        .with_context(|| format!("binding {}", cfg.bind))?;
    let addr = listener.local_addr()?;
    let mut sd = shutdown.clone();
    tasks.spawn(async move {
        let serve =
            axum::serve(listener, app).with_graceful_shutdown(async move { sd.wait().await });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "HTTP server failed");
        }
        tracing::info!("HTTP server drained");
    });
    let metrics_server = shared::telemetry::MetricsServer::bind(&cfg.metrics_bind, metrics).await?;
    let metrics_addr = metrics_server.local_addr()?;
    let mut sd = shutdown.clone();
    tasks.spawn(metrics_server.serve(async move { sd.wait().await }));
    tracing::info!(%addr, %metrics_addr, "wallet-service listening");
    Ok(Running::new(addr, tasks).with_metrics_addr(metrics_addr))
}
