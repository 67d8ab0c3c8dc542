//! One transaction per write request, guarded by its idempotency key when it has one.

use super::error::{json_response, ApiError};
use crate::idempotency::{self, Begin, Saved};
use crate::outbox::{Channel, Doorbell};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

pub struct Guard {
    tx: Transaction<'static, Postgres>,
    key: Option<(String, String, String)>,
}

pub enum Started {
    Fresh(Guard),
    Replay(Response),
}

impl Guard {
    /// Opens the transaction and claims the key: a replay answers at once; a reused or
    /// in-flight key is an error.
    pub async fn begin(
        db: &PgPool,
        principal: &str,
        key: Option<&str>,
        method: &str,
        path: &str,
        body: &Map<String, Value>,
    ) -> Result<Started, ApiError> {
        let mut tx = db.begin().await?;
        let Some(key) = key else {
            return Ok(Started::Fresh(Guard { tx, key: None }));
        };
        let fingerprint = idempotency::fingerprint(method, path, body);
        let saved = match idempotency::begin(&mut tx, principal, key, &fingerprint).await? {
            Begin::Proceed => {
                return Ok(Started::Fresh(Guard {
                    tx,
                    key: Some((principal.to_owned(), key.to_owned(), fingerprint)),
                }))
            }
            Begin::Replay(saved) => Ok(saved),
            Begin::Reused => Err(ApiError::IdempotencyKeyReused),
            Begin::InUse => Err(ApiError::IdempotencyKeyInUse),
        };
        // End the transaction now: it may hold the key's advisory lock, and a dropped
        // transaction is only rolled back when its pooled connection is next used, so the
        // next retry of this key would be told 409 "in use" until then.
        tx.rollback().await?;
        let saved = saved?;
        let mut response = json_response(saved.status, &saved.body);
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        Ok(Started::Replay(response))
    }

    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Stores the outcome under the key (when it is one a retry should see again) and
    /// commits. Work that failed with a business error wrote nothing before failing, so
    /// committing then stores only the key.
    pub async fn finish(
        mut self,
        outcome: Result<(StatusCode, Value), ApiError>,
    ) -> Result<Response, ApiError> {
        let (status, body) = match outcome {
            Ok(ok) => ok,
            Err(e) if e.is_replayable() => (e.status(), e.problem()),
            Err(e) => {
                // Roll back now rather than on drop, which would leave the key's advisory
                // lock held until the pooled connection is next used.
                let _ = self.tx.rollback().await;
                return Err(e);
            }
        };
        if let Some((principal, key, fingerprint)) = &self.key {
            let saved = Saved {
                status,
                body: body.clone(),
            };
            idempotency::finish(&mut self.tx, principal, key, fingerprint, &saved).await?;
        }
        self.tx.commit().await?;
        Ok(json_response(status, &body))
    }

    /// [`Guard::finish`], then, when the work succeeded (so its outbox rows are committed),
    /// rings the relays of `channels`.
    pub async fn finish_and_ring(
        self,
        outcome: Result<(StatusCode, Value), ApiError>,
        doorbell: &Doorbell,
        channels: &[Channel],
    ) -> Result<Response, ApiError> {
        let wrote = outcome.is_ok();
        let response = self.finish(outcome).await?;
        if wrote {
            for channel in channels {
                doorbell.ring(*channel);
            }
        }
        Ok(response)
    }
}
