//! wallet-service: the wallet and payment API, the outbox dispatcher and the result consumer.
//!
//! A payment's life here: [`http`] validates and authenticates the request;
//! [`store::payments::accept`] holds the funds and writes the payment, its ledger entry and
//! its outbox event in one transaction (guarded by [`idempotency`]); the
//! [`outbox::dispatcher`] relays the event to RabbitMQ; the processor-service charges the
//! gateway and publishes the result to Kafka; the [`finalizer`] applies the result exactly
//! once ([`store::payments::finalize`]): capture on success, release on failure. The
//! [`reconciler`] re-sends payments still pending past a deadline.
//!
//! [`app`] wires these together for `wallet-service serve` and for the integration tests.

pub mod alerts;
pub mod app;
pub mod config;
pub mod finalizer;
pub mod housekeeping;
pub mod http;
pub mod idempotency;
pub mod import;
pub mod outbox;
pub mod reconciler;
pub mod review;
pub mod signin;
pub mod store;

/// The migrations in `migrations/`, embedded so the binary can apply them itself.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");
