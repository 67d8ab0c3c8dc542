-- The reconciler re-drives payments still pending past a deadline through the outbox.
ALTER TABLE payments
    ADD COLUMN redrive_count   integer     NOT NULL DEFAULT 0,
    ADD COLUMN last_redrive_at timestamptz;
