//! The summary of a wallet agrees with its ledger over any window.

use super::{accepted, all_entries, finalize, rfc3339};
use crate::common::*;
use chrono::Utc;
use reqwest::StatusCode;
use serde_json::Value;
use shared::status::Outcome;
use sqlx::PgPool;

/// Sums the entries of one kind: (count, total).
fn tally(entries: &[Value], kind: &str) -> (i64, i64) {
    let of_kind: Vec<&Value> = entries.iter().filter(|e| e["kind"] == kind).collect();
    (
        of_kind.len() as i64,
        of_kind.iter().map(|e| e["amount"].as_i64().unwrap()).sum(),
    )
}

fn pair(v: &Value) -> (i64, i64) {
    (v["count"].as_i64().unwrap(), v["total"].as_i64().unwrap())
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn the_summary_agrees_with_the_ledger_over_any_window(pool: PgPool) {
    let app = spawn(pool.clone(), Opts::default()).await;
    let wallet = app.create_wallet("alice", "EUR").await;
    app.deposit(&wallet, 50_000, "EUR").await;
    let a = accepted(&app, "alice", &wallet, 1_000).await;
    let b = accepted(&app, "alice", &wallet, 2_500).await;
    let mid = Utc::now();
    app.deposit(&wallet, 7_000, "EUR").await;
    let c = accepted(&app, "alice", &wallet, 300).await;
    let _d = accepted(&app, "alice", &wallet, 4_200).await; // stays pending
    finalize(&pool, &a, Outcome::Succeeded).await;
    finalize(&pool, &b, Outcome::Failed).await;
    finalize(&pool, &c, Outcome::Succeeded).await;

    // The summary of alice's wallet; `query` is empty or starts with `?`.
    let summary = |query: String| {
        let (app, wallet) = (&app, &wallet);
        async move {
            app.get(
                &format!("/v1/wallets/{wallet}/summary{query}"),
                &token("alice"),
            )
            .await
            .json::<Value>()
            .await
            .unwrap()
        }
    };

    // The whole life of the wallet.
    let s = summary(String::new()).await;
    let entries = all_entries(&app, "alice", &wallet, "").await;
    assert_eq!(s["wallet_id"], wallet.as_str());
    assert_eq!(s["currency"], "EUR");
    assert_eq!(pair(&s["deposits"]), tally(&entries, "deposit"));
    assert_eq!(pair(&s["deposits"]), (2, 57_000));
    assert_eq!(pair(&s["captured"]), tally(&entries, "capture"));
    assert_eq!(pair(&s["captured"]), (2, 1_300));
    assert_eq!(pair(&s["released"]), (1, 2_500));
    assert_eq!(pair(&s["pending"]), (1, 4_200));
    assert_eq!(s["min_payment"], 300);
    assert_eq!(s["max_payment"], 4_200);
    let (available, held) = app.balance("alice", &wallet).await;
    assert_eq!(
        57_000,
        available + held + 1_300,
        "deposits = available + held + captured"
    );
    assert_eq!(held, 4_200, "held = pending");

    // Only the first half: a and b were placed before `mid`; their outcomes came later,
    // so within [.., mid) they are pending, and nothing was captured or released yet.
    let s = summary(format!("?to={}", rfc3339(mid))).await;
    assert_eq!(pair(&s["deposits"]), (1, 50_000));
    assert_eq!(pair(&s["pending"]), (2, 3_500));
    assert_eq!(pair(&s["captured"]), (0, 0));
    assert_eq!(pair(&s["released"]), (0, 0));
    assert_eq!(
        (s["min_payment"].as_i64(), s["max_payment"].as_i64()),
        (Some(1_000), Some(2_500))
    );

    // The second half, from the ledger's own entries.
    let late = all_entries(&app, "alice", &wallet, &format!("&from={}", rfc3339(mid))).await;
    let s = summary(format!("?from={}", rfc3339(mid))).await;
    for (field, kind) in [
        ("deposits", "deposit"),
        ("captured", "capture"),
        ("released", "release"),
    ] {
        assert_eq!(pair(&s[field]), tally(&late, kind), "{field}");
    }
    assert_eq!(pair(&s["pending"]), (1, 4_200));

    // A window before the wallet existed: zeros and no min/max.
    let (from, to) = (
        mid - chrono::Duration::days(2),
        mid - chrono::Duration::days(1),
    );
    let s = summary(format!("?from={}&to={}", rfc3339(from), rfc3339(to))).await;
    for field in ["deposits", "captured", "released", "pending"] {
        assert_eq!(pair(&s[field]), (0, 0), "{field}");
    }
    assert_eq!(
        (s["min_payment"].clone(), s["max_payment"].clone()),
        (Value::Null, Value::Null)
    );

    // Bad windows, other principals.
    for q in [
        "from=yesterday",
        "to=2026-13-01T00:00:00Z",
        "from=2026-11-23T10:00:00Z&to=2026-11-23T09:00:00Z",
    ] {
        let r = app
            .get(
                &format!("/v1/wallets/{wallet}/summary?{q}"),
                &token("alice"),
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{q}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["code"],
            "validation_failed"
        );
    }
    let r = app
        .get(&format!("/v1/wallets/{wallet}/summary"), &token("mallory"))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = app
        .get(&format!("/v1/wallets/{wallet}/summary"), &admin_token())
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    app.stop().await;
}
