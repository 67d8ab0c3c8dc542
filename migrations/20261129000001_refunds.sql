-- Refunds: money back to the wallet after the gateway returned it.
--
-- A refund reserves its amount against the payment when it is accepted
-- (payments.refund_reserved), and moves it to payments.refunded when the gateway says yes
-- (or drops the reservation when it says no). The CHECK below is what makes two concurrent
-- refunds unable to exceed the captured amount, whatever the code does: both update the same
-- payment row, so the second waits for the first and then fails the check.
ALTER TABLE payments
    ADD COLUMN refund_reserved bigint NOT NULL DEFAULT 0,
    ADD COLUMN refunded        bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT payments_refunds_within_captured CHECK (
        refund_reserved >= 0 AND refunded >= 0 AND refund_reserved + refunded <= amount
        AND (status = 'succeeded' OR refund_reserved + refunded = 0)
    );

CREATE TABLE refunds (
    id                uuid PRIMARY KEY,
    payment_id        uuid        NOT NULL REFERENCES payments (id),
    wallet_id         uuid        NOT NULL REFERENCES wallets (id),
    owner_id          text        NOT NULL,
    amount            bigint      NOT NULL CHECK (amount > 0),
    currency          char(3)     NOT NULL,
    reason            text,
    status            text        NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'succeeded', 'failed')),
    failure_reason    text,
    gateway_reference text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    finalized_at      timestamptz,
    -- The reconciler re-drives refunds left pending, like payments.
    redrive_count     integer     NOT NULL DEFAULT 0,
    last_redrive_at   timestamptz,
    attention_since   timestamptz,
    CONSTRAINT refunds_terminal_state_consistent CHECK (
        (status = 'pending' AND finalized_at IS NULL AND failure_reason IS NULL)
        OR (status = 'succeeded' AND finalized_at IS NOT NULL AND failure_reason IS NULL)
        OR (status = 'failed' AND finalized_at IS NOT NULL AND failure_reason IS NOT NULL)
    )
);
CREATE INDEX refunds_payment_idx ON refunds (payment_id, created_at, id);
CREATE INDEX refunds_pending_idx ON refunds (created_at) WHERE status = 'pending';

-- The ledger gets `refund` entries (the credit to `available`), one per refund: a payment may
-- have several, so the one-entry-per-kind rule now excludes refunds and each refund's entry
-- is unique by its own id.
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_kind_check;
ALTER TABLE ledger_entries
    ADD CONSTRAINT ledger_entries_kind_check
        CHECK (kind IN ('deposit', 'hold', 'capture', 'release', 'refund')),
    ADD COLUMN refund_id uuid REFERENCES refunds (id),
    ADD CONSTRAINT ledger_refund_entries CHECK ((kind = 'refund') = (refund_id IS NOT NULL));
DROP INDEX ledger_one_entry_per_payment_kind;
CREATE UNIQUE INDEX ledger_one_entry_per_payment_kind ON ledger_entries (payment_id, kind)
    WHERE payment_id IS NOT NULL AND kind <> 'refund';
CREATE UNIQUE INDEX ledger_one_entry_per_refund ON ledger_entries (refund_id)
    WHERE refund_id IS NOT NULL;

-- The inbox records results of refunds too: payment_id stays the payment's.
ALTER TABLE processed_events ADD COLUMN refund_id uuid;
