//! Idempotency keys: a retried request gets the first response back, byte for byte.
//!
//! The key is checked and stored in the same transaction as the work it protects, so the
//! stored response and the effect commit together or not at all. A transaction-scoped
//! advisory lock on (principal, key) tells a concurrent duplicate apart (409) without making
//! it wait; after taking the lock, a fresh read sees any committed first attempt.

use axum::http::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

/// How long a key is remembered: the API promises at least 24 hours, so this is not a
/// setting.
pub const RETENTION_HOURS: i64 = 24;

/// A stable hash of what makes two requests "the same": method, path and the body with
/// object keys sorted (serde_json's map is ordered), so formatting and key order do not
/// matter.
pub fn fingerprint(method: &str, path: &str, body: &impl serde::Serialize) -> String {
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update(b"\n");
    hasher.update(path.as_bytes());
    hasher.update(b"\n");
    hasher.update(serde_json::to_vec(body).expect("a JSON value serializes"));
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A response saved under a key.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved {
    pub status: StatusCode,
    pub body: Value,
}

#[derive(Debug)]
pub enum Begin {
    /// First time: do the work, then [`finish`] in the same transaction.
    Proceed,
    /// Seen before with the same request: replay this.
    Replay(Saved),
    /// Seen before with a different request.
    Reused,
    /// Another transaction holds the key right now.
    InUse,
}

/// Claims `key` for `principal` inside the caller's transaction.
pub async fn begin(
    conn: &mut PgConnection,
    principal: &str,
    key: &str,
    fingerprint: &str,
) -> Result<Begin, sqlx::Error> {
    let locked: bool = sqlx::query_scalar(
        "SELECT pg_try_advisory_xact_lock(hashtextextended($1 || chr(31) || $2, 0))",
    )
    .bind(principal)
    .bind(key)
    .fetch_one(&mut *conn)
    .await?;
    if !locked {
        return Ok(Begin::InUse);
    }
    // A separate statement, so its snapshot is taken after the lock was granted.
    let row: Option<(String, i16, Value)> = sqlx::query_as(
        "SELECT fingerprint, response_status, response_body FROM idempotency_keys
         WHERE principal = $1 AND key = $2 AND expires_at > now()",
    )
    .bind(principal)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match row {
        None => Begin::Proceed,
        Some((fp, _, _)) if fp != fingerprint => Begin::Reused,
        Some((_, status, body)) => Begin::Replay(Saved {
            status: StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK),
            body,
        }),
    })
}

/// Saves the response under the key; an expired entry for the same key is replaced.
pub async fn finish(
    conn: &mut PgConnection,
    principal: &str,
    key: &str,
    fingerprint: &str,
    saved: &Saved,
) -> Result<(), sqlx::Error> {
    let result = sqlx::query(
        "INSERT INTO idempotency_keys (principal, key, fingerprint, response_status, response_body, expires_at)
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(hours => $6::int))
         ON CONFLICT (principal, key) DO UPDATE
           SET fingerprint = EXCLUDED.fingerprint, response_status = EXCLUDED.response_status,
               response_body = EXCLUDED.response_body, created_at = now(), expires_at = EXCLUDED.expires_at
           WHERE idempotency_keys.expires_at <= now()",
    )
    .bind(principal)
    .bind(key)
    .bind(fingerprint)
    .bind(saved.status.as_u16() as i16)
    .bind(&saved.body)
    .bind(RETENTION_HOURS as i32)
    .execute(&mut *conn)
    .await?;
    if result.rows_affected() != 1 {
        // Unreachable while the advisory lock is held; refuse rather than overwrite.
        return Err(sqlx::Error::Protocol(
            "idempotency key stored concurrently".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fingerprint_ignores_key_order_and_whitespace() {
        let a: Value = serde_json::from_str(r#"{"amount": 5, "currency": "EUR"}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"currency":"EUR","amount":5}"#).unwrap();
        assert_eq!(
            fingerprint("POST", "/v1/payments", &a),
            fingerprint("POST", "/v1/payments", &b)
        );
    }

    #[test]
    fn fingerprint_separates_method_path_and_body() {
        let body = json!({"amount": 5});
        let base = fingerprint("POST", "/v1/payments", &body);
        assert_ne!(base, fingerprint("PUT", "/v1/payments", &body));
        assert_ne!(base, fingerprint("POST", "/v1/wallets/x/deposits", &body));
        assert_ne!(
            base,
            fingerprint("POST", "/v1/payments", &json!({"amount": 6}))
        );
        assert_eq!(base.len(), 64);
    }
}
