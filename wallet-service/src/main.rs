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
    /// Print a signed bearer token for local use.
    Token {
        /// The principal (wallet owner) the token speaks for.
        #[arg(long)]
        sub: String,
        /// Grant the operator scope (read everything, deposit).
        #[arg(long)]
        admin: bool,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        #[arg(long, env = "AUTH_JWT_SECRET", hide_env_values = true)]
        secret: wallet_service::config::Secret,
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
            secret,
        } => {
            println!(
                "{}",
                wallet_service::auth::mint(secret.expose(), &sub, admin, ttl)
            );
            Ok(())
        }
        Command::Import { file, db } => {
            let pool = wallet_service::app::connect_db(&db).await?;
            wallet_service::MIGRATOR
                .run(&pool)
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
        Command::Migrate(db) => {
            shared::telemetry::init_tracing("wallet-service");
            let pool = wallet_service::app::connect_db(&db).await?;
            wallet_service::MIGRATOR
                .run(&pool)
                .await
                .context("applying migrations")?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Dispatch {
            db,
            brokers,
            dispatcher,
        } => {
            shared::telemetry::init_tracing("wallet-service-dispatcher");
            let _metrics = shared::telemetry::install_metrics();
            let pool = wallet_service::app::connect_db(&db).await?;
            let shutdown = shared::shutdown::on_signal();
            let relay = wallet_service::outbox::relay::EventRelay::new(
                pool.clone(),
                shared::kafka::producer(&brokers.kafka_brokers)?,
                &brokers,
                dispatcher.clone(),
            );
            let d = wallet_service::outbox::dispatcher::Dispatcher::new(pool, &brokers, dispatcher);
            tokio::join!(d.run(shutdown.clone()), relay.run(shutdown));
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
