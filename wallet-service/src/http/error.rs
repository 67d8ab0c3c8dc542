//! The one mapping from failures to HTTP: RFC 9457 problem+json with a stable `code`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("wallet not found")]
    WalletNotFound,
    #[error("payment not found")]
    PaymentNotFound,
    #[error("refund not found")]
    RefundNotFound,
    #[error("only a succeeded payment can be refunded; this one is {status}")]
    PaymentNotRefundable { status: &'static str },
    #[error("the refund exceeds what is left to refund of the captured amount: {refundable} left")]
    RefundExceedsCaptured { refundable: i64 },
    #[error("no route for this path")]
    RouteNotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    Validation(String),
    #[error("request body exceeds 64 KiB")]
    PayloadTooLarge,
    #[error("the Idempotency-Key header is required on this route")]
    IdempotencyKeyMissing,
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyKeyReused,
    #[error("a request with this Idempotency-Key is still being processed")]
    IdempotencyKeyInUse,
    #[error("insufficient funds: {available} available, {requested} requested")]
    InsufficientFunds { available: i64, requested: i64 },
    #[error("wallet currency is {wallet}, request currency is {requested}")]
    CurrencyMismatch { wallet: String, requested: String },
    #[error("too many requests; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("the request did not complete within {0} ms; retry later")]
    Timeout(u128),
    #[error(
        "sign-in is not available yet: the identity provider's keys have not been fetched; \
         retry later"
    )]
    SignInUnavailable,
    #[error("the database is unavailable; retry later")]
    Unavailable(#[source] sqlx::Error),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if crate::store::errors::is_transient(&e) {
            Self::Unavailable(e)
        } else {
            Self::Internal(e.into())
        }
    }
}

impl ApiError {
    /// For the statements that add to a balance: a sum past `bigint` (SQLSTATE 22003) is the
    /// request's fault, not the server's. Reads never get this meaning.
    pub fn from_balance_write(e: sqlx::Error) -> Self {
        if crate::store::errors::is_out_of_range(&e) {
            Self::Validation("amount would overflow the wallet balance".into())
        } else {
            e.into()
        }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Forbidden(_) => StatusCode::FORBIDDEN,
            WalletNotFound | PaymentNotFound | RefundNotFound | RouteNotFound => {
                StatusCode::NOT_FOUND
            }
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Malformed(_) | IdempotencyKeyMissing => StatusCode::BAD_REQUEST,
            Validation(_)
            | IdempotencyKeyReused
            | InsufficientFunds { .. }
            | RefundExceedsCaptured { .. }
            | CurrencyMismatch { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            IdempotencyKeyInUse | PaymentNotRefundable { .. } => StatusCode::CONFLICT,
            RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Unavailable(_) | Timeout(_) | SignInUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            Unauthorized(_) => "unauthorized",
            Forbidden(_) => "forbidden",
            WalletNotFound => "wallet_not_found",
            PaymentNotFound => "payment_not_found",
            RefundNotFound => "refund_not_found",
            PaymentNotRefundable { .. } => "payment_not_refundable",
            RefundExceedsCaptured { .. } => "refund_exceeds_captured",
            RouteNotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            Malformed(_) => "malformed_request",
            Validation(_) => "validation_failed",
            PayloadTooLarge => "payload_too_large",
            IdempotencyKeyMissing => "idempotency_key_missing",
            IdempotencyKeyReused => "idempotency_key_reused",
            IdempotencyKeyInUse => "idempotency_key_in_use",
            RateLimited { .. } => "rate_limited",
            InsufficientFunds { .. } => "insufficient_funds",
            CurrencyMismatch { .. } => "currency_mismatch",
            Unavailable(_) | Timeout(_) | SignInUnavailable => "service_unavailable",
            Internal(_) => "internal_error",
        }
    }

    fn title(&self) -> &'static str {
        use ApiError::*;
        match self {
            Unauthorized(_) => "Unauthorized",
            Forbidden(_) => "Forbidden",
            WalletNotFound => "Wallet not found",
            PaymentNotFound => "Payment not found",
            RefundNotFound => "Refund not found",
            PaymentNotRefundable { .. } => "Payment not refundable",
            RefundExceedsCaptured { .. } => "Refund exceeds captured amount",
            RouteNotFound => "Not found",
            MethodNotAllowed => "Method not allowed",
            Malformed(_) => "Malformed request",
            Validation(_) => "Validation failed",
            PayloadTooLarge => "Payload too large",
            IdempotencyKeyMissing => "Idempotency key missing",
            IdempotencyKeyReused => "Idempotency key reused",
            IdempotencyKeyInUse => "Idempotency key in use",
            RateLimited { .. } => "Too many requests",
            InsufficientFunds { .. } => "Insufficient funds",
            CurrencyMismatch { .. } => "Currency mismatch",
            Unavailable(_) | Timeout(_) | SignInUnavailable => "Service unavailable",
            Internal(_) => "Internal server error",
        }
    }

    /// Business outcomes a client may see again on an idempotent retry. Auth, conflicts and
    /// server-side failures are not stored: retrying them may well succeed.
    pub fn is_replayable(&self) -> bool {
        matches!(self.status().as_u16(), 400 | 404 | 422)
    }

    /// The problem+json document.
    pub fn problem(&self) -> Value {
        let detail = match self {
            // Never show internals to a client; they are logged instead.
            ApiError::Internal(_) => "an unexpected error occurred; it has been logged".to_owned(),
            other => other.to_string(),
        };
        let mut doc = json!({
            "type": format!(
                "https://docs.wallet.example/problems/{}",
                self.code().replace('_', "-")
            ),
            "title": self.title(),
            "status": self.status().as_u16(),
            "detail": detail,
            "code": self.code(),
        });
        if let ApiError::RefundExceedsCaptured { refundable } = self {
            // What is left, as a number a client can act on without parsing `detail`.
            doc["refundable"] = json!(refundable);
        }
        doc
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(e) => {
                tracing::error!(error = ?e, "request failed with an internal error")
            }
            ApiError::Unavailable(e) => {
                // Every request fails this way while the database is down.
                shared::warn_throttled!(error = %e, "request failed: database unavailable")
            }
            _ => {}
        }
        let status = self.status();
        let mut response = json_response(status, &self.problem());
        let retry_after = match self {
            ApiError::Unavailable(_) | ApiError::Timeout(_) | ApiError::SignInUnavailable => {
                Some(1)
            }
            ApiError::RateLimited { retry_after_secs } => Some(retry_after_secs),
            _ => None,
        };
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750: the one challenge for every refusal, missing token included.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer error="invalid_token""#),
            );
        }
        response
    }
}

/// A JSON response; error statuses get the problem+json content type.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    let content_type = if status.is_client_error() || status.is_server_error() {
        PROBLEM_JSON
    } else {
        "application/json"
    };
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body.to_string(),
    )
        .into_response()
}

pub type ApiResult<T> = Result<T, ApiError>;
