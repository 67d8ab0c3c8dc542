-- The two indexes by time replace those by sequence number.
--
-- `created_at` becomes the time of the insert, not of the transaction's start. Every entry
-- is written after its transaction has locked the wallet's row, so within a wallet entries
-- are stamped in the order they commit, the order of `seq`: ordering the list by
-- (`created_at`, `seq`) keeps its keyset pagination free of rows appearing behind a client
-- that is paging.
--
-- Dropping an index takes a brief exclusive lock on the table, and every ledger write
-- queues behind the drop while it waits for that lock: give up after half a second rather
-- than hold payments behind a long-running reader (the service tries again, 30 times a
-- second apart, then exits; starting it again tries again).
SET LOCAL lock_timeout = '500ms';
DO $$
DECLARE
    valid text[];
BEGIN
    SELECT array_agg(c.relname::text) INTO valid
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
    WHERE i.indrelid = 'ledger_entries'::regclass AND i.indisvalid
      AND c.relname IN ('ledger_wallet_time_idx', 'ledger_wallet_kind_time_idx');
    IF coalesce(cardinality(valid), 0) <> 2 THEN
        RAISE EXCEPTION 'of ledger_wallet_time_idx (migration 20261209000001) and ledger_wallet_kind_time_idx (20261209000002), only % is valid: an interrupted concurrent build leaves an INVALID index; drop it, delete its migration''s row from _sqlx_migrations and start the service again (docs/OPERATIONS.md, "Migrations")', coalesce(valid, '{}');
    END IF;
END $$;
ALTER TABLE ledger_entries ALTER COLUMN created_at SET DEFAULT clock_timestamp();
DROP INDEX ledger_wallet_idx;
DROP INDEX ledger_wallet_kind_idx;
