-- no-transaction
-- A wallet's ledger is read by time: the transactions list newest first, and windows
-- (`from`/`to`) of that list and of the summary. The ledger's indexes were by sequence
-- number, so a window read every entry of the wallet and filtered them by `created_at`: a
-- one-minute window of a busy wallet cost as much as its whole history. This index and the
-- next replace `ledger_wallet_idx` and `ledger_wallet_kind_idx` (dropped by the third
-- migration of the set), so an entry costs the same index writes as before.
--
-- Built CONCURRENTLY, outside a transaction, so that payments go on while it is built over
-- a large ledger; PostgreSQL allows one such statement per migration. A build that is
-- interrupted leaves an INVALID index behind, which IF NOT EXISTS would take as done: the
-- third migration refuses to drop the old indexes until both new ones are valid
-- (docs/OPERATIONS.md, "Migrations", says what to do then).
CREATE INDEX CONCURRENTLY IF NOT EXISTS ledger_wallet_time_idx
    ON ledger_entries (wallet_id, created_at DESC, seq DESC);
