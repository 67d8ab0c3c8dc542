//! Before the load: one wallet per owner, funded by one admin deposit.

use super::calls::with_retries;
use super::lock;
use super::Wallet;
use crate::api::{Api, CallResult, Reply};
use crate::cli::Args;
use crate::stats::{histogram, record};
use anyhow::{bail, Context as _};
use futures_util::stream::{self, StreamExt};
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Latencies of the setup calls (wallet creation, deposits).
pub type SetupLatency = BTreeMap<&'static str, Histogram<u64>>;

/// Creates one wallet per owner and funds it with one admin deposit.
pub async fn setup(
    args: &Args,
    api: &Api,
    run_id: &str,
    admin: &str,
    tokens: &shared::auth::TokenSource,
) -> anyhow::Result<(Vec<Wallet>, SetupLatency)> {
    let ttl = args.duration.as_secs()
        + args
            .ramp
            .as_ref()
            .map_or(0, |r| r.0.iter().map(|s| s.duration.as_secs()).sum())
        + args.drain_timeout.as_secs()
        + 3600;
    // The longest lifetime the services accept by default.
    let ttl = ttl.min(shared::auth::DEFAULT_MAX_LIFETIME_SECS);
    let lat = Mutex::new(SetupLatency::new());
    let results: Vec<anyhow::Result<Wallet>> = stream::iter(0..args.wallets)
        .map(|i| {
            let lat = &lat;
            async move {
                let owner = format!("lt-{run_id}-{i}");
                let token = tokens.token(&owner, false, ttl).await?;
                let (key, body) = (
                    format!("lt-{run_id}-w{i}"),
                    json!({"currency": args.currency}),
                );
                let (w, d) = with_retries(args.attempts, || {
                    api.post("/v1/wallets", &token, &key, &body)
                })
                .await;
                record(lock(lat).entry("wallet").or_insert_with(histogram), d);
                let w = expect(w, StatusCode::CREATED, "POST /v1/wallets")?;
                let id = w.body["id"]
                    .as_str()
                    .context("wallet without an id")?
                    .to_owned();
                let (path, key, body) = (
                    format!("/v1/wallets/{id}/deposits"),
                    format!("lt-{run_id}-d{i}"),
                    json!({"amount": args.deposit, "currency": args.currency,
                           "reference": format!("loadtest {run_id}")}),
                );
                let (r, d) =
                    with_retries(args.attempts, || api.post(&path, admin, &key, &body)).await;
                record(lock(lat).entry("deposit").or_insert_with(histogram), d);
                let r = expect(r, StatusCode::CREATED, "POST /v1/wallets/{id}/deposits")?;
                let deposit_id = r.body["id"].as_str().unwrap_or_default().to_owned();
                let deposited = r.body["amount"]
                    .as_i64()
                    .context("deposit without amount")?;
                Ok(Wallet {
                    id,
                    token,
                    deposited,
                    deposit_id,
                })
            }
        })
        .buffered(args.setup_concurrency as usize)
        .collect()
        .await;
    let wallets = results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok((wallets, lat.into_inner().unwrap_or_else(|e| e.into_inner())))
}

fn expect(r: CallResult, status: StatusCode, what: &str) -> anyhow::Result<Reply> {
    match r {
        Ok(reply) if reply.status == status => Ok(reply),
        Ok(reply) => bail!("{what} answered {}: {}", reply.status, reply.body),
        Err(e) => bail!("{what}: {}", e.describe()),
    }
}
