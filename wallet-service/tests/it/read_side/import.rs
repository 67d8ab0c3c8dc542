//! The bulk import: idempotent, whole records only, and bad lines named.

use crate::common::*;
use sqlx::PgPool;

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
