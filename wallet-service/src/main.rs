//! The `wallet-service` binary: `serve`, `migrate`, `dispatch`, `import`, `token`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use wallet_service::config::{BrokerConfig, DbConfig, DispatcherConfig, ServeConfig};

#[derive(Parser)]
#[command(
    name = "wallet-service",
    version,
    about = "Wallet and payment API of the payment backend"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API, run the outbox dispatcher and the result consumer.
    Serve(Box<ServeConfig>),
    /// Apply database migrations and exit.
    Migrate(DbConfig),
    /// Run only the outbox relays: payment requests to RabbitMQ, events to Kafka.
    Dispatch {
        #[command(flatten)]
        db: DbConfig,
        #[command(flatten)]
        brokers: BrokerConfig,
        #[command(flatten)]
        dispatcher: DispatcherConfig,
        /// Address `/metrics` is served on (loopback by default; beside `serve`'s 9180).
        #[arg(long, env = "DISPATCH_METRICS_BIND", default_value = "127.0.0.1:9182")]
        metrics_bind: String,
    },
    /// Create wallets and deposits from a JSON Lines file (idempotent: re-running the same
    /// file changes nothing). One record per line:
    /// {"type":"wallet","id":UUID,"owner_id":"alice","currency":"EUR"} or
    /// {"type":"deposit","id":UUID,"wallet_id":UUID,"amount":10000,"currency":"EUR","reference":"..."}
    Import {
        /// The JSON Lines file.
        file: String,
        #[command(flatten)]
        db: DbConfig,
    },
    /// List what needs an operator: pending payments and refunds the reconciler gave up on,
    /// results that contradict a payment's final status, and events Kafka refused for good.
    /// With a flag, act on one of them.
    Review {
        /// Give this flagged payment or refund a fresh re-drive budget (the gateway is back).
        #[arg(long, value_name = "PAYMENT_OR_REFUND_ID", group = "action")]
        redrive: Option<uuid::Uuid>,
        /// Mark this contradicting result (its event id) as settled.
        #[arg(long, value_name = "EVENT_ID", group = "action")]
        resolve: Option<uuid::Uuid>,
        /// Put this parked event back in the outbox, behind the events waiting there (once
        /// Kafka can take it: a larger `message.max.bytes`, say).
        #[arg(long, value_name = "EVENT_ID", group = "action")]
        requeue_event: Option<uuid::Uuid>,
        /// At most this many lines of each list.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[command(flatten)]
        db: DbConfig,
    },
    /// Print an HS256 bearer token for local use (development mode, AUTH_JWT_SECRET).
    Token {
        /// The principal (wallet owner) the token speaks for.
        #[arg(long)]
        sub: String,
        /// Grant the operator scope (read everything, deposit).
        #[arg(long)]
        admin: bool,
        /// Lifetime in seconds, at most AUTH_MAX_TOKEN_LIFETIME_SECS.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// The secret, `iss` (`--iss`), `aud` (`--aud`) and longest lifetime: the settings
        /// the service verifies with, so the token is one it accepts.
        #[command(flatten)]
        auth: wallet_service::config::AuthConfig,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Token {
            sub,
            admin,
            ttl,
            auth,
        } => {
            let secret = match auth.mode()? {
                wallet_service::config::AuthMode::Secret(secret) => secret,
                wallet_service::config::AuthMode::Jwks(_) => anyhow::bail!(
                    "`token` signs HS256 tokens with AUTH_JWT_SECRET; with AUTH_JWKS_URL set, \
                     tokens come from the identity provider (scripts/token asks the local one)"
                ),
            };
            shared::auth::check_secret(secret.expose())?;
            let policy = auth.policy();
            anyhow::ensure!(
                ttl <= policy.max_lifetime_secs,
                "--ttl {ttl} is longer than the service accepts: tokens may live at most {} s \
                 (AUTH_MAX_TOKEN_LIFETIME_SECS)",
                policy.max_lifetime_secs
            );
            let token = shared::auth::Mint {
                sub: &sub,
                admin,
                ttl_secs: ttl,
                issuer: policy.issuer.as_deref(),
                audience: policy.audience.as_deref(),
            };
            println!("{}", token.sign(secret.expose()));
            Ok(())
        }
        Command::Import { file, db } => {
            let pool = wallet_service::app::connect_db(&db).await?;
            wallet_service::migrate(&pool)
                .await
                .context("applying migrations")?;
            let start = std::time::Instant::now();
            // An operator's error: the reason and the line, not a backtrace.
            let s = match wallet_service::import::run(&pool, &file).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("[import] {file}: {e}");
                    std::process::exit(1);
                }
            };
            eprintln!(
                "[import] {file}: {} wallets created, {} already present; {} deposits credited, {} already present ({:.1} s)",
                s.wallets_created,
                s.wallets_present,
                s.deposits_credited,
                s.deposits_present,
                start.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Review {
            redrive,
            resolve,
            requeue_event,
            limit,
            db,
        } => {
            let pool = wallet_service::app::connect_db(&db).await?;
            if let Some(id) = redrive {
                use wallet_service::review::Redriven;
                let what = match wallet_service::review::redrive(&pool, id).await? {
                    Redriven::Payment => "payment",
                    Redriven::Refund => "refund",
                    Redriven::Nothing => anyhow::bail!(
                        "{id} is not a pending payment or refund flagged for attention"
                    ),
                };
                println!(
                    "{what} {id}: re-drive budget reset; \
                     the reconciler sends it again at its next pass"
                );
            } else if let Some(id) = resolve {
                let done = wallet_service::review::resolve_conflict(&pool, id).await?;
                anyhow::ensure!(done, "no open conflict for event {id}");
                println!("conflict {id}: marked resolved");
            } else if let Some(id) = requeue_event {
                let done = wallet_service::review::requeue_event(&pool, id).await?;
                anyhow::ensure!(done, "no parked event {id}");
                println!("event {id}: back in the outbox; the event relay sends it next");
            } else {
                print!("{}", wallet_service::review::report(&pool, limit).await?);
            }
            Ok(())
        }
        Command::Migrate(db) => {
            shared::telemetry::init_tracing("wallet-service");
            let pool = wallet_service::app::connect_db(&db).await?;
            wallet_service::migrate(&pool)
                .await
                .context("applying migrations")?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Dispatch {
            db,
            brokers,
            dispatcher,
            metrics_bind,
        } => {
            shared::telemetry::init_tracing("wallet-service-dispatcher");
            let metrics = shared::telemetry::install_metrics();
            let shutdown = shared::shutdown::on_signal();
            let running = wallet_service::app::dispatch(
                db,
                brokers,
                dispatcher,
                (&metrics_bind, metrics),
                shutdown,
            )
            .await?;
            running.wait().await;
            tracing::info!("wallet-service dispatcher stopped");
            Ok(())
        }
        Command::Serve(cfg) => {
            shared::telemetry::init_tracing("wallet-service");
            let metrics = shared::telemetry::install_metrics();
            let shutdown = shared::shutdown::on_signal();
            let running = wallet_service::app::start(*cfg, metrics, shutdown).await?;
            running.wait().await;
            tracing::info!("wallet-service stopped");
            Ok(())
        }
    }
}
