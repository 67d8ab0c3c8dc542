use anyhow::Context;
use clap::{Parser, Subcommand};
use local_idp::{router, Provider, Settings};
use std::path::PathBuf;

/// A local identity provider for development and tests: a JWKS, ES256 tokens, key rotation.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the JWKS and the token endpoint.
    Serve {
        /// Address to listen on (loopback: anyone who reaches it can mint admin tokens).
        #[arg(long, env = "IDP_BIND", default_value = "127.0.0.1:8070")]
        bind: String,
        /// The `iss` of every token (default: `http://<bind>/`).
        #[arg(long, env = "AUTH_ISSUER")]
        issuer: Option<String>,
        /// The `aud` of every token.
        #[arg(long, env = "AUTH_AUDIENCE", default_value = "wallet-api")]
        audience: String,
        /// The longest lifetime a token may ask for, in seconds.
        #[arg(long, env = "IDP_MAX_TTL_SECS", default_value_t = 86_400)]
        max_ttl: u64,
        /// Where the private keys are kept across restarts (created when absent).
        #[arg(long, env = "IDP_KEYS_FILE")]
        keys_file: Option<PathBuf>,
    },
    /// Ask a running provider for a token and print it.
    Token {
        /// The provider's base URL.
        #[arg(long, env = "IDP_URL", default_value = "http://127.0.0.1:8070")]
        url: String,
        /// The principal (wallet owner) the token speaks for.
        #[arg(long)]
        sub: String,
        /// Grant the admin scope (read everything, deposit).
        #[arg(long)]
        admin: bool,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Make a running provider sign with a new key (the previous one stays published).
    Rotate {
        #[arg(long, env = "IDP_URL", default_value = "http://127.0.0.1:8070")]
        url: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve {
            bind,
            issuer,
            audience,
            max_ttl,
            keys_file,
        } => {
            shared::telemetry::init_tracing("local-idp");
            let listener = tokio::net::TcpListener::bind(&bind)
                .await
                .with_context(|| format!("binding {bind}"))?;
            let addr = listener.local_addr()?;
            let issuer = issuer
                .filter(|i| !i.is_empty())
                .unwrap_or_else(|| format!("http://{addr}/"));
            let provider = Provider::new(Settings {
                issuer: issuer.clone(),
                audience: audience.clone(),
                max_ttl_secs: max_ttl,
                keys_file,
            })?;
            tracing::info!(
                %addr,
                %issuer,
                %audience,
                kid = %provider.current_kid(),
                "serving the JWKS at /.well-known/jwks.json and tokens at POST /token",
            );
            let mut shutdown = shared::shutdown::on_signal();
            axum::serve(listener, router(provider))
                .with_graceful_shutdown(async move { shutdown.wait().await })
                .await?;
            tracing::info!("stopped");
        }
        Command::Token {
            url,
            sub,
            admin,
            ttl,
        } => {
            let source = shared::auth::TokenSource::new(Some(url), None, None, None)?;
            match source.token(&sub, admin, ttl).await {
                Ok(token) => println!("{token}"),
                // The reason in one line, for a script's user.
                Err(e) => {
                    eprintln!("local-idp token: {e}");
                    std::process::exit(1);
                }
            }
        }
        Command::Rotate { url } => {
            let url = format!("{}/rotate", url.trim_end_matches('/'));
            let answer = reqwest::Client::new()
                .post(&url)
                .send()
                .await
                .with_context(|| format!("POST {url}"))?
                .error_for_status()?
                .text()
                .await?;
            println!("{answer}");
        }
    }
    Ok(())
}
