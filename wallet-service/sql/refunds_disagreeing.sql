-- Payments whose refund columns disagree with their refunds or their ledger, one line each:
-- reserved and refunded beyond the capture, `refunded` other than the succeeded refunds or
-- than the refund entries, reservations other than the pending refunds, refund money on a
-- payment that did not succeed. Refunds and their ledger entries (reached through their
-- refund id) are summed once per payment, then joined: one pass, whatever the history.
-- Shared by the integration tests' money check and the chaos suite (include_str!).
WITH r AS (
    SELECT payment_id,
           COALESCE(sum(amount) FILTER (WHERE status = 'succeeded'), 0) AS succeeded,
           COALESCE(sum(amount) FILTER (WHERE status = 'pending'), 0) AS pending
    FROM refunds GROUP BY payment_id
), e AS (
    SELECT l.payment_id, sum(l.amount) AS entries
    FROM ledger_entries l JOIN refunds f ON f.id = l.refund_id
    GROUP BY l.payment_id
)
SELECT format('%s: amount %s, refunded %s, reserved %s, succeeded refunds %s, pending %s, refund entries %s',
              p.id, p.amount, p.refunded, p.refund_reserved,
              COALESCE(r.succeeded, 0), COALESCE(r.pending, 0), COALESCE(e.entries, 0))
FROM payments p
LEFT JOIN r ON r.payment_id = p.id
LEFT JOIN e ON e.payment_id = p.id
WHERE p.refunded + p.refund_reserved > p.amount
   OR p.refunded <> COALESCE(r.succeeded, 0)
   OR p.refund_reserved <> COALESCE(r.pending, 0)
   OR p.refunded <> COALESCE(e.entries, 0)
   OR (p.refunded + p.refund_reserved > 0 AND p.status <> 'succeeded')
