//! Lists: time, status and kind filters, cursors that stay stable while rows arrive, and
//! the indexes behind the read queries, by their plans.

use super::{accepted, all_entries, finalize, rfc3339};
use crate::common::*;
use chrono::Utc;
use reqwest::StatusCode;
use serde_json::Value;
use shared::status::Outcome;
use sqlx::PgPool;
use std::collections::HashSet;
use wallet_service::store::ledger::{EntryKind, PageFilter};
use wallet_service::store::payments::ListFilter;
use wallet_service::store::window::Window;

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
    for bad in ["kind=chargeback", "from=now", "status=done"] {
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

/// Rows a plan read from `table`: those its scans returned plus those their filters threw
/// away.
fn rows_read_from(plan: &Value, table: &str) -> u64 {
    nodes(&plan[0]["Plan"])
        .into_iter()
        .filter(|n| n["Relation Name"] == table)
        .map(|n| {
            n["Actual Rows"].as_u64().unwrap_or(0)
                + n["Rows Removed by Filter"].as_u64().unwrap_or(0)
        })
        .sum()
}

/// A window of a wallet's ledger, the summary's or the transactions list's, reads the
/// entries in the window and not the wallet's history: 20,000 deposits from two days ago
/// and 30 in the last minute, read by the last minute, by a minute a day ago, and a second
/// page through a cursor.
#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn a_window_of_the_ledger_reads_its_entries_not_the_history(pool: PgPool) {
    let wallet = insert_wallet(&pool, 20030, 0).await;
    // Oldest first, as a live wallet's entries are written: one every 6 s for 33 hours from
    // two days ago, then one a second in the last minute.
    let now = Utc::now();
    sqlx::query(
        "INSERT INTO ledger_entries (id, wallet_id, kind, amount, available_after, held_after, created_at)
         SELECT gen_random_uuid(), $1, 'deposit', 1, n, 0, t
         FROM (
             SELECT g AS n, $2 - interval '2 days' + make_interval(secs => g * 6) AS t
             FROM generate_series(1, 20000) g
             UNION ALL
             SELECT 20000 + g, $2 - make_interval(secs => 31 - g) FROM generate_series(1, 30) g
         ) e ORDER BY n",
    )
    .bind(wallet)
    .bind(now)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE ledger_entries")
        .execute(&pool)
        .await
        .unwrap();
    let wallet = shared::ids::WalletId(wallet);
    let last_minute = Window {
        from: Some(now - chrono::Duration::seconds(60)),
        to: Some(now + chrono::Duration::seconds(1)),
    };
    let a_day_ago = now - chrono::Duration::days(1);
    let minute_a_day_ago = Window {
        from: Some(a_day_ago - chrono::Duration::seconds(60)),
        to: Some(a_day_ago),
    };

    // Rows and pages of one plan; an index's upper levels take a few pages.
    let bounded = |what: &str, plan: &Value, rows: u64| {
        let read = rows_read_from(plan, "ledger_entries");
        assert!(read <= rows, "{what} read {read} entries: {plan:#}");
        let root = &plan[0]["Plan"];
        let pages = root["Shared Hit Blocks"].as_u64().unwrap()
            + root["Shared Read Blocks"].as_u64().unwrap();
        assert!(pages <= 12, "{what} read {pages} pages: {plan:#}");
    };
    let mut conn = pool.acquire().await.unwrap();
    for (what, window, entries) in [
        ("the last minute", last_minute, 30),
        ("a minute a day ago", minute_a_day_ago, 10),
    ] {
        let (from, to) = (window.from.unwrap(), window.to.unwrap());
        let totals = wallet_service::store::summary::totals(&mut conn, wallet, from, to)
            .await
            .unwrap();
        assert_eq!(totals.deposits.count, entries, "{what}");
        let plan = wallet_service::store::summary::explain_totals(&mut conn, wallet, from, to)
            .await
            .unwrap();
        bounded(&format!("the summary of {what}"), &plan, entries as u64);
        for kind in [None, Some(EntryKind::Deposit)] {
            let f = PageFilter {
                wallet_id: wallet,
                kind,
                window,
                before: None,
                limit: 21,
            };
            let plan = wallet_service::store::ledger::explain_page(&mut conn, &f)
                .await
                .unwrap();
            assert_eq!(
                plan[0]["Plan"]["Actual Rows"].as_u64(),
                Some(entries.min(21) as u64),
                "{plan:#}"
            );
            bounded(&format!("a page of {what} ({kind:?})"), &plan, 21);
        }
    }

    // The second page of the last minute, from the cursor of the first: the 9 older entries.
    let first = PageFilter {
        wallet_id: wallet,
        kind: None,
        window: last_minute,
        before: None,
        limit: 21,
    };
    let page = wallet_service::store::ledger::page(&mut conn, &first)
        .await
        .unwrap();
    let last = page.last().unwrap();
    let before = wallet_service::store::ledger::position(&mut conn, wallet, last.seq)
        .await
        .unwrap()
        .expect("the entry's position");
    let second = PageFilter {
        before: Some(before),
        ..first
    };
    let rest = wallet_service::store::ledger::page(&mut conn, &second)
        .await
        .unwrap();
    let seqs =
        |p: &[wallet_service::store::ledger::Entry]| p.iter().map(|e| e.seq).collect::<Vec<_>>();
    let all: Vec<i64> = seqs(&page).into_iter().chain(seqs(&rest)).collect();
    let mut newest_first = all.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(all.len(), 30, "{all:?}");
    assert_eq!(all, newest_first);
    let plan = wallet_service::store::ledger::explain_page(&mut conn, &second)
        .await
        .unwrap();
    bounded("the second page of the last minute", &plan, 21);
}

/// An operator's list by a status that is rare in the history reads its page, not every
/// newer payment: three pending payments (flagged ones are the oldest pending) and three
/// failed ones, two days old, under 20,000 succeeded payments of the last day. Also with the
/// generic plan PostgreSQL may settle on for the statement a connection has prepared and run
/// a few times, which cannot use a partial index for a status passed as a parameter.
#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn a_list_by_a_rare_status_reads_its_page_not_the_history(pool: PgPool) {
    let wallet = insert_wallet(&pool, 1000000, 300).await;
    sqlx::query(
        "INSERT INTO payments (id, wallet_id, owner_id, amount, currency, merchant_id, status,
                               failure_reason, created_at, finalized_at)
         SELECT gen_random_uuid(), $1, 'alice', 100, 'EUR', 'shop', s.status,
                CASE WHEN s.status = 'failed' THEN 'declined' END,
                now() - interval '2 days' - make_interval(secs => g),
                CASE WHEN s.status <> 'pending' THEN now() END
         FROM (VALUES ('pending'), ('failed')) s(status), generate_series(1, 3) g
         UNION ALL
         SELECT gen_random_uuid(), $1, 'alice', 100, 'EUR', 'shop', 'succeeded', NULL,
                now() - make_interval(secs => g), now()
         FROM generate_series(1, 20000) g",
    )
    .bind(wallet)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE payments")
        .execute(&pool)
        .await
        .unwrap();

    let filter = |status| ListFilter {
        owner_id: None,
        wallet_id: None,
        status: Some(status),
        window: Window::default(),
        after: None,
        limit: 21,
    };
    let statuses = [
        shared::status::PaymentStatus::Pending,
        shared::status::PaymentStatus::Failed,
    ];

    // The statement as the service runs it (prepared once per connection, then run again),
    // with the generic plan from the first run. Which indexes it scanned, from PostgreSQL's
    // counters: the partial ones only.
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
        .unwrap();
    for status in statuses {
        for _ in 0..3 {
            let page = wallet_service::store::payments::list(&mut conn, &filter(status))
                .await
                .unwrap();
            assert_eq!(page.len(), 3, "{status:?}");
        }
    }
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let scans: Vec<(String, i64)> = eventually(
        "the index scans counted",
        std::time::Duration::from_secs(30),
        || async {
            let scans: Vec<(String, i64)> = sqlx::query_as(
                "SELECT indexrelname::text, idx_scan FROM pg_stat_user_indexes
                 WHERE relname = 'payments' AND idx_scan > 0 ORDER BY 1",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            (scans.iter().map(|s| s.1).sum::<i64>() >= 6).then_some(scans)
        },
    )
    .await;
    assert_eq!(
        scans,
        [
            ("payments_failed_idx".to_owned(), 3),
            ("payments_pending_idx".to_owned(), 3)
        ]
    );

    // The plan with the status's value (a first run), by the rows and pages it read.
    let mut conn = pool.acquire().await.unwrap();
    for status in statuses {
        let plan = wallet_service::store::payments::explain_list(&mut conn, &filter(status))
            .await
            .unwrap();
        assert_eq!(plan[0]["Plan"]["Actual Rows"].as_u64(), Some(3), "{plan:#}");
        let read = rows_read_from(&plan, "payments");
        assert!(
            read <= 21,
            "listing {status:?} payments read {read} rows: {plan:#}"
        );
        // Index entries skipped by a condition on a later column count nowhere above:
        // the pages read do (20,000 rows fill well over a hundred).
        let root = &plan[0]["Plan"];
        let pages = root["Shared Hit Blocks"].as_u64().unwrap()
            + root["Shared Read Blocks"].as_u64().unwrap();
        assert!(
            pages <= 20,
            "listing {status:?} payments read {pages} pages: {plan:#}"
        );
    }
}
