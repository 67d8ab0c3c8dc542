//! The money invariants, checked against the database.

use sqlx::PgPool;

/// Per wallet: deposits + refunds = available + held + captured, from the ledger and the
/// balances, and no balance below zero. Per payment: what was refunded and what pending
/// refunds reserve never exceed the capture, and `refunded` is the sum of its succeeded
/// refunds, each with exactly one `refund` ledger entry.
pub async fn assert_money_conserved(pool: &PgPool) {
    let rows: Vec<(uuid::Uuid, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT w.id, w.available, w.held,
                COALESCE((SELECT sum(amount) FROM ledger_entries WHERE wallet_id = w.id AND kind = 'deposit'), 0)::bigint,
                COALESCE((SELECT sum(amount) FROM ledger_entries WHERE wallet_id = w.id AND kind = 'capture'), 0)::bigint,
                COALESCE((SELECT sum(amount) FROM ledger_entries WHERE wallet_id = w.id AND kind = 'refund'), 0)::bigint
         FROM wallets w",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for (id, available, held, deposits, captured, refunds) in rows {
        assert_eq!(
            deposits + refunds,
            available + held + captured,
            "money not conserved in wallet {id}"
        );
        assert!(
            available >= 0 && held >= 0,
            "negative balance in wallet {id}"
        );
    }
    let wrong: Vec<String> =
        sqlx::query_scalar(include_str!("../../../sql/refunds_disagreeing.sql"))
            .fetch_all(pool)
            .await
            .unwrap();
    assert!(
        wrong.is_empty(),
        "refunds disagree with payments: {wrong:?}"
    );
}

/// A wallet of alice's in EUR with the balances given, written straight to the table: for
/// tests that build a history in SQL rather than through the API.
pub async fn insert_wallet(pool: &PgPool, available: i64, held: i64) -> uuid::Uuid {
    let wallet = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO wallets (id, owner_id, currency, available, held)
         VALUES ($1, 'alice', 'EUR', $2, $3)",
    )
    .bind(wallet)
    .bind(available)
    .bind(held)
    .execute(pool)
    .await
    .unwrap();
    wallet
}
