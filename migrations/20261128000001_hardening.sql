-- Hardening: contradicting results are kept for operators, and the reconciler backs off
-- per payment and gives up (flagging the payment) instead of re-sending it forever.

-- A result that disagrees with a payment's final status (failed, then succeeded). It means
-- money is wrong somewhere (the gateway and the wallet disagree); nothing is changed
-- automatically, the row is what an operator works from.
CREATE TABLE payment_outcome_conflicts (
    event_id          uuid PRIMARY KEY,
    payment_id        uuid        NOT NULL REFERENCES payments (id),
    recorded_status   text        NOT NULL,
    reported_outcome  text        NOT NULL,
    reported_reason   text,
    reported_reference text,
    recorded_reference text,
    detected_at       timestamptz NOT NULL DEFAULT now(),
    resolved_at       timestamptz
);
CREATE INDEX payment_outcome_conflicts_open_idx ON payment_outcome_conflicts (detected_at)
    WHERE resolved_at IS NULL;

-- Set when the reconciler spent its re-drive budget on a payment still pending: the
-- payment keeps its hold and waits for an operator (docs/OPERATIONS.md).
ALTER TABLE payments ADD COLUMN attention_since timestamptz;
CREATE INDEX payments_attention_idx ON payments (attention_since)
    WHERE status = 'pending' AND attention_since IS NOT NULL;
-- The reconciler's pass reads only the payments it may still re-drive, so payments left
-- flagged for months do not lengthen every pass.
CREATE INDEX payments_redrivable_idx ON payments (created_at)
    WHERE status = 'pending' AND attention_since IS NULL;

-- The inbox is pruned by age like the outbox.
CREATE INDEX processed_events_processed_at_idx ON processed_events (processed_at);
