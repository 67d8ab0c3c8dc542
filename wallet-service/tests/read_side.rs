//! The read side against a real PostgreSQL: summaries that agree with the ledger, time and
//! kind filters, cursors that stay stable while rows arrive, the indexes behind them (by
//! their plans), and the bulk import.

mod common;

use chrono::{DateTime, Utc};
use common::*;
use reqwest::StatusCode;
use serde_json::Value;
use shared::ids::{EventId, PaymentId};
use shared::status::{FailureReason, Outcome};
use sqlx::PgPool;
use std::collections::HashSet;
use wallet_service::store::ledger::{EntryKind, PageFilter};
use wallet_service::store::payments::ListFilter;
use wallet_service::store::window::Window;

async fn finalize(pool: &PgPool, id: &str, outcome: Outcome) {
    let reason = (outcome == Outcome::Failed).then_some(FailureReason::Declined);
    let mut tx = pool.begin().await.unwrap();
    let pid: PaymentId = id.parse().unwrap();
    wallet_service::store::payments::finalize(&mut tx, EventId::new(), pid, outcome, reason, None)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// A payment at "shop", which must be accepted; its id.
async fn accepted(app: &TestApp, owner: &str, wallet: &str, amount: i64) -> String {
    let (status, id) = app.pay_id(owner, wallet, amount, "shop").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    id
}

/// Every entry of the wallet through the paginated API, newest first.
async fn all_entries(app: &TestApp, owner: &str, wallet: &str, query: &str) -> Vec<Value> {
    let path = format!("/v1/wallets/{wallet}/transactions?limit=3{query}");
    app.all_pages(owner, &path, true).await
}

fn rfc3339(t: DateTime<Utc>) -> String {
    // `+00:00` would need escaping in a query string; `Z` does not.
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

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

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn filters_narrow_lists_and_cursors_stay_stable_while_rows_arrive(pool: PgPool) {
    let app = spawn(pool.clone(), Opts::default()).await;
    let wallet = app.create_wallet("alice", "EUR").await;
    app.deposit(&wallet, 1_000_000, "EUR").await;
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(accepted(&app, "alice", &wallet, 100 + i).await);
    }
    let mid = Utc::now();
    for i in 0..4 {
        ids.push(accepted(&app, "alice", &wallet, 200 + i).await);
    }
    for id in &ids[..3] {
        finalize(&pool, id, Outcome::Succeeded).await;
    }
    finalize(&pool, &ids[9], Outcome::Failed).await;

    let list = |query: String| {
        let app = &app;
        async move {
            let r = app
                .get(&format!("/v1/payments?{query}"), &token("alice"))
                .await;
            assert_eq!(r.status(), StatusCode::OK, "{query}");
            r.json::<Value>().await.unwrap()
        }
    };
    let ids_of = |page: &Value| -> Vec<String> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let succeeded = list("status=succeeded&limit=100".into()).await;
    assert_eq!(ids_of(&succeeded).len(), 3);
    let early = list(format!("to={}&limit=100", rfc3339(mid))).await;
    assert_eq!(
        ids_of(&early).into_iter().collect::<HashSet<_>>(),
        ids[..8].iter().cloned().collect()
    );
    let late_failed = list(format!("from={}&status=failed", rfc3339(mid))).await;
    assert_eq!(ids_of(&late_failed), vec![ids[9].clone()]);

    let holds = all_entries(&app, "alice", &wallet, "&kind=hold").await;
    assert_eq!(holds.len(), 12);
    assert!(holds.iter().all(|e| e["kind"] == "hold"));
    let late_holds = all_entries(
        &app,
        "alice",
        &wallet,
        &format!("&kind=hold&from={}", rfc3339(mid)),
    )
    .await;
    assert_eq!(late_holds.len(), 4);
    for bad in ["kind=refund", "from=now", "status=done"] {
        let r = app
            .get(&format!("/v1/payments?{bad}"), &token("alice"))
            .await;
        let r2 = app
            .get(
                &format!("/v1/wallets/{wallet}/transactions?{bad}"),
                &token("alice"),
            )
            .await;
        assert!(
            r.status() == StatusCode::UNPROCESSABLE_ENTITY
                || r2.status() == StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}"
        );
    }

    // Page through while new payments and entries arrive: no row twice, none skipped of
    // those that existed when paging started.
    let before: Vec<String> = ids_of(&list("limit=100".into()).await);
    let mut seen = Vec::new();
    let mut page = list("limit=5".into()).await;
    loop {
        seen.extend(ids_of(&page));
        accepted(&app, "alice", &wallet, 999).await; // a new row between pages
        match page["next_cursor"].as_str() {
            Some(c) => page = list(format!("limit=5&cursor={c}")).await,
            None => break,
        }
    }
    assert_eq!(seen, before, "pages are the list as it was, in order, once");
    let entries_before = all_entries(&app, "alice", &wallet, "").await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/wallets/{wallet}/transactions?limit=4&cursor={c}"),
            None => format!("/v1/wallets/{wallet}/transactions?limit=4"),
        };
        let page: Value = app.get(&path, &token("alice")).await.json().await.unwrap();
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].clone()),
        );
        accepted(&app, "alice", &wallet, 999).await;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let expected: Vec<Value> = entries_before.iter().map(|e| e["id"].clone()).collect();
    assert_eq!(seen, expected);
    app.stop().await;
}

/// Every node of a JSON plan, depth first.
fn nodes(plan: &Value) -> Vec<&Value> {
    let mut out = vec![plan];
    for child in plan["Plans"].as_array().into_iter().flatten() {
        out.extend(nodes(child));
    }
    out
}

fn scans(plan: &Value) -> Vec<(String, String)> {
    nodes(&plan[0]["Plan"])
        .into_iter()
        .filter(|n| n["Node Type"].as_str().unwrap_or_default().contains("Scan"))
        .map(|n| {
            (
                n["Node Type"].as_str().unwrap().to_owned(),
                n["Index Name"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn read_queries_use_their_indexes(pool: PgPool) {
    // 200 wallets x 100 entries and 100 payments each, so a sequential scan would be the
    // planner's choice if no index fitted.
    sqlx::query(
        "INSERT INTO wallets (id, owner_id, currency, available, held)
         SELECT gen_random_uuid(), 'owner-' || (g % 50), 'EUR', 1000000, 0 FROM generate_series(1, 200) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO payments (id, wallet_id, owner_id, amount, currency, merchant_id, status,
                               failure_reason, created_at, finalized_at)
         SELECT gen_random_uuid(), w.id, w.owner_id, 100 + g, 'EUR', 'shop',
                (ARRAY['pending', 'succeeded', 'failed'])[1 + g % 3],
                CASE WHEN g % 3 = 2 THEN 'declined' END,
                now() - make_interval(mins => g),
                CASE WHEN g % 3 <> 0 THEN now() END
         FROM wallets w, generate_series(1, 100) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO ledger_entries (id, wallet_id, kind, amount, payment_id, available_after, held_after, created_at)
         SELECT gen_random_uuid(), p.wallet_id, 'hold', p.amount, p.id, 1000, 0, p.created_at FROM payments p",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE").execute(&pool).await.unwrap();

    let (wallet, owner): (uuid::Uuid, String) =
        sqlx::query_as("SELECT id, owner_id FROM wallets LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    let now = Utc::now();
    let window = Window {
        from: Some(now - chrono::Duration::hours(1)),
        to: Some(now),
    };
    let mut conn = pool.acquire().await.unwrap();
    let mut plans = Vec::new();
    for filter in [
        ListFilter {
            owner_id: Some(owner.clone()),
            wallet_id: None,
            status: None,
            window,
            after: None,
            limit: 21,
        },
        ListFilter {
            owner_id: Some(owner.clone()),
            wallet_id: None,
            status: Some(shared::status::PaymentStatus::Failed),
            window: Window::default(),
            after: None,
            limit: 21,
        },
        ListFilter {
            owner_id: Some(owner.clone()),
            wallet_id: Some(shared::ids::WalletId(wallet)),
            status: Some(shared::status::PaymentStatus::Pending),
            window,
            after: None,
            limit: 21,
        },
    ] {
        plans.push((
            "payments",
            wallet_service::store::payments::explain_list(&mut conn, &filter)
                .await
                .unwrap(),
        ));
    }
    for (kind, window) in [(None, window), (Some(EntryKind::Hold), Window::default())] {
        let f = PageFilter {
            wallet_id: shared::ids::WalletId(wallet),
            kind,
            window,
            before: None,
            limit: 21,
        };
        plans.push((
            "transactions",
            wallet_service::store::ledger::explain_page(&mut conn, &f)
                .await
                .unwrap(),
        ));
    }
    plans.push((
        "summary",
        wallet_service::store::summary::explain_totals(
            &mut conn,
            shared::ids::WalletId(wallet),
            now - chrono::Duration::days(1),
            now,
        )
        .await
        .unwrap(),
    ));
    for (what, plan) in &plans {
        let scans = scans(plan);
        println!("{what}: {scans:?}");
        assert!(!scans.is_empty(), "{what}: no scan in {plan}");
        for (node, index) in &scans {
            assert!(
                node.contains("Index") || node == "Bitmap Heap Scan",
                "{what}: {node} instead of an index scan: {plan:#}"
            );
            if node.contains("Index") {
                assert!(!index.is_empty(), "{what}: {node} without an index");
            }
        }
    }
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn import_is_idempotent_whole_records_only_and_names_bad_lines(pool: PgPool) {
    let dir = std::env::temp_dir().join(format!("import-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (w1, w2) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let deposits: Vec<uuid::Uuid> = (0..5).map(|_| uuid::Uuid::now_v7()).collect();
    let mut lines = vec![
        format!(r#"{{"type":"wallet","id":"{w1}","owner_id":"alice","currency":"EUR"}}"#),
        format!(r#"{{"type":"wallet","id":"{w2}","owner_id":"bob","currency":"USD"}}"#),
    ];
    for (i, d) in deposits.iter().enumerate() {
        let (w, cur) = if i % 2 == 0 { (w1, "EUR") } else { (w2, "USD") };
        lines.push(format!(
            r#"{{"type":"deposit","id":"{d}","wallet_id":"{w}","amount":{},"currency":"{cur}","reference":"opening {i}"}}"#,
            1_000 * (i + 1)
        ));
    }
    let good = dir.join("good.jsonl");
    std::fs::write(&good, lines.join("\n") + "\n").unwrap();
    let path = good.to_str().unwrap();

    let first = wallet_service::import::run(&pool, path).await.unwrap();
    assert_eq!((first.wallets_created, first.deposits_credited), (2, 5));
    let balances = || async {
        sqlx::query_as::<_, (uuid::Uuid, i64, i64)>(
            "SELECT id, available, held FROM wallets ORDER BY id",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let after_first = balances().await;
    assert_eq!(after_first, vec![(w1, 9_000, 0), (w2, 6_000, 0)]);
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_type = 'wallet.deposited'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(events, 5, "a wallet.deposited event per imported deposit");

    // Again: nothing changes.
    let again = wallet_service::import::run(&pool, path).await.unwrap();
    assert_eq!((again.wallets_created, again.wallets_present), (0, 2));
    assert_eq!((again.deposits_credited, again.deposits_present), (0, 5));
    assert_eq!(balances().await, after_first);

    // Bad lines are named and nothing of the file is written.
    let w3 = uuid::Uuid::now_v7();
    let bad = dir.join("bad.jsonl");
    std::fs::write(
        &bad,
        format!(
            "{{\"type\":\"wallet\",\"id\":\"{w3}\",\"owner_id\":\"carol\",\"currency\":\"EUR\"}}\n\
             {{\"type\":\"deposit\",\"id\":\"{}\",\"wallet_id\":\"{w3}\",\"amount\":-5,\"currency\":\"EUR\"}}\n\
             {{\"type\":\"deposit\",\"id\":\"{}\",\"wallet_id\":\"{w3}\",\"amount\":5,\"currency\":\"EURO\"}}\n",
            uuid::Uuid::now_v7(),
            uuid::Uuid::now_v7()
        ),
    )
    .unwrap();
    let err = wallet_service::import::run(&pool, bad.to_str().unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 2") && err.contains("line 3") && !err.contains("line 1:"),
        "{err}"
    );
    let wallets: i64 = sqlx::query_scalar("SELECT count(*) FROM wallets")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(wallets, 2, "nothing of a file with bad lines is imported");

    // A record the database refuses (unknown wallet, reused id with other contents) is named,
    // and its batch is not written: no wallet without the deposits that came with it.
    let conflict = dir.join("conflict.jsonl");
    std::fs::write(
        &conflict,
        format!(
            "{{\"type\":\"wallet\",\"id\":\"{w3}\",\"owner_id\":\"carol\",\"currency\":\"EUR\"}}\n\
             {{\"type\":\"deposit\",\"id\":\"{}\",\"wallet_id\":\"{w1}\",\"amount\":5,\"currency\":\"EUR\"}}\n",
            deposits[0]
        ),
    )
    .unwrap();
    let err = wallet_service::import::run(&pool, conflict.to_str().unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 2") && err.contains("other contents"),
        "{err}"
    );
    assert_eq!(balances().await, after_first);
    let unknown = dir.join("unknown.jsonl");
    std::fs::write(
        &unknown,
        format!(
            "{{\"type\":\"deposit\",\"id\":\"{}\",\"wallet_id\":\"{}\",\"amount\":5,\"currency\":\"EUR\"}}\n",
            uuid::Uuid::now_v7(),
            uuid::Uuid::now_v7()
        ),
    )
    .unwrap();
    let err = wallet_service::import::run(&pool, unknown.to_str().unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 1") && err.contains("does not exist"),
        "{err}"
    );
    assert_money_conserved(&pool).await;
    std::fs::remove_dir_all(&dir).unwrap();
}
