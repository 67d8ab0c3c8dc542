//! Request extractors that answer in the project's error format: the principal, the
//! idempotency key and a JSON body whose fields are checked one by one, so a client learns
//! exactly which field is wrong and whether it was the type (400) or the value (422); and
//! the list routes' query parameters.

use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::store::window::Window;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde_json::{Map, Value};
use shared::auth::{AuthError, Principal};
use shared::money::{Amount, Currency, MAX_AMOUNT};
use std::collections::HashMap;

/// The authenticated caller.
pub struct Auth(pub Principal);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        // Which check failed is not the client's business (it would tell a forger what to
        // fix): every invalid token gets the same answer, and the reason goes to the log.
        let principal = state
            .verifier
            .verify_header(header)
            .await
            .map_err(|e| match e {
                AuthError::Missing => ApiError::Unauthorized("a bearer token is required".into()),
                AuthError::Invalid(why) => {
                    tracing::debug!(reason = ?why, "bearer token refused");
                    ApiError::Unauthorized("the bearer token is not valid".into())
                }
                AuthError::KeysUnavailable => ApiError::SignInUnavailable,
            })?;
        tracing::Span::current().record("principal", principal.sub.as_str());
        if let Some(limiter) = &state.limiter {
            limiter
                .check(&principal.sub, std::time::Instant::now())
                .map_err(|wait| ApiError::RateLimited {
                    retry_after_secs: wait.as_secs() + 1,
                })?;
        }
        Ok(Auth(principal))
    }
}

/// The `Idempotency-Key` header: 1..=255 visible ASCII characters.
pub struct IdempotencyKey(pub String);

impl IdempotencyKey {
    pub fn from_parts(parts: &Parts) -> Result<Option<Self>, ApiError> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(None);
        };
        let bytes = value.as_bytes();
        if bytes.is_empty() || bytes.len() > 255 || !bytes.iter().all(|b| (0x21..=0x7e).contains(b))
        {
            return Err(ApiError::Validation(
                "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
            ));
        }
        Ok(Some(Self(String::from_utf8_lossy(bytes).into_owned())))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Self::from_parts(parts)?.ok_or(ApiError::IdempotencyKeyMissing)
    }
}

/// An optional `Idempotency-Key` (routes where idempotency is offered, not required).
pub struct MaybeIdempotencyKey(pub Option<IdempotencyKey>);

impl<S: Send + Sync> FromRequestParts<S> for MaybeIdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        IdempotencyKey::from_parts(parts).map(MaybeIdempotencyKey)
    }
}

/// A JSON object body. Syntax errors and non-objects are 400; size over the limit is 413.
pub struct JsonObject(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::Malformed(format!("could not read the body: {rejection}"))
            }
        })?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(_) => Err(ApiError::Malformed("the body must be a JSON object".into())),
            Err(e) => Err(ApiError::Malformed(format!(
                "the body is not valid JSON: {e}"
            ))),
        }
    }
}

/// Typed access to the fields of a JSON object.
pub struct Fields<'a>(pub &'a Map<String, Value>);

impl Fields<'_> {
    fn present(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    pub fn opt_str(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.present(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::Malformed(format!("`{name}` must be a string"))),
        }
    }

    pub fn str(&self, name: &str) -> Result<&str, ApiError> {
        self.opt_str(name)?
            .ok_or_else(|| ApiError::Validation(format!("`{name}` is required")))
    }

    /// A string of `min..=max` characters.
    pub fn text(&self, name: &str, min: usize, max: usize) -> Result<&str, ApiError> {
        let s = self.str(name)?;
        check_len(name, s, min, max)?;
        Ok(s)
    }

    pub fn opt_text(&self, name: &str, max: usize) -> Result<Option<&str>, ApiError> {
        let s = self.opt_str(name)?;
        if let Some(s) = s {
            check_len(name, s, 0, max)?;
        }
        Ok(s)
    }

    pub fn currency(&self) -> Result<Currency, ApiError> {
        self.str("currency")?
            .parse()
            .map_err(|e| ApiError::Validation(format!("`currency`: {e}")))
    }

    /// `amount`: a JSON integer in `1..=MAX_AMOUNT`. A string is a type error (400); a
    /// fraction or an out-of-range number is an invalid value (422).
    pub fn amount(&self) -> Result<Amount, ApiError> {
        let invalid = || {
            ApiError::Validation(format!(
                "`amount` must be an integer count of minor units between 1 and {MAX_AMOUNT}"
            ))
        };
        match self.present("amount") {
            None => Err(ApiError::Validation("`amount` is required".into())),
            Some(Value::Number(n)) => {
                let v = n.as_i64().ok_or_else(invalid)?;
                Amount::new(v).map_err(|_| invalid())
            }
            Some(_) => Err(ApiError::Malformed("`amount` must be a number".into())),
        }
    }
}

fn check_len(name: &str, s: &str, min: usize, max: usize) -> Result<(), ApiError> {
    let n = s.chars().count();
    if n < min || n > max {
        return Err(ApiError::Validation(format!(
            "`{name}` must be {min} to {max} characters, got {n}"
        )));
    }
    if s.chars().any(char::is_control) {
        return Err(ApiError::Validation(format!(
            "`{name}` must not contain control characters"
        )));
    }
    Ok(())
}

/// The single `{id}` path segment. A segment that is not even valid UTF-8 cannot name a
/// resource, so it is a plain 404 in the project's format rather than axum's text reply.
pub struct PathId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(id)| Self(id))
            .map_err(|_| ApiError::RouteNotFound)
    }
}

pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;

/// The `limit` query parameter of the list routes.
pub fn parse_limit(q: &HashMap<String, String>) -> ApiResult<i64> {
    match q.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                ApiError::Validation(format!("`limit` must be an integer from 1 to {MAX_LIMIT}"))
            }),
    }
}

/// The `from`/`to` query parameters (RFC 3339, `[from, to)`).
pub fn parse_window(q: &HashMap<String, String>) -> ApiResult<Window> {
    Window::parse(
        q.get("from").map(String::as_str),
        q.get("to").map(String::as_str),
    )
    .map_err(|e| ApiError::Validation(e.to_string()))
}
