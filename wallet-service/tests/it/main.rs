//! The wallet service's integration tests, in one test binary with a module per area:
//!
//! - `api`: the HTTP contract on a fresh database per test (wallets, payments,
//!   idempotency, access, operations);
//! - `auth`: sign-in, with the HS256 development secret (`secret`) and with an identity
//!   provider's JWKS (`jwks`);
//! - `pipeline`: dispatcher, processor, gateway and result consumer in this process, against
//!   the real RabbitMQ and Kafka broker, and the downstream events;
//! - `read_side`: summaries, filters, cursors, index plans and the bulk import;
//! - `hardening`: what one bad message or one bad dependency must not do to the rest;
//! - `e2e`: many payments through the three processes `scripts/up` runs;
//! - `common`: the harness they share.
//!
//! They need the services `scripts/up` starts, with `.run/env` sourced. One area, or one
//! test, by its path: `cargo test --release -p wallet-service --test it api::` (or
//! `-- pipeline::flow::`, `-- auth::jwks::rotation`).
//!
//! Three tests own process-wide state and stay binaries of their own: `request_logs`
//! (tracing decides callsite interest for the whole process), `metrics_labels` (the
//! process's metrics recorder) and `rate_limit_memory` (measures the process's RSS).

mod common;

mod api;
mod auth;
mod e2e;
mod hardening;
mod pipeline;
mod read_side;
