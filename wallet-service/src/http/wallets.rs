//! `/v1/wallets` routes.

use super::error::{json_response, ApiError, ApiResult};
use super::extract::{
    parse_limit, parse_window, Auth, Fields, JsonObject, MaybeIdempotencyKey, PathId,
};
use super::guard::{Guard, Started};
use super::AppState;
use crate::outbox::Channel;
use crate::store::ledger::{EntryKind, PageFilter};
use crate::store::{cursor, ledger, summary, wallets};
use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use serde_json::json;
use shared::auth::Principal;
use shared::ids::WalletId;
use sqlx::PgConnection;
use std::collections::HashMap;

/// Loads a wallet the principal may read; anything else is "not found", so ids of other
/// principals' wallets do not leak.
async fn visible_wallet(
    conn: &mut PgConnection,
    principal: &Principal,
    id: &str,
) -> ApiResult<wallets::Wallet> {
    let id: WalletId = id.parse().map_err(|_| ApiError::WalletNotFound)?;
    match wallets::get(conn, id).await? {
        Some(w) if principal.can_read(&w.owner_id) => Ok(w),
        _ => Err(ApiError::WalletNotFound),
    }
}

pub async fn create(
    State(state): State<AppState>,
    Auth(principal): Auth,
    MaybeIdempotencyKey(key): MaybeIdempotencyKey,
    uri: Uri,
    JsonObject(body): JsonObject,
) -> ApiResult<Response> {
    let key = key.map(|k| k.0);
    let mut guard = match Guard::begin(
        &state.db,
        &principal.sub,
        key.as_deref(),
        "POST",
        uri.path(),
        &body,
    )
    .await?
    {
        Started::Replay(r) => return Ok(r),
        Started::Fresh(g) => g,
    };
    let outcome = async {
        let f = Fields(&body);
        let currency = f.currency()?;
        let owner = match f.opt_str("owner_id")? {
            None => principal.sub.as_str(),
            // The same rule as every other text field: 1 to 255 characters (the column's
            // CHECK), no control characters.
            Some(o) if o == principal.sub || principal.admin => f.text("owner_id", 1, 255)?,
            Some(_) => {
                return Err(ApiError::Forbidden(
                    "only the admin scope may create wallets for another owner",
                ))
            }
        };
        let wallet = wallets::create(guard.conn(), owner, currency).await?;
        tracing::info!(
            wallet_id = %wallet.id,
            owner_id = %wallet.owner_id,
            currency = %wallet.currency,
            "wallet created",
        );
        Ok((StatusCode::CREATED, json!(wallet)))
    }
    .await;
    guard.finish(outcome).await
}

pub async fn get(
    State(state): State<AppState>,
    Auth(principal): Auth,
    PathId(id): PathId,
) -> ApiResult<Response> {
    let wallet = visible_wallet(&mut *state.db.acquire().await?, &principal, &id).await?;
    Ok(json_response(StatusCode::OK, &json!(wallet)))
}

pub async fn balance(
    State(state): State<AppState>,
    Auth(principal): Auth,
    PathId(id): PathId,
) -> ApiResult<Response> {
    let w = visible_wallet(&mut *state.db.acquire().await?, &principal, &id).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "wallet_id": w.id,
            "currency": w.currency,
            "available": w.available,
            "held": w.held,
            "as_of": chrono::Utc::now(),
        }),
    ))
}

pub async fn deposit(
    State(state): State<AppState>,
    Auth(principal): Auth,
    MaybeIdempotencyKey(key): MaybeIdempotencyKey,
    PathId(id): PathId,
    uri: Uri,
    JsonObject(body): JsonObject,
) -> ApiResult<Response> {
    if !principal.admin {
        return Err(ApiError::Forbidden("deposits need the admin scope"));
    }
    let key = key.ok_or(ApiError::IdempotencyKeyMissing)?.0;
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
        Started::Replay(r) => return Ok(r),
        Started::Fresh(g) => g,
    };
    let outcome = async {
        let wallet_id: WalletId = id.parse().map_err(|_| ApiError::WalletNotFound)?;
        let f = Fields(&body);
        let amount = f.amount()?;
        let currency = f.currency()?;
        let reference = f.opt_text("reference", 255)?;
        match wallets::deposit(
            guard.conn(),
            uuid::Uuid::now_v7(),
            wallet_id,
            amount,
            currency,
            reference,
        )
        .await
        .map_err(ApiError::from_balance_write)?
        {
            wallets::DepositOutcome::Done(d) => {
                tracing::info!(
                    %wallet_id,
                    deposit_id = %d.id,
                    amount = %amount,
                    %currency,
                    "deposit credited",
                );
                metrics::counter!("deposits_total").increment(1);
                Ok((StatusCode::CREATED, json!(d)))
            }
            wallets::DepositOutcome::WalletNotFound => Err(ApiError::WalletNotFound),
            wallets::DepositOutcome::BalanceLimit => Err(ApiError::Validation(
                "`amount` would take the wallet past the largest balance it can hold".into(),
            )),
            wallets::DepositOutcome::CurrencyMismatch { wallet } => {
                Err(ApiError::CurrencyMismatch {
                    wallet: wallet.to_string(),
                    requested: currency.to_string(),
                })
            }
        }
    }
    .await;
    guard
        .finish_and_ring(outcome, &state.doorbell, &[Channel::Events])
        .await
}

pub async fn transactions(
    State(state): State<AppState>,
    Auth(principal): Auth,
    PathId(id): PathId,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let mut conn = state.db.acquire().await?;
    let wallet = visible_wallet(&mut conn, &principal, &id).await?;
    let limit = parse_limit(&q)?;
    let wallet_id = WalletId(wallet.id);
    let before = match q.get("cursor") {
        None => None,
        Some(c) => {
            let invalid = || ApiError::Validation("`cursor` is not a valid cursor".into());
            let seq = cursor::decode_seq(c).ok_or_else(invalid)?;
            Some(
                ledger::position(&mut conn, wallet_id, seq)
                    .await?
                    .ok_or_else(invalid)?,
            )
        }
    };
    let kind = q
        .get("kind")
        .map(|k| {
            EntryKind::parse(k).ok_or_else(|| {
                ApiError::Validation(
                    "`kind` must be deposit, hold, capture, release or refund".into(),
                )
            })
        })
        .transpose()?;
    let filter = PageFilter {
        wallet_id,
        kind,
        window: parse_window(&q)?,
        before,
        limit: limit + 1,
    };
    let mut entries = ledger::page(&mut conn, &filter).await?;
    let next = (entries.len() as i64 > limit).then(|| {
        entries.truncate(limit as usize);
        cursor::encode_seq(entries.last().expect("limit >= 1").seq)
    });
    Ok(json_response(
        StatusCode::OK,
        &json!({ "data": entries, "next_cursor": next }),
    ))
}

/// `GET /v1/wallets/{id}/summary?from=&to=`: totals over `[from, to)` from the ledger.
/// `from` defaults to the wallet's opening, `to` to the time of the request.
pub async fn summary(
    State(state): State<AppState>,
    Auth(principal): Auth,
    PathId(id): PathId,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let mut conn = state.db.acquire().await?;
    let wallet = visible_wallet(&mut conn, &principal, &id).await?;
    let window = parse_window(&q)?;
    let from = window.from.unwrap_or(wallet.created_at);
    let to = window.to.unwrap_or_else(chrono::Utc::now);
    if from >= to {
        return Err(ApiError::Validation(
            "`from` must be earlier than `to`".into(),
        ));
    }
    let t = summary::totals(&mut conn, WalletId(wallet.id), from, to).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "wallet_id": wallet.id,
            "currency": wallet.currency,
            "from": from,
            "to": to,
            "deposits": t.deposits,
            "captured": t.captured,
            "released": t.released,
            "refunded": t.refunded,
            "pending": t.pending,
            "min_payment": t.min_payment,
            "max_payment": t.max_payment,
        }),
    ))
}
