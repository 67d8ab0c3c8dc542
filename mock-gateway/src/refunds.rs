//! Refunds of succeeded charges: `POST /v1/charges/{key}/refunds` (idempotent by the
//! refund's own `Idempotency-Key`) and `GET /v1/charges/{key}/refunds`.
//!
//! A charge is never refunded beyond what it charged, whatever the concurrency: the check
//! and the reservation of the amount happen in one step under the store's lock, and a refund
//! in flight keeps its amount reserved until it is recorded or given up.

use crate::http::{detached, error, idempotency_key, invalid_request, key_missing};
use crate::store::{lock, Charge, Store};
use crate::Gateway;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use shared::gateway::{refund_refusal, ChargeStatus, RefundRequest, RefundStatus};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

/// The merchant whose charges succeed and whose refunds are always declined.
pub const DECLINES_REFUNDS: &str = "test_refund_decline";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refund {
    pub id: String,
    /// The refund's own key (the wallet's refund id).
    pub idempotency_key: String,
    /// The key of the refunded charge (the payment id).
    pub charge_key: String,
    pub charge_id: String,
    pub status: RefundStatus,
    pub amount: i64,
    pub currency: String,
    pub decline_code: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// One charge's refunds: their keys in order, what succeeded, and what is in flight.
#[derive(Default)]
struct ChargeRefunds {
    keys: Vec<String>,
    refunded: i64,
    reserved: i64,
}

/// Refunds by status, for `/v1/stats`. Declined refunds moved no money, so only the
/// succeeded ones are in `refunded_amount`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RefundCounts {
    pub succeeded: u64,
    pub declined: u64,
    pub refunded_amount: i64,
}

/// Every refund by its key, with per-charge totals and running counts, so that no request
/// scans all refunds.
#[derive(Default)]
pub(crate) struct Refunds {
    by_key: HashMap<String, Refund>,
    /// Refund keys being processed; each one's amount is reserved on its charge.
    in_flight: HashSet<String>,
    by_charge: HashMap<String, ChargeRefunds>,
    counts: RefundCounts,
}

impl Refunds {
    pub(crate) fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Adds a recorded refund (from the data file, or once it was written there).
    pub(crate) fn insert(&mut self, refund: Refund) {
        if self.by_key.contains_key(&refund.idempotency_key) {
            return;
        }
        let charge = self.by_charge.entry(refund.charge_key.clone()).or_default();
        charge.keys.push(refund.idempotency_key.clone());
        match refund.status {
            RefundStatus::Succeeded => {
                charge.refunded += refund.amount;
                self.counts.succeeded += 1;
                self.counts.refunded_amount += refund.amount;
            }
            RefundStatus::Declined => self.counts.declined += 1,
        }
        self.by_key.insert(refund.idempotency_key.clone(), refund);
    }

    pub(crate) fn counts(&self) -> RefundCounts {
        self.counts
    }

    /// When the charge's latest refund was made, if it has any.
    pub(crate) fn latest(&self, charge_key: &str) -> Option<DateTime<Utc>> {
        let charge = self.by_charge.get(charge_key)?;
        charge
            .keys
            .iter()
            .filter_map(|k| self.by_key.get(k))
            .map(|r| r.created_at)
            .max()
    }

    /// Whether a refund of the charge is being processed (its amount is reserved).
    pub(crate) fn in_flight_on(&self, charge_key: &str) -> bool {
        self.by_charge
            .get(charge_key)
            .is_some_and(|c| c.reserved > 0)
    }

    /// Drops the charge's refunds, returning how many there were. The running counts keep
    /// them: `/v1/stats` counts since start.
    pub(crate) fn forget_charge(&mut self, charge_key: &str) -> usize {
        let Some(charge) = self.by_charge.remove(charge_key) else {
            return 0;
        };
        for key in &charge.keys {
            self.by_key.remove(key);
        }
        charge.keys.len()
    }

    /// Every recorded refund, in no particular order.
    pub(crate) fn all(&self) -> impl Iterator<Item = &Refund> {
        self.by_key.values()
    }

    /// Takes `key` and `amount` off what the charge has left, if it is enough. Only ever
    /// called under the store's lock: this check-and-reserve is the one step that keeps
    /// concurrent refunds with different keys from exceeding the charge together.
    fn reserve(&mut self, charge: &Charge, key: &str, amount: i64) -> Result<(), i64> {
        let totals = self
            .by_charge
            .entry(charge.idempotency_key.clone())
            .or_default();
        let refundable = charge.amount - totals.refunded - totals.reserved;
        if amount > refundable {
            return Err(refundable);
        }
        totals.reserved += amount;
        self.in_flight.insert(key.to_owned());
        Ok(())
    }

    /// Gives back what [`Refunds::reserve`] took.
    fn release(&mut self, charge_key: &str, key: &str, amount: i64) {
        self.in_flight.remove(key);
        if let Some(totals) = self.by_charge.get_mut(charge_key) {
            totals.reserved -= amount;
        }
    }
}

/// What a refund request finds.
enum Claim {
    Existing(Refund),
    InProgress,
    NotRefundable,
    Exceeds { refundable: i64 },
    Claimed(InFlight),
}

/// A refund key reserved by one request, with its amount reserved on the charge; dropping it
/// without [`InFlight::record`] (an outage) frees both.
struct InFlight {
    store: Arc<Store>,
    key: String,
    amount: i64,
    /// The refunded charge, as it was when the refund was claimed (charges never change).
    charge: Charge,
    /// Set once recorded: the reservation became part of the refunded total then.
    recorded: bool,
}

/// Looks the refund key and the charge up, and claims both if the refund can go ahead: all
/// under one lock, so that nothing can slip in between the checks and the reservation.
fn claim(store: &Arc<Store>, charge_key: &str, key: &str, amount: i64) -> Claim {
    let mut keys = lock(&store.keys);
    if let Some(refund) = keys.refunds.by_key.get(key) {
        return Claim::Existing(refund.clone());
    }
    if keys.refunds.in_flight.contains(key) {
        return Claim::InProgress;
    }
    let charge = match keys.charges.get(charge_key) {
        Some(charge) if charge.status == ChargeStatus::Succeeded => charge.clone(),
        Some(_) => return Claim::NotRefundable,
        // Not charged *yet*: a refusal now could be wrong a moment later.
        None if keys.in_flight.contains(charge_key) => return Claim::InProgress,
        None => return Claim::NotRefundable,
    };
    match keys.refunds.reserve(&charge, key, amount) {
        Err(refundable) => Claim::Exceeds { refundable },
        Ok(()) => Claim::Claimed(InFlight {
            store: Arc::clone(store),
            key: key.to_owned(),
            amount,
            charge,
            recorded: false,
        }),
    }
}

impl InFlight {
    /// Writes the refund to the data file (fsync), then makes it visible and turns the
    /// reservation into refunded amount in one step (never counted twice, so a concurrent
    /// refund is never refused for an amount that is in fact left). Blocking.
    fn record(mut self, refund: Refund) -> std::io::Result<Refund> {
        self.store.record(&refund, |keys| {
            keys.insert_refund(refund.clone());
            keys.refunds
                .release(&self.charge.idempotency_key, &self.key, self.amount);
        })?;
        self.recorded = true;
        Ok(refund)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.recorded {
            lock(&self.store.keys).refunds.release(
                &self.charge.idempotency_key,
                &self.key,
                self.amount,
            );
        }
    }
}

/// How a well-formed refund request ended.
enum Answer {
    Made(Refund),
    Replayed(Refund),
    Unavailable,
    InProgress,
    Reused,
    NotRefundable,
    Exceeds { refundable: i64 },
}

impl Answer {
    fn label(&self) -> &'static str {
        match self {
            Answer::Made(r) if r.status == RefundStatus::Declined => "declined",
            Answer::Made(_) => "succeeded",
            Answer::Replayed(_) => "replayed",
            Answer::Unavailable => "unavailable",
            Answer::InProgress => "in_progress",
            Answer::Reused => "reused",
            Answer::NotRefundable => "not_refundable",
            Answer::Exceeds { .. } => "exceeds_charge",
        }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        match self {
            Answer::Made(refund) => Json(refund).into_response(),
            Answer::Replayed(refund) => {
                ([("idempotent-replayed", "true")], Json(refund)).into_response()
            }
            Answer::Unavailable => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Answer::InProgress => error(StatusCode::CONFLICT, "request_in_progress"),
            Answer::Reused => error(StatusCode::UNPROCESSABLE_ENTITY, refund_refusal::KEY_REUSED),
            Answer::NotRefundable => {
                error(StatusCode::CONFLICT, refund_refusal::CHARGE_NOT_REFUNDABLE)
            }
            Answer::Exceeds { refundable } => {
                let body =
                    json!({ "error": refund_refusal::EXCEEDS_CHARGE, "refundable": refundable });
                (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
            }
        }
    }
}

pub fn describe_metrics() {
    metrics::describe_counter!(
        "gateway_refund_requests_total",
        "Refund requests answered, by result: succeeded, declined, replayed, unavailable, \
         in_progress, reused, not_refundable or exceeds_charge."
    );
    metrics::describe_histogram!(
        "gateway_refund_duration_seconds",
        metrics::Unit::Seconds,
        "Time to answer a refund request, simulated latency included, by result."
    );
}

pub async fn create(
    State(gw): State<Arc<Gateway>>,
    Path(charge_key): Path<String>,
    headers: HeaderMap,
    body: Result<Json<RefundRequest>, JsonRejection>,
) -> Response {
    let started = Instant::now();
    gw.requests.fetch_add(1, Relaxed);
    let Some(key) = idempotency_key(&headers) else {
        return key_missing();
    };
    let amount = match body {
        Ok(Json(RefundRequest { amount })) if amount > 0 => amount,
        Ok(_) => return invalid_request("amount must be positive"),
        Err(rejection) => return invalid_request(rejection.body_text()),
    };
    let work = {
        let (gw, key) = (Arc::clone(&gw), key.to_owned());
        async move { refund(&gw, &charge_key, &key, amount).await }
    };
    let answer = match detached("refund", key, work).await {
        Ok(answer) => answer,
        Err(response) => return response,
    };
    match answer {
        Answer::Replayed(_) => gw.replays.fetch_add(1, Relaxed),
        Answer::Unavailable => gw.unavailable.fetch_add(1, Relaxed),
        _ => 0,
    };
    let result = answer.label();
    metrics::counter!("gateway_refund_requests_total", "result" => result).increment(1);
    metrics::histogram!("gateway_refund_duration_seconds", "result" => result)
        .record(started.elapsed().as_secs_f64());
    tracing::debug!(key, result, "refund request answered");
    answer.into_response()
}

async fn refund(gw: &Gateway, charge_key: &str, key: &str, amount: i64) -> std::io::Result<Answer> {
    let held = match claim(&gw.store, charge_key, key, amount) {
        Claim::Existing(r) if r.charge_key == charge_key && r.amount == amount => {
            return Ok(Answer::Replayed(r))
        }
        Claim::Existing(_) => return Ok(Answer::Reused),
        Claim::InProgress => return Ok(Answer::InProgress),
        Claim::NotRefundable => return Ok(Answer::NotRefundable),
        Claim::Exceeds { refundable } => return Ok(Answer::Exceeds { refundable }),
        Claim::Claimed(held) => held,
    };
    let behaviour = gw.behaviour();
    tokio::time::sleep(gw.latency(behaviour.latency_ms)).await;
    if gw.outage(&behaviour) {
        return Ok(Answer::Unavailable);
    }
    let status = if held.charge.merchant_id == DECLINES_REFUNDS {
        RefundStatus::Declined
    } else {
        RefundStatus::Succeeded
    };
    let refund = Refund {
        id: format!("re_{}", uuid::Uuid::now_v7().simple()),
        idempotency_key: key.to_owned(),
        charge_key: charge_key.to_owned(),
        charge_id: held.charge.id.clone(),
        status,
        amount,
        currency: held.charge.currency.clone(),
        decline_code: (status == RefundStatus::Declined).then(|| "refund_declined".to_owned()),
        created_at: Utc::now(),
    };
    // On a blocking thread (fsync); the reservation holds until the refund is visible.
    tokio::task::spawn_blocking(move || held.record(refund))
        .await
        .map_err(std::io::Error::other)?
        .map(Answer::Made)
}

/// `GET /v1/charges/{key}/refunds`: the charge's refunds, oldest first.
pub async fn list(State(gw): State<Arc<Gateway>>, Path(charge_key): Path<String>) -> Response {
    let keys = lock(&gw.store.keys);
    if !keys.charges.contains_key(&charge_key) {
        return error(StatusCode::NOT_FOUND, "not_found");
    }
    let data: Vec<&Refund> = keys
        .refunds
        .by_charge
        .get(&charge_key)
        .map(|c| {
            c.keys
                .iter()
                .filter_map(|k| keys.refunds.by_key.get(k))
                .collect()
        })
        .unwrap_or_default();
    Json(json!({ "data": data })).into_response()
}
