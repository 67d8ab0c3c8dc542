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
    let wrong: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "WITH r AS (
             SELECT payment_id,
                    COALESCE(sum(amount) FILTER (WHERE status = 'succeeded'), 0) AS succeeded,
                    COALESCE(sum(amount) FILTER (WHERE status = 'pending'), 0) AS pending
             FROM refunds GROUP BY payment_id
         ), e AS (
             SELECT l.payment_id, sum(l.amount) AS entries
             FROM ledger_entries l JOIN refunds f ON f.id = l.refund_id
             GROUP BY l.payment_id
         )
         SELECT p.id, format('amount %s, refunded %s, reserved %s, succeeded refunds %s, \
                              pending refunds %s, refund entries %s',
                             p.amount, p.refunded, p.refund_reserved, COALESCE(r.succeeded, 0),
                             COALESCE(r.pending, 0), COALESCE(e.entries, 0))
         FROM payments p
         LEFT JOIN r ON r.payment_id = p.id
         LEFT JOIN e ON e.payment_id = p.id
         WHERE p.refunded + p.refund_reserved > p.amount
            OR p.refunded <> COALESCE(r.succeeded, 0)
            OR p.refund_reserved <> COALESCE(r.pending, 0)
            OR p.refunded <> COALESCE(e.entries, 0)
            OR (p.refunded + p.refund_reserved > 0 AND p.status <> 'succeeded')",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(
        wrong.is_empty(),
        "refunds disagree with payments: {wrong:?}"
    );
}
