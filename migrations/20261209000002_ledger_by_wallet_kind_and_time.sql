-- no-transaction
-- The kind-filtered twin of `ledger_wallet_time_idx` (the previous migration says why),
-- built the same way.
CREATE INDEX CONCURRENTLY IF NOT EXISTS ledger_wallet_kind_time_idx
    ON ledger_entries (wallet_id, kind, created_at DESC, seq DESC);
