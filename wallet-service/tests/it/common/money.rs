//! The money invariant, checked against the database.

use sqlx::PgPool;

/// Per wallet: deposits = available + held + captured, from the ledger and the balances.
pub async fn assert_money_conserved(pool: &PgPool) {
    let rows: Vec<(uuid::Uuid, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT w.id, w.available, w.held,
                COALESCE((SELECT sum(amount) FROM ledger_entries WHERE wallet_id = w.id AND kind = 'deposit'), 0)::bigint,
                COALESCE((SELECT sum(amount) FROM ledger_entries WHERE wallet_id = w.id AND kind = 'capture'), 0)::bigint
         FROM wallets w",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for (id, available, held, deposits, captured) in rows {
        assert_eq!(
            deposits,
            available + held + captured,
            "money not conserved in wallet {id}"
        );
        assert!(
            available >= 0 && held >= 0,
            "negative balance in wallet {id}"
        );
    }
}
