//! Everything that reads or writes PostgreSQL. Functions take a connection (or
//! transaction) so callers decide what commits together.

pub mod cursor;
pub mod errors;
pub mod ledger;
pub mod payments;
pub mod refunds;
pub mod summary;
pub mod wallets;
pub mod window;
