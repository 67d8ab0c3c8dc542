//! The HTTP API: routes, shared state and the middleware stack.

pub mod error;
pub mod extract;
mod guard;
mod ops;
mod payments;
pub mod rate_limit;
mod refunds;
mod wallets;

use crate::signin::Verifier;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use error::ApiError;
use shared::telemetry::ReadinessCache;
use sqlx::PgPool;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// Request bodies above this are refused with 413.
pub const BODY_LIMIT: usize = 64 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub verifier: Verifier,
    pub health: Health,
    /// Large-payment alert thresholds.
    pub alerts: Arc<crate::alerts::AlertThresholds>,
    /// Per-principal limit; `None` when disabled.
    pub limiter: Option<Arc<rate_limit::RateLimiter>>,
    /// Rung after a commit that wrote outbox rows.
    pub doorbell: crate::outbox::Doorbell,
}

/// What `/readyz` checks besides the database.
#[derive(Clone, Default)]
pub struct Health {
    /// The dispatcher is connected to RabbitMQ (absent when it runs elsewhere).
    pub amqp: Option<Arc<AtomicBool>>,
    /// A Kafka client of the result consumer's side (absent when it runs elsewhere).
    pub kafka: Option<rdkafka::producer::FutureProducer>,
    /// The last probe, reused for a second: a flood of `/readyz` does not compete with
    /// payments for the pool.
    pub cache: Arc<ReadinessCache>,
}

/// A request still running after `limit` answers 503 in the project's error format (its
/// transaction, if any, is dropped and rolls back).
async fn deadline(
    limit: Duration,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => axum::response::IntoResponse::into_response(ApiError::Timeout(limit.as_millis())),
    }
}

pub fn router(state: AppState, request_timeout: Duration) -> Router {
    let api = Router::new()
        .route("/v1/wallets", post(wallets::create))
        .route("/v1/wallets/{id}", get(wallets::get))
        .route("/v1/wallets/{id}/balance", get(wallets::balance))
        .route("/v1/wallets/{id}/deposits", post(wallets::deposit))
        .route("/v1/wallets/{id}/transactions", get(wallets::transactions))
        .route("/v1/wallets/{id}/summary", get(wallets::summary))
        .route("/v1/payments", post(payments::create).get(payments::list))
        .route("/v1/payments/{id}", get(payments::get))
        .route(
            "/v1/payments/{id}/refunds",
            post(refunds::create).get(refunds::list),
        )
        .route("/v1/refunds/{id}", get(refunds::get))
        .route("/healthz", get(shared::telemetry::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/openapi.json", get(ops::openapi))
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .fallback(|| async { ApiError::RouteNotFound })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(move |req, next| {
            deadline(request_timeout, req, next)
        }))
        .with_state(state);
    // `/metrics` is not here: it has a listener of its own (`WALLET_METRICS_BIND`).
    api.layer(axum::middleware::from_fn(shared::telemetry::track_http))
        .layer(axum::middleware::from_fn(shared::telemetry::request_span))
}
