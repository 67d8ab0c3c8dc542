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

/// Applies [`MIGRATOR`] on a connection of its own, without the service's statement and lock
/// timeouts, which are sized for requests: an index built `CONCURRENTLY` over a large table
/// runs as long as it needs and waits for the transactions in flight without blocking them
/// (under the service's timeouts, it was cancelled and left an invalid index). Migrations that
/// take exclusive locks set their own `lock_timeout`. The connection is closed afterwards, not
/// handed back to the pool with those settings.
///
/// Instances starting together take turns on [`MIGRATION_LOCK`], asked for with
/// `pg_try_advisory_lock` every 250 ms. sqlx's own lock is a blocking `pg_advisory_lock`,
/// whose waiting statement holds a snapshot; a concurrent index build waits for every older
/// snapshot, so the build and the waiter would wait for each other until PostgreSQL killed
/// one, most likely the build (leaving an invalid index).
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    use sqlx::Executor;
    let mut conn = pool.acquire().await?;
    conn.execute("SET statement_timeout = 0; SET lock_timeout = 0")
        .await?;
    let applied = async {
        let mut told = false;
        while !sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .fetch_one(&mut *conn)
            .await?
        {
            if !told {
                tracing::info!("another instance is applying the migrations; waiting for it");
                told = true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        MIGRATOR.run_direct(&mut *conn).await
    }
    .await;
    // Closing also releases the advisory lock, whatever happened.
    let _ = conn.close().await;
    applied
}

/// The advisory lock (per database) instances hold while they apply the migrations.
pub const MIGRATION_LOCK: i64 = 0x7761_6c6c_6574_6d67; // "walletmg"
