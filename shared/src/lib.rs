//! Code both services (and the mock gateway) share.
//!
//! Start with the domain types, which are parsed once at the edge and trusted after:
//! [`money`] (`Amount`, `Currency`), [`ids`] (`WalletId`, `PaymentId`, `EventId`) and
//! [`status`] (`PaymentStatus`, `Outcome`). [`events`] holds the two wire messages of the
//! pipeline (`payment.requested` on RabbitMQ, `payment.result` on Kafka) and the rules for
//! rejecting ones we cannot process; [`notifications`] the events other systems consume
//! (`payment.finalized`, `wallet.deposited`, `payment.alert`). [`topology`] names and declares the broker objects;
//! [`backoff`] is the retry schedule; [`telemetry`] sets up logs and Prometheus metrics;
//! [`shutdown`] is the SIGTERM signal every worker listens to; [`auth`] the bearer tokens;
//! [`throttle`] keeps an outage from flooding the log.
//! Those last ones sit behind cargo features (`brokers`, `telemetry`, `runtime`, `auth`,
//! and for tokens `jwks`, `signing`, `token-source`), so that a crate compiles only the
//! clients it uses.

#[cfg(feature = "brokers")]
pub mod amqp;
#[cfg(feature = "auth")]
pub mod auth;
pub mod backoff;
#[cfg(feature = "postgres")]
pub mod db;
pub mod events;
pub mod gateway;
pub mod ids;
#[cfg(feature = "brokers")]
pub mod kafka;
pub mod money;
pub mod notifications;
#[cfg(feature = "runtime")]
pub mod shutdown;
pub mod status;
#[cfg(feature = "telemetry")]
pub mod telemetry;
pub mod text;
pub mod throttle;
#[cfg(feature = "brokers")]
pub mod topology;
pub mod trace;
