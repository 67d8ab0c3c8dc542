-- The two indexes by time replace those by sequence number.
--
-- `created_at` becomes the time of the insert, not of the transaction's start. Every entry
-- is written after its transaction has locked the wallet's row, so within a wallet entries
-- are stamped in the order they commit, the order of `seq`: ordering the list by
-- (`created_at`, `seq`) keeps its keyset pagination free of rows appearing behind a client
-- that is paging.
--
-- Dropping an index takes a brief exclusive lock on the table; give up rather than hold
-- every payment behind a long-running reader (the service tries again, 30 times a second
-- apart, then exits; starting it again tries again).
SET LOCAL lock_timeout = '5s';
DO $$
BEGIN
    IF (SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE c.relname IN ('ledger_wallet_time_idx', 'ledger_wallet_kind_time_idx')
          AND i.indisvalid) <> 2 THEN
        RAISE EXCEPTION 'ledger_wallet_time_idx or ledger_wallet_kind_time_idx is missing or INVALID (an interrupted concurrent build): drop it, delete its row from _sqlx_migrations (versions 20261209000001 and 20261209000002) and start the service again';
    END IF;
END $$;
ALTER TABLE ledger_entries ALTER COLUMN created_at SET DEFAULT clock_timestamp();
DROP INDEX ledger_wallet_idx;
DROP INDEX ledger_wallet_kind_idx;
