//! Health, readiness and the OpenAPI document.

use super::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use rdkafka::producer::Producer;
use shared::telemetry::{readiness, ReadinessCheck};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// `/readyz`: answered from a probe at most a second old (one probe at a time), so a flood
/// of unauthenticated requests costs one database query and one Kafka call per second.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let checks = state.health.cache.clone();
    readiness(checks.checks(|| probe(&state)).await)
}

async fn probe(state: &AppState) -> Vec<ReadinessCheck> {
    let mut checks = Vec::new();
    let db = tokio::time::timeout(
        Duration::from_secs(1),
        sqlx::query("SELECT 1").execute(&state.db),
    )
    .await;
    checks.push(match db {
        Ok(Ok(_)) => ReadinessCheck::ok("postgres"),
        Ok(Err(e)) => ReadinessCheck::down("postgres", e.to_string()),
        Err(_) => ReadinessCheck::down("postgres", "no answer within 1s"),
    });
    if let Some(jwks) = state.verifier.jwks() {
        checks.push(if jwks.is_ready() {
            ReadinessCheck::ok("signin")
        } else {
            ReadinessCheck::down(
                "signin",
                format!(
                    "the identity provider's keys have not been fetched yet from {}",
                    jwks.url()
                ),
            )
        });
    }
    if let Some(amqp) = &state.health.amqp {
        checks.push(if amqp.load(Ordering::Relaxed) {
            ReadinessCheck::ok("rabbitmq")
        } else {
            ReadinessCheck::down("rabbitmq", "outbox dispatcher not connected")
        });
    }
    if let Some(producer) = state.health.kafka.clone() {
        let probe = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(1))
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await;
        checks.push(match probe {
            Ok(Ok(())) => ReadinessCheck::ok("kafka"),
            Ok(Err(e)) => ReadinessCheck::down("kafka", e),
            Err(e) => ReadinessCheck::down("kafka", e.to_string()),
        });
    }
    checks
}

static OPENAPI: &str = include_str!("../../openapi.json");

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}
