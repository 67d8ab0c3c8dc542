//! Refund routes: `POST`/`GET /v1/payments/{id}/refunds` and `GET /v1/refunds/{id}`.
//!
//! Refunding is an operator's act (the admin scope). The payment's owner is told 403, so
//! they learn why; anyone else gets the same 404 as for a payment that does not exist.

use super::error::{json_response, ApiError, ApiResult};
use super::extract::{Auth, Fields, IdempotencyKey, JsonObject, PathId};
use super::guard::{Guard, Started};
use super::payments::visible_payment;
use super::AppState;
use crate::outbox::Channel;
use crate::store::refunds::{self, AcceptOutcome, NewRefund};
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use serde_json::{json, Value};
use shared::ids::{PaymentId, RefundId};
use shared::money::Amount;
use tracing::Instrument;

/// The longest `reason` a refund may carry.
pub const REASON_MAX_CHARS: usize = 500;

/// `amount`, when given: like a payment's amount (an integer in 1..=MAX_AMOUNT).
fn optional_amount(f: &Fields<'_>) -> ApiResult<Option<Amount>> {
    match f.0.get("amount") {
        None | Some(Value::Null) => Ok(None),
        Some(_) => f.amount().map(Some),
    }
}

pub async fn create(
    State(state): State<AppState>,
    Auth(principal): Auth,
    IdempotencyKey(key): IdempotencyKey,
    PathId(id): PathId,
    uri: Uri,
    JsonObject(body): JsonObject,
) -> ApiResult<Response> {
    if !principal.admin {
        // The owner may know the payment exists; anyone else may not.
        visible_payment(&mut *state.db.acquire().await?, &principal, &id).await?;
        return Err(ApiError::Forbidden(
            "refunds need the admin scope; ask an operator",
        ));
    }
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
    let outcome = async {
        let payment_id: PaymentId = id.parse().map_err(|_| ApiError::PaymentNotFound)?;
        let f = Fields(&body);
        let amount = optional_amount(&f)?;
        let reason = f.opt_text("reason", REASON_MAX_CHARS)?;
        let traceparent = shared::trace::new_traceparent();
        let refund_id = RefundId::new();
        let new = NewRefund {
            id: refund_id,
            payment_id,
            amount,
            reason,
        };
        let span = tracing::info_span!("refund", %refund_id, %payment_id, traceparent);
        match refunds::accept(guard.conn(), new, &traceparent)
            .instrument(span)
            .await
            .map_err(ApiError::from_balance_write)?
        {
            AcceptOutcome::Accepted(refund) => {
                tracing::info!(
                    %refund_id,
                    %payment_id,
                    wallet_id = %refund.wallet_id,
                    amount = refund.amount,
                    currency = %refund.currency,
                    operator = %principal.sub,
                    traceparent,
                    "refund accepted; amount reserved against the payment, sent to the gateway",
                );
                metrics::counter!("refunds_accepted_total").increment(1);
                Ok((StatusCode::ACCEPTED, json!(refund)))
            }
            AcceptOutcome::PaymentNotFound => Err(ApiError::PaymentNotFound),
            AcceptOutcome::NotRefundable { status } => {
                metrics::counter!("refunds_refused_total", "reason" => "payment_not_refundable")
                    .increment(1);
                Err(ApiError::PaymentNotRefundable {
                    status: status.as_str(),
                })
            }
            AcceptOutcome::ExceedsCaptured { refundable } => {
                metrics::counter!("refunds_refused_total", "reason" => "exceeds_captured")
                    .increment(1);
                Err(ApiError::RefundExceedsCaptured { refundable })
            }
        }
    }
    .await;
    guard
        .finish_and_ring(outcome, &state.doorbell, &[Channel::Payments])
        .await
}

pub async fn list(
    State(state): State<AppState>,
    Auth(principal): Auth,
    PathId(id): PathId,
) -> ApiResult<Response> {
    let mut conn = state.db.acquire().await?;
    let payment = visible_payment(&mut conn, &principal, &id).await?;
    let rows = refunds::list_for_payment(&mut conn, PaymentId(payment.id)).await?;
    Ok(json_response(StatusCode::OK, &json!({ "data": rows })))
}

pub async fn get(
    State(state): State<AppState>,
    Auth(principal): Auth,
    PathId(id): PathId,
) -> ApiResult<Response> {
    let id: RefundId = id.parse().map_err(|_| ApiError::RefundNotFound)?;
    let mut conn = state.db.acquire().await?;
    match refunds::get(&mut conn, id).await? {
        Some(refund) if principal.can_read(&refund.owner_id) => {
            Ok(json_response(StatusCode::OK, &json!(refund)))
        }
        _ => Err(ApiError::RefundNotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;
    use shared::money::MAX_AMOUNT;

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn amount_is_optional_but_checked_when_given() {
        let m = fields(json!({}));
        assert_eq!(optional_amount(&Fields(&m)).unwrap(), None);
        let m = fields(json!({"amount": null}));
        assert_eq!(optional_amount(&Fields(&m)).unwrap(), None);
        let m = fields(json!({"amount": 25}));
        assert_eq!(
            optional_amount(&Fields(&m)).unwrap(),
            Some(Amount::new(25).unwrap())
        );
        for bad in [json!(0), json!(-5), json!(1.5), json!(MAX_AMOUNT + 1)] {
            let m = fields(json!({ "amount": bad }));
            let e = optional_amount(&Fields(&m)).unwrap_err();
            assert_eq!(e.code(), "validation_failed", "{bad}");
        }
        let m = fields(json!({"amount": "5"}));
        assert_eq!(
            optional_amount(&Fields(&m)).unwrap_err().code(),
            "malformed_request"
        );
    }
}
