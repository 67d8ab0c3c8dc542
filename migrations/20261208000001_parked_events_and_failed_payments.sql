-- Events for other systems that the Kafka producer refuses for good (larger than its
-- message.max.bytes). The event relay moves such a row here instead of offering it again
-- forever, so the events behind it go on; it stays here, out of the pruner's reach, until
-- an operator requeues it (`wallet-service review`).
CREATE TABLE outbox_parked (
    id            uuid PRIMARY KEY,
    aggregate_id  uuid        NOT NULL,
    event_type    text        NOT NULL,
    channel       text        NOT NULL,
    payload       jsonb       NOT NULL,
    traceparent   text,
    created_at    timestamptz NOT NULL,
    parked_at     timestamptz NOT NULL DEFAULT now(),
    reason        text        NOT NULL
);
CREATE INDEX outbox_parked_at_idx ON outbox_parked (parked_at);

-- An operator's list of failed payments, newest first, reads its page from this index, not
-- the history back to the failures it asks for: failures may be rare and old, and
-- `payments_created_idx` filtered by status walked every newer payment first. Written only
-- when a payment fails. (Pending payments have `payments_pending_idx` already.)
CREATE INDEX payments_failed_idx ON payments (created_at DESC, id DESC) WHERE status = 'failed';
