//! End to end across the three running processes (started by `scripts/up`): many payments
//! with declines, gateway refusals, insufficient funds and client retries, then the money
//! invariants for every wallet and the gateway's own count of charges.
//!
//! Needs `WALLET_URL`, `GATEWAY_URL`, `DATABASE_URL` and the sign-in settings (`IDP_URL`, or
//! `AUTH_JWT_SECRET`) from `.run/env`.

use futures_util::stream::{self, StreamExt};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: start the system with scripts/up and `source .run/env` \
             (scripts/test does both)"
        )
    })
}

struct Sys {
    http: Client,
    wallet: String,
    gateway: String,
    tokens: shared::auth::TokenSource,
}

impl Sys {
    /// A token from whichever sign-in the stack runs (its identity provider by default).
    async fn token(&self, sub: &str, admin: bool) -> String {
        self.tokens
            .token(sub, admin, 3600)
            .await
            .expect("a token from the stack's sign-in")
    }

    async fn post(
        &self,
        path: &str,
        token: &str,
        key: &str,
        body: &Value,
    ) -> (StatusCode, Value, bool) {
        let r = self
            .http
            .post(format!("{}{path}", self.wallet))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .expect("wallet-service answers");
        let replayed = r.headers().get("idempotent-replayed").is_some();
        (r.status(), r.json().await.unwrap_or(Value::Null), replayed)
    }

    async fn get(&self, url: String, token: Option<&str>) -> (StatusCode, Value) {
        let mut req = self.http.get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.expect("service answers");
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Normal,
    Decline,
    Unavailable,
    TooBig,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_payments_through_all_processes_conserve_money() {
    let sys = Sys {
        http: Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        wallet: env("WALLET_URL"),
        gateway: env("GATEWAY_URL"),
        tokens: shared::auth::TokenSource::from_env().expect("IDP_URL or AUTH_JWT_SECRET is set"),
    };
    let pool = PgPool::connect(&env("DATABASE_URL")).await.unwrap();
    let run = uuid::Uuid::now_v7().simple().to_string();
    let admin = sys.token("e2e-admin", true).await;
    let stats_before = sys.get(format!("{}/v1/stats", sys.gateway), None).await.1;

    // Wallets, funded.
    const WALLETS: usize = 12;
    const DEPOSIT: i64 = 50_000;
    let mut wallets = Vec::new();
    for i in 0..WALLETS {
        let owner = format!("e2e-{run}-{i}");
        let token = sys.token(&owner, false).await;
        let (s, w, _) = sys
            .post(
                "/v1/wallets",
                &token,
                &format!("w-{run}-{i}"),
                &json!({"currency": "EUR"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
        let id = w["id"].as_str().unwrap().to_owned();
        let (s, _, _) = sys
            .post(
                &format!("/v1/wallets/{id}/deposits"),
                &admin,
                &format!("d-{run}-{i}"),
                &json!({"amount": DEPOSIT, "currency": "EUR"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
        wallets.push((owner, token, id));
    }

    // 240 payments, deterministic mix: declines, gateway refusals, over-balance attempts,
    // and every 7th retried with the same key, every 11th retried concurrently.
    let plan: Vec<(usize, Kind, i64)> = (0..240)
        .map(|n| {
            let kind = match n % 20 {
                0..=2 => Kind::Decline,
                3 => Kind::Unavailable,
                4 => Kind::TooBig,
                _ => Kind::Normal,
            };
            let amount = if kind == Kind::TooBig {
                DEPOSIT + 1
            } else {
                100 + (n as i64 * 37) % 900
            };
            (n % WALLETS, kind, amount)
        })
        .collect();

    let sys = &sys;
    let wallets = &wallets;
    let run = &run;
    let plan = stream::iter(plan.into_iter().enumerate());
    let outcomes: Vec<(usize, Kind, i64, StatusCode, Value)> = plan
        .map(|(n, (w, kind, amount))| async move {
            let (_, token, wallet_id) = &wallets[w];
            let merchant = match kind {
                Kind::Decline => "test_decline",
                Kind::Unavailable => "test_unavailable",
                _ => "e2e_shop",
            };
            let body = json!({
                "wallet_id": wallet_id,
                "amount": amount,
                "currency": "EUR",
                "merchant_id": merchant,
            });
            let key = format!("p-{run}-{n}");
            let (status, first, replayed) = if n % 11 == 0 {
                // Two copies at once: one runs, the other is refused as in flight or replayed.
                let (a, b) = tokio::join!(
                    sys.post("/v1/payments", token, &key, &body),
                    sys.post("/v1/payments", token, &key, &body)
                );
                for (x, y) in [(&a, &b), (&b, &a)] {
                    if x.0 == StatusCode::CONFLICT {
                        assert_eq!(x.1["code"], "idempotency_key_in_use");
                        assert_ne!(y.0, StatusCode::CONFLICT, "one of two copies must run");
                    }
                }
                if a.0 != StatusCode::CONFLICT && b.0 != StatusCode::CONFLICT {
                    assert_eq!(
                        (a.0, &a.1),
                        (b.0, &b.1),
                        "the later copy must replay the first"
                    );
                    assert!(a.2 || b.2, "one copy must be flagged as a replay");
                }
                if a.0 == StatusCode::CONFLICT {
                    (b.0, b.1, false)
                } else {
                    (a.0, a.1, false)
                }
            } else {
                sys.post("/v1/payments", token, &key, &body).await
            };
            assert!(!replayed || n % 11 == 0, "fresh key replayed");
            if n % 7 == 0 {
                let (s2, again, replayed) = sys.post("/v1/payments", token, &key, &body).await;
                let what = "a retry must replay the first response";
                assert_eq!((s2, &again), (status, &first), "{what}");
                assert!(replayed, "retry not flagged as replayed");
            }
            (w, kind, amount, status, first)
        })
        .buffer_unordered(16)
        .collect()
        .await;

    let mut accepted = Vec::new();
    for (w, kind, amount, status, body) in &outcomes {
        if *kind == Kind::TooBig {
            assert_eq!(*status, StatusCode::UNPROCESSABLE_ENTITY);
            assert_eq!(body["code"], "insufficient_funds");
        } else {
            assert_eq!(*status, StatusCode::ACCEPTED, "{body}");
            accepted.push((*w, *kind, *amount, body["id"].as_str().unwrap().to_owned()));
        }
    }
    let ids: Vec<uuid::Uuid> = accepted.iter().map(|a| a.3.parse().unwrap()).collect();
    assert_eq!(ids.len(), 228);

    // Wait for every accepted payment to be final.
    let start = Instant::now();
    crate::common::eventually(
        "every accepted payment final",
        Duration::from_secs(120),
        || async {
            let pending: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM payments WHERE id = ANY($1) AND status = 'pending'",
            )
            .bind(&ids)
            .fetch_one(&pool)
            .await
            .unwrap();
            (pending == 0).then_some(())
        },
    )
    .await;
    eprintln!(
        "all {} payments final {:?} after the last was accepted",
        ids.len(),
        start.elapsed()
    );

    // Every payment has the outcome its merchant implies, and the gateway agrees.
    let mut captured: HashMap<usize, i64> = HashMap::new();
    let mut succeeded = 0;
    for (w, kind, amount, id) in &accepted {
        let (_, p) = sys
            .get(
                format!("{}/v1/payments/{id}", sys.wallet),
                Some(&wallets[*w].1),
            )
            .await;
        let (gs, charge) = sys
            .get(format!("{}/v1/charges/{id}", sys.gateway), None)
            .await;
        match kind {
            Kind::Normal => {
                assert_eq!(p["status"], "succeeded", "{p}");
                assert_eq!(charge["status"], "succeeded");
                *captured.entry(*w).or_default() += amount;
                succeeded += 1;
            }
            Kind::Decline => {
                assert_eq!(
                    (&p["status"], &p["failure_reason"]),
                    (&json!("failed"), &json!("declined"))
                );
                assert_eq!(charge["status"], "declined");
            }
            Kind::Unavailable => {
                assert_eq!(
                    (&p["status"], &p["failure_reason"]),
                    (&json!("failed"), &json!("gateway_unavailable"))
                );
                assert_eq!(gs, StatusCode::OK);
                assert_eq!(
                    charge["status"], "voided",
                    "a refused charge is voided at the gateway, never charged"
                );
            }
            Kind::TooBig => unreachable!(),
        }
    }

    // Money: for every wallet, deposits = available + held + captured, and nothing is held.
    for (i, (owner, token, id)) in wallets.iter().enumerate() {
        let (_, b) = sys
            .get(
                format!("{}/v1/wallets/{id}/balance", sys.wallet),
                Some(token),
            )
            .await;
        let cap = captured.get(&i).copied().unwrap_or(0);
        assert_eq!(b["held"], 0, "{owner}: funds still held");
        assert_eq!(
            b["available"].as_i64().unwrap() + cap,
            DEPOSIT,
            "{owner}: money not conserved"
        );
        let (ledger_captured,): (i64,) = sqlx::query_as(
            "SELECT COALESCE(sum(amount), 0)::bigint FROM ledger_entries WHERE wallet_id = $1::uuid AND kind = 'capture'",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(ledger_captured, cap, "{owner}: ledger disagrees");
    }

    // The gateway charged exactly the succeeded payments, each once.
    let stats_after = sys.get(format!("{}/v1/stats", sys.gateway), None).await.1;
    let charged =
        stats_after["charges"].as_i64().unwrap() - stats_before["charges"].as_i64().unwrap();
    assert_eq!(
        charged, succeeded,
        "gateway charges {charged} != succeeded payments {succeeded}"
    );
    eprintln!(
        "{} accepted, {succeeded} succeeded, {} refused up front",
        accepted.len(),
        outcomes.len() - accepted.len()
    );
}
