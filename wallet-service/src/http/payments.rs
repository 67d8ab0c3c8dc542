//! `/v1/payments` routes.

use super::error::{json_response, ApiError, ApiResult};
use super::extract::{parse_limit, parse_window, Auth, Fields, IdempotencyKey, JsonObject, PathId};
use super::guard::{Guard, Started};
use super::AppState;
use crate::outbox::Channel;
use crate::store::cursor::TimeCursor;
use crate::store::payments::{self, AcceptOutcome, ListFilter, NewPayment};
use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use serde_json::json;
use shared::ids::{PaymentId, WalletId};
use shared::status::PaymentStatus;
use std::collections::HashMap;
use tracing::Instrument;

pub async fn create(
    State(state): State<AppState>,
    Auth(principal): Auth,
    IdempotencyKey(key): IdempotencyKey,
    uri: Uri,
    JsonObject(body): JsonObject,
) -> ApiResult<Response> {
    let mut guard = match Guard::begin(
        &state.db,
        &principal.sub,
        Some(&key),
        "POST",
        uri.path(),
        &body,
    )
    .await?
    {
        Started::Replay(r) => {
            metrics::counter!("idempotent_replays_total").increment(1);
            return Ok(r);
        }
        Started::Fresh(g) => g,
    };
    let mut alerted = false;
    let outcome = async {
        let f = Fields(&body);
        let wallet_id: WalletId = f
            .str("wallet_id")?
            .parse()
            .map_err(|_| ApiError::Validation("`wallet_id` must be a UUID".into()))?;
        let amount = f.amount()?;
        let currency = f.currency()?;
        let merchant_id = f.text("merchant_id", 1, 64)?;
        let description = f.opt_text("description", 500)?;
        let traceparent = shared::trace::new_traceparent();
        let alert_threshold = state.alerts.for_currency(currency);
        let id = PaymentId::new();
        let new = NewPayment {
            id,
            wallet_id,
            owner_id: &principal.sub,
            amount,
            currency,
            merchant_id,
            description,
            alert_threshold,
        };
        let span = tracing::info_span!("accept", payment_id = %id, traceparent);
        match payments::accept(guard.conn(), new, principal.admin, &traceparent)
            .instrument(span)
            .await
            .map_err(ApiError::from_balance_write)?
        {
            AcceptOutcome::Accepted(payment) => {
                tracing::info!(
                    payment_id = %payment.id,
                    %wallet_id,
                    amount = %amount,
                    %currency,
                    merchant_id,
                    traceparent,
                    "payment accepted; funds held",
                );
                if let Some(threshold) = alert_threshold.filter(|t| amount >= *t) {
                    alerted = true;
                    tracing::warn!(
                        payment_id = %payment.id,
                        %wallet_id,
                        amount = %amount,
                        threshold = %threshold,
                        %currency,
                        "large payment: payment.alert raised",
                    );
                }
                metrics::counter!("payments_accepted_total").increment(1);
                Ok((StatusCode::ACCEPTED, json!(payment)))
            }
            AcceptOutcome::WalletNotFound => Err(ApiError::WalletNotFound),
            AcceptOutcome::NotOwner => Err(ApiError::Forbidden(
                "payments can only be made from the principal's own wallets",
            )),
            AcceptOutcome::CurrencyMismatch { wallet } => Err(ApiError::CurrencyMismatch {
                wallet: wallet.to_string(),
                requested: currency.to_string(),
            }),
            AcceptOutcome::InsufficientFunds { available } => {
                metrics::counter!("payments_refused_total", "reason" => "insufficient_funds")
                    .increment(1);
                Err(ApiError::InsufficientFunds {
                    available,
                    requested: amount.minor_units(),
                })
            }
        }
    }
    .await;
    let rings: &[Channel] = if alerted {
        &[Channel::Payments, Channel::Alerts]
    } else {
        &[Channel::Payments]
    };
    guard.finish_and_ring(outcome, &state.doorbell, rings).await
}

/// Loads a payment the principal may read; anything else is "not found", so ids of other
/// principals' payments do not leak.
pub(super) async fn visible_payment(
    conn: &mut sqlx::PgConnection,
    principal: &shared::auth::Principal,
    id: &str,
) -> ApiResult<payments::Payment> {
    let id: PaymentId = id.parse().map_err(|_| ApiError::PaymentNotFound)?;
    match payments::get(conn, id).await? {
        Some(p) if principal.can_read(&p.owner_id) => Ok(p),
        _ => Err(ApiError::PaymentNotFound),
    }
}

pub async fn get(
    State(state): State<AppState>,
    Auth(principal): Auth,
    PathId(id): PathId,
) -> ApiResult<Response> {
    let payment = visible_payment(&mut *state.db.acquire().await?, &principal, &id).await?;
    Ok(json_response(StatusCode::OK, &json!(payment)))
}

pub async fn list(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let limit = parse_limit(&q)?;
    let wallet_id = q
        .get("wallet_id")
        .map(|w| {
            w.parse::<WalletId>()
                .map_err(|_| ApiError::Validation("`wallet_id` must be a UUID".into()))
        })
        .transpose()?;
    let status = q
        .get("status")
        .map(|s| {
            PaymentStatus::parse(s).ok_or_else(|| {
                ApiError::Validation("`status` must be pending, succeeded or failed".into())
            })
        })
        .transpose()?;
    let after = q
        .get("cursor")
        .map(|c| {
            TimeCursor::decode(c)
                .ok_or_else(|| ApiError::Validation("`cursor` is not a valid cursor".into()))
        })
        .transpose()?;
    let filter = ListFilter {
        owner_id: (!principal.admin).then(|| principal.sub.clone()),
        wallet_id,
        status,
        window: parse_window(&q)?,
        after,
        limit: limit + 1,
    };
    let mut conn = state.db.acquire().await?;
    let mut rows = payments::list(&mut conn, &filter).await?;
    let next = (rows.len() as i64 > limit).then(|| {
        rows.truncate(limit as usize);
        let last = rows.last().expect("limit >= 1");
        TimeCursor {
            created_at: last.created_at,
            id: last.id,
        }
        .encode()
    });
    Ok(json_response(
        StatusCode::OK,
        &json!({ "data": rows, "next_cursor": next }),
    ))
}
