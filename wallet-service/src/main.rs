//! The `wallet-service` binary: `serve` (default), `migrate`, `dispatch`, `token`.

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
    /// Run only the outbox dispatcher (to scale it apart from the API).
    Dispatch {
        #[command(flatten)]
        db: DbConfig,
        #[command(flatten)]
        brokers: BrokerConfig,
        #[command(flatten)]
        dispatcher: DispatcherConfig,
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
            let d = wallet_service::outbox::dispatcher::Dispatcher {
                pool,
                amqp_url: brokers.amqp_url,
                topology: shared::topology::AmqpTopology::with_prefix(&brokers.broker_prefix),
                config: dispatcher,
                connected: Default::default(),
            };
            d.run(shutdown).await;
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
