//! Routes, request validation and the charge flow.

use crate::config::{Behaviour, BehaviourPatch};
use crate::store::{Charge, ChargeStatus, Claim};
use crate::Gateway;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::from_fn;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use shared::telemetry::{healthz, readiness, request_span, track_http, ReadinessCheck};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

/// The public routes. `/metrics` is not among them: it has a listener of its own
/// (`GATEWAY_METRICS_BIND`, [`shared::telemetry::MetricsServer`]).
pub fn app(gateway: Arc<Gateway>) -> Router {
    describe_metrics();
    let api = Router::new()
        .route("/v1/charges", post(create_charge))
        .route("/v1/charges/{idempotency_key}", get(get_charge))
        .route("/v1/charges/{idempotency_key}/void", post(void_charge))
        .route(
            "/v1/charges/{idempotency_key}/refunds",
            post(crate::refunds::create).get(crate::refunds::list),
        )
        .route("/v1/stats", get(stats))
        .route("/v1/admin/behaviour", get(get_behaviour).put(put_behaviour))
        .route("/healthz", get(healthz))
        // Nothing to probe (no dependencies), hence nothing to cache.
        .route(
            "/readyz",
            get(|| async { readiness(vec![ReadinessCheck::ok("gateway")]) }),
        )
        .with_state(gateway);
    api.layer(from_fn(track_http)).layer(from_fn(request_span))
}

fn describe_metrics() {
    crate::refunds::describe_metrics();
    crate::retention::describe_metrics();
    metrics::describe_counter!(
        "gateway_charge_requests_total",
        "Charge requests answered, by result: succeeded, declined, unavailable, replayed, \
         in_progress (same key being processed) or reused (same key, different charge)."
    );
    metrics::describe_histogram!(
        "gateway_charge_duration_seconds",
        metrics::Unit::Seconds,
        "Time to answer a charge request, simulated latency included, by result."
    );
}

#[derive(Debug, Deserialize)]
struct ChargeRequest {
    amount: i64,
    currency: String,
    merchant_id: String,
    reference: Option<String>,
}

impl ChargeRequest {
    fn validate(&self) -> Result<(), &'static str> {
        if self.amount <= 0 {
            Err("amount must be positive")
        } else if self.currency.is_empty() || self.merchant_id.is_empty() {
            Err("currency and merchant_id must not be empty")
        } else {
            Ok(())
        }
    }

    /// Whether a stored charge answers this request; the reference is a free-form note
    /// and does not count.
    fn matches(&self, charge: &Charge) -> bool {
        self.amount == charge.amount
            && self.currency == charge.currency
            && self.merchant_id == charge.merchant_id
    }
}

/// How a well-formed charge request ended.
enum ChargeAnswer {
    Charged(Charge),
    Replayed(Charge),
    Unavailable,
    InProgress,
    Reused,
    /// The key was voided earlier: this request will never be charged.
    Voided,
}

impl ChargeAnswer {
    fn label(&self) -> &'static str {
        match self {
            ChargeAnswer::Charged(c) if c.status == ChargeStatus::Declined => "declined",
            ChargeAnswer::Charged(_) => "succeeded",
            ChargeAnswer::Replayed(_) => "replayed",
            ChargeAnswer::Unavailable => "unavailable",
            ChargeAnswer::InProgress => "in_progress",
            ChargeAnswer::Reused => "reused",
            ChargeAnswer::Voided => "voided",
        }
    }
}

impl IntoResponse for ChargeAnswer {
    fn into_response(self) -> Response {
        match self {
            ChargeAnswer::Charged(charge) => Json(charge).into_response(),
            ChargeAnswer::Replayed(charge) => {
                ([("idempotent-replayed", "true")], Json(charge)).into_response()
            }
            ChargeAnswer::Unavailable => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ChargeAnswer::InProgress => error(StatusCode::CONFLICT, "request_in_progress"),
            ChargeAnswer::Reused => {
                error(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
            }
            ChargeAnswer::Voided => error(StatusCode::CONFLICT, "charge_voided"),
        }
    }
}

async fn create_charge(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Result<Json<ChargeRequest>, JsonRejection>,
) -> Response {
    let started = Instant::now();
    gw.requests.fetch_add(1, Relaxed);
    let Some(key) = idempotency_key(&headers) else {
        return key_missing();
    };
    let request = match body {
        Ok(Json(request)) => request,
        Err(rejection) => return invalid_request(rejection.body_text()),
    };
    if let Err(why) = request.validate() {
        return invalid_request(why);
    }

    let work = {
        let (gw, key) = (Arc::clone(&gw), key.to_owned());
        async move { charge(&gw, &key, request).await }
    };
    let outcome = match detached("charge", key, work).await {
        Ok(outcome) => outcome,
        Err(answer) => return answer,
    };
    match &outcome {
        ChargeAnswer::Replayed(_) => gw.replays.fetch_add(1, Relaxed),
        ChargeAnswer::Unavailable => gw.unavailable.fetch_add(1, Relaxed),
        _ => 0,
    };
    let result = outcome.label();
    metrics::counter!("gateway_charge_requests_total", "result" => result).increment(1);
    metrics::histogram!("gateway_charge_duration_seconds", "result" => result)
        .record(started.elapsed().as_secs_f64());
    tracing::debug!(key, result, "charge request answered");
    outcome.into_response()
}

async fn charge(gw: &Gateway, key: &str, request: ChargeRequest) -> std::io::Result<ChargeAnswer> {
    let claim = match gw.store.claim(key) {
        Claim::Existing(charge) if charge.status == ChargeStatus::Voided => {
            return Ok(ChargeAnswer::Voided)
        }
        Claim::Existing(charge) if request.matches(&charge) => {
            return Ok(ChargeAnswer::Replayed(charge))
        }
        Claim::Existing(_) => return Ok(ChargeAnswer::Reused),
        Claim::InProgress => return Ok(ChargeAnswer::InProgress),
        Claim::Claimed(claim) => claim,
    };
    let behaviour = gw.behaviour();
    tokio::time::sleep(gw.latency(behaviour.latency_ms)).await;
    let Some(status) = gw.decide(&request.merchant_id, &behaviour) else {
        return Ok(ChargeAnswer::Unavailable);
    };
    let charge = Charge {
        id: format!("ch_{}", uuid::Uuid::now_v7().simple()),
        idempotency_key: key.to_owned(),
        status,
        amount: request.amount,
        currency: request.currency,
        merchant_id: request.merchant_id,
        reference: request.reference,
        decline_code: (status == ChargeStatus::Declined).then(|| "card_declined".to_owned()),
        created_at: chrono::Utc::now(),
    };
    // On a blocking thread (fsync), which also runs to the end if the client goes away:
    // the key stays claimed until the charge is stored, so a retry can never charge twice.
    tokio::task::spawn_blocking(move || claim.record(charge))
        .await
        .map_err(std::io::Error::other)?
        .map(ChargeAnswer::Charged)
}

async fn get_charge(State(gw): State<Arc<Gateway>>, Path(key): Path<String>) -> Response {
    match gw.store.lookup(&key) {
        Ok(Some(charge)) => Json(charge).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "not_found"),
        Err(()) => error(StatusCode::CONFLICT, "request_in_progress"),
    }
}

/// Closes a key for good: answers the key's charge if there is one, otherwise records a
/// `voided` entry so that no later request can charge it. This is what lets a client
/// that lost track of a request (timeouts) conclude "not charged" with certainty.
async fn void_charge(State(gw): State<Arc<Gateway>>, Path(key): Path<String>) -> Response {
    let claim = match gw.store.claim(&key) {
        Claim::Existing(charge) => return Json(charge).into_response(),
        Claim::InProgress => return error(StatusCode::CONFLICT, "request_in_progress"),
        Claim::Claimed(claim) => claim,
    };
    let voided = Charge {
        id: format!("void_{}", uuid::Uuid::now_v7().simple()),
        idempotency_key: key.clone(),
        status: ChargeStatus::Voided,
        amount: 0,
        currency: String::new(),
        merchant_id: String::new(),
        reference: None,
        decline_code: None,
        created_at: chrono::Utc::now(),
    };
    match tokio::task::spawn_blocking(move || claim.record(voided)).await {
        Ok(Ok(charge)) => {
            metrics::counter!("gateway_charge_requests_total", "result" => "voided_key")
                .increment(1);
            tracing::info!(key, "key voided: it can no longer be charged");
            Json(charge).into_response()
        }
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, "storage_failed"),
    }
}

/// The store's counts, and the request counters since start (charges and refunds alike).
async fn stats(State(gw): State<Arc<Gateway>>) -> Json<serde_json::Value> {
    let (charges, refunds) = gw.store.counts();
    Json(json!({
        "charges": charges.succeeded,
        "declined": charges.declined,
        "voided": charges.voided,
        "requests": gw.requests.load(Relaxed),
        "replays": gw.replays.load(Relaxed),
        "unavailable": gw.unavailable.load(Relaxed),
        "refunds": refunds.succeeded,
        "refunds_declined": refunds.declined,
        "refunded_amount": refunds.refunded_amount,
        // Charges older than this may be forgotten (404): clients checking old charges
        // (the load generator) tell those apart from missing ones.
        "retention_secs": gw.retention_secs,
        "forgotten_charges": gw.store.forgotten_charges(),
    }))
}

async fn get_behaviour(State(gw): State<Arc<Gateway>>) -> Json<Behaviour> {
    Json(gw.behaviour())
}

async fn put_behaviour(
    State(gw): State<Arc<Gateway>>,
    body: Result<Json<BehaviourPatch>, JsonRejection>,
) -> Response {
    let patch = match body {
        Ok(Json(patch)) => patch,
        Err(rejection) => return invalid_request(rejection.body_text()),
    };
    match gw.update_behaviour(patch) {
        Ok(behaviour) => {
            tracing::info!(?behaviour, "behaviour changed");
            Json(behaviour).into_response()
        }
        Err(why) => invalid_request(why),
    }
}

/// The request's `Idempotency-Key`, when it has a usable one.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
}

/// The answer to a request without an `Idempotency-Key`.
pub(crate) fn key_missing() -> Response {
    error(StatusCode::BAD_REQUEST, "idempotency_key_missing")
}

/// Runs `work` (a charge or a refund under `key`) detached: like a real gateway, work that
/// started runs to its end even if the client hangs up. A storage failure is the 500 answer.
pub(crate) async fn detached<T: Send + 'static>(
    what: &'static str,
    key: &str,
    work: impl std::future::Future<Output = std::io::Result<T>> + Send + 'static,
) -> Result<T, Response> {
    match tokio::spawn(work).await.map_err(std::io::Error::other) {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) | Err(e) => {
            tracing::error!(key, error = %e, "could not record {what}");
            Err(error(StatusCode::INTERNAL_SERVER_ERROR, "storage_failed"))
        }
    }
}

pub(crate) fn error(status: StatusCode, code: &'static str) -> Response {
    (status, Json(json!({ "error": code }))).into_response()
}

pub(crate) fn invalid_request(detail: impl Into<String>) -> Response {
    let body = json!({ "error": "invalid_request", "detail": detail.into() });
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}
