//! The payment load: funded wallets, then payments at a constant rate, each retried with its
//! idempotency key until it gets a definitive answer, however long the faults last.

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use shared::backoff::Backoff;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Funds per wallet; "too big" payments ask for more than this.
const DEPOSIT: i64 = 1_000_000;
/// How long one request keeps retrying through faults.
const GIVE_UP_AFTER: Duration = Duration::from_secs(240);
/// Between those retries: doubling from 100 ms to at most 2 s, without jitter.
const RETRY_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

struct Wallet {
    token: String,
    id: String,
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub attempted: u64,
    pub accepted: u64,
    pub refused: u64,
    pub retries: u64,
    pub unavailable: u64,
    pub internal_errors: u64,
    pub replays_compared: u64,
    pub replay_mismatches: u64,
    pub gave_up: u64,
}

pub struct Load {
    http: Client,
    url: String,
    admin: String,
    run: String,
    seed: u64,
    /// How many wallets `fund` creates.
    wallet_count: usize,
    tokens: shared::auth::TokenSource,
    wallets: Mutex<Vec<Wallet>>,
    accepted: Mutex<Vec<Uuid>>,
    refunds: Mutex<Vec<crate::refunds::Asked>>,
    stats: Mutex<Stats>,
}

/// A definitive answer: anything but a transport error, 5xx, 409 in-flight or 429.
type Answer = (StatusCode, Value);

impl Load {
    pub async fn new(
        http: Client,
        url: &str,
        tokens: shared::auth::TokenSource,
        seed: u64,
        wallets: usize,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            http,
            url: url.trim_end_matches('/').to_owned(),
            admin: tokens.token("chaos-admin", true, 7200).await?,
            run: format!("chaos-{seed}-{}", Uuid::now_v7().simple()),
            seed,
            wallet_count: wallets,
            tokens,
            wallets: Mutex::new(Vec::new()),
            accepted: Mutex::new(Vec::new()),
            refunds: Mutex::new(Vec::new()),
            stats: Mutex::new(Stats::default()),
        })
    }

    pub fn stats(&self) -> Stats {
        self.stats.lock().unwrap().clone()
    }

    pub fn accepted_ids(&self) -> Vec<Uuid> {
        self.accepted.lock().unwrap().clone()
    }

    /// The refunds asked for and accepted so far.
    pub fn refunds(&self) -> Vec<crate::refunds::Asked> {
        self.refunds.lock().unwrap().clone()
    }

    pub(crate) fn asked_refund(&self, asked: crate::refunds::Asked) {
        self.refunds.lock().unwrap().push(asked);
    }

    pub(crate) fn http(&self) -> &Client {
        &self.http
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn admin(&self) -> &str {
        &self.admin
    }

    pub(crate) fn run(&self) -> &str {
        &self.run
    }

    pub(crate) fn count_internal_error(&self) {
        self.bump(|s| s.internal_errors += 1);
    }

    pub(crate) fn compare_replay(&self, a: &Answer, b: &Answer) {
        self.compare(a, b);
    }

    /// GET as `token`, answered 2xx with JSON.
    async fn get_json(&self, url: &str, token: &str) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(url)
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    fn bump(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut self.stats.lock().unwrap());
    }

    /// POSTs until a definitive answer, always with the same key.
    async fn post(
        &self,
        path: &str,
        token: &str,
        key: &str,
        body: &Value,
    ) -> anyhow::Result<Answer> {
        let start = Instant::now();
        let mut attempt = 0;
        loop {
            let sent = self
                .http
                .post(format!("{}{path}", self.url))
                .bearer_auth(token)
                .header("Idempotency-Key", key)
                .json(body)
                .send()
                .await;
            match sent {
                Ok(r) => {
                    let status = r.status();
                    match status.as_u16() {
                        500 => self.bump(|s| s.internal_errors += 1),
                        502..=504 => self.bump(|s| s.unavailable += 1),
                        409 | 429 => {}
                        // A body cut off (the service killed mid-response) is no answer:
                        // ask again, as a client would.
                        _ => match r.json().await {
                            Ok(body) => return Ok((status, body)),
                            Err(_) => self.bump(|s| s.unavailable += 1),
                        },
                    }
                }
                Err(_) => self.bump(|s| s.unavailable += 1),
            }
            if start.elapsed() > GIVE_UP_AFTER {
                self.bump(|s| s.gave_up += 1);
                anyhow::bail!("no definitive answer for {path} key {key} after {GIVE_UP_AFTER:?}");
            }
            self.bump(|s| s.retries += 1);
            tokio::time::sleep(RETRY_BACKOFF.ceiling(attempt)).await;
            attempt += 1;
        }
    }

    /// Creates and funds the wallets (retried like everything else).
    pub async fn fund(&self) -> anyhow::Result<()> {
        for i in 0..self.wallet_count {
            let owner = format!("{}-{i}", self.run);
            let token = self.tokens.token(&owner, false, 7200).await?;
            let (s, w) = self
                .post(
                    "/v1/wallets",
                    &token,
                    &format!("{}-w{i}", self.run),
                    &json!({"currency": "EUR"}),
                )
                .await?;
            anyhow::ensure!(
                s == StatusCode::CREATED,
                "creating a wallet answered {s}: {w}"
            );
            let id = w["id"].as_str().unwrap_or_default().to_owned();
            let (s, d) = self
                .post(
                    &format!("/v1/wallets/{id}/deposits"),
                    &self.admin,
                    &format!("{}-d{i}", self.run),
                    &json!({"amount": DEPOSIT, "currency": "EUR"}),
                )
                .await?;
            anyhow::ensure!(s == StatusCode::CREATED, "deposit answered {s}: {d}");
            self.wallets.lock().unwrap().push(Wallet { token, id });
        }
        Ok(())
    }

    /// Offers `rate` payments per second (open loop) for at least `duration` and until
    /// `until` is set (the last fault undone, so every fault meets a load), then waits for
    /// every payment to get its answer.
    pub async fn drive(
        self: Arc<Self>,
        rate: f64,
        duration: Duration,
        until: Arc<AtomicBool>,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let mut n: u64 = 0;
        while start.elapsed() < duration || !until.load(Ordering::Relaxed) {
            let due = start + Duration::from_secs_f64(n as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            let this = self.clone();
            tasks.spawn(async move { this.pay(n).await });
            n += 1;
        }
        let mut failed = 0;
        while let Some(r) = tasks.join_next().await {
            if !matches!(r, Ok(Ok(()))) {
                failed += 1;
            }
        }
        anyhow::ensure!(
            failed == 0,
            "{failed} payments never got a definitive answer"
        );
        Ok(())
    }

    async fn pay(&self, n: u64) -> anyhow::Result<()> {
        let mut rng = fastrand::Rng::with_seed(self.seed.wrapping_mul(1_000_003).wrapping_add(n));
        let (token, wallet_id) = {
            let wallets = self.wallets.lock().unwrap();
            let w = &wallets[rng.usize(..wallets.len())];
            (w.token.clone(), w.id.clone())
        };
        let roll = rng.u8(..100);
        let (merchant, amount) = match roll {
            0..=9 => ("test_decline", rng.i64(100..5_000)),
            10..=14 => ("test_unavailable", rng.i64(100..5_000)),
            15..=19 => ("shop", DEPOSIT + 1),
            // Charged, then its refund declined (`refunds`).
            _ if n % 40 == 7 => (crate::refunds::DECLINES_REFUNDS, rng.i64(100..5_000)),
            _ => ("shop", rng.i64(100..5_000)),
        };
        let body = json!({
            "wallet_id": wallet_id,
            "amount": amount,
            "currency": "EUR",
            "merchant_id": merchant,
        });
        let key = format!("{}-p{n}", self.run);
        self.bump(|s| s.attempted += 1);
        let first = if n.is_multiple_of(17) {
            // Two copies at once: one runs, the other waits its turn and replays.
            let (a, b) = tokio::join!(
                self.post("/v1/payments", &token, &key, &body),
                self.post("/v1/payments", &token, &key, &body)
            );
            let (a, b) = (a?, b?);
            self.compare(&a, &b);
            a
        } else {
            self.post("/v1/payments", &token, &key, &body).await?
        };
        match first.0.as_u16() {
            202 => {
                let id = first.1["id"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| anyhow::anyhow!("202 without an id"))?;
                self.accepted.lock().unwrap().push(id);
                self.bump(|s| s.accepted += 1);
                let parts = crate::refunds::plan(n, merchant, amount);
                if !parts.is_empty() {
                    let declines = merchant == crate::refunds::DECLINES_REFUNDS;
                    self.refund(n, id, &token, &parts, declines).await?;
                }
            }
            422 if first.1["code"] == "insufficient_funds" => self.bump(|s| s.refused += 1),
            other => anyhow::bail!("payment answered {other}: {}", first.1),
        }
        if n.is_multiple_of(10) {
            let again = self.post("/v1/payments", &token, &key, &body).await?;
            self.compare(&first, &again);
        }
        Ok(())
    }

    fn compare(&self, a: &Answer, b: &Answer) {
        let same = a == b;
        self.bump(|s| {
            s.replays_compared += 1;
            if !same {
                s.replay_mismatches += 1;
            }
        });
        if !same {
            eprintln!("[chaos] idempotent replay differs: {a:?} vs {b:?}");
        }
    }

    /// Through the API: per wallet, deposits + refunded = available + held + captured (the
    /// summary's `refunded.total`), and held equal
    /// to `held` (the payments still pending for it, by wallet id; none means 0). Returns the
    /// wallets that disagree.
    pub async fn wallet_conservation(
        &self,
        held: &HashMap<String, i64>,
    ) -> anyhow::Result<Vec<String>> {
        let wallets: Vec<(String, String)> = self
            .wallets
            .lock()
            .unwrap()
            .iter()
            .map(|w| (w.token.clone(), w.id.clone()))
            .collect();
        let mut bad = Vec::new();
        for (token, id) in wallets {
            let b = self
                .get_json(&format!("{}/v1/wallets/{id}/balance", self.url), &token)
                .await?;
            let mut captured = 0;
            let mut cursor: Option<String> = None;
            loop {
                let mut url = format!(
                    "{}/v1/payments?wallet_id={id}&status=succeeded&limit=100",
                    self.url
                );
                if let Some(c) = &cursor {
                    url.push_str(&format!("&cursor={c}"));
                }
                let page = self.get_json(&url, &token).await?;
                captured += page["data"]
                    .as_array()
                    .map(|d| d.iter().filter_map(|p| p["amount"].as_i64()).sum::<i64>())
                    .unwrap_or(0);
                match page["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_owned()),
                    None => break,
                }
            }
            let (available, on_hold) = (
                b["available"].as_i64().unwrap_or(-1),
                b["held"].as_i64().unwrap_or(-1),
            );
            let summary = self
                .get_json(&format!("{}/v1/wallets/{id}/summary", self.url), &token)
                .await?;
            let refunded = summary["refunded"]["total"].as_i64().unwrap_or(-1);
            let expected_hold = held.get(&id).copied().unwrap_or(0);
            if available + on_hold + captured != DEPOSIT + refunded || on_hold != expected_hold {
                bad.push(format!(
                    "{id}: available {available} + held {on_hold} + captured {captured} != {DEPOSIT} + refunded {refunded}, or held != {expected_hold} (pending, flagged)"
                ));
            }
        }
        Ok(bad)
    }
}
