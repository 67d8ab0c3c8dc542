use anyhow::Context;
use clap::Parser;
use mock_gateway::{app, Config, Gateway};
use shared::telemetry::{init_tracing, install_metrics};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_tracing("mock-gateway");
    let metrics = install_metrics();
    let gateway = Gateway::new(&config)?;
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("binding {}", config.bind))?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    axum::serve(listener, app(gateway, metrics))
        .with_graceful_shutdown(shared::shutdown::signal())
        .await?;
    tracing::info!("stopped");
    Ok(())
}
