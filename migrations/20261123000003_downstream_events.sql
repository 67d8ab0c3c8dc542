-- Events for other systems travel through the same outbox as payment requests: `channel`
-- says where a row goes (payments → RabbitMQ; events and alerts → Kafka). `seq` is taken
-- when the row is written, after the wallet row was locked, so for one wallet it follows
-- the order in which its changes committed; the relays publish in `seq` order.
ALTER TABLE outbox
    ADD COLUMN channel text NOT NULL DEFAULT 'payments'
        CHECK (channel IN ('payments', 'events', 'alerts')),
    ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY;
DROP INDEX outbox_unpublished_idx;
CREATE INDEX outbox_unpublished_idx ON outbox (channel, seq) WHERE published_at IS NULL;

-- The read side: a wallet's ledger by kind (statements filtered by kind; summaries), and
-- payments by owner and status. Time windows ride on these and on the existing
-- (wallet_id, seq) / (…, created_at) indexes; tests/read_side.rs checks the plans.
CREATE INDEX ledger_wallet_kind_idx ON ledger_entries (wallet_id, kind, seq DESC);
CREATE INDEX payments_owner_status_idx ON payments (owner_id, status, created_at DESC, id DESC);
