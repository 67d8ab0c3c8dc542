//! The `processor-service` binary.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = processor_service::config::Config::parse();
    shared::telemetry::init_tracing("processor-service");
    let metrics = shared::telemetry::install_metrics();
    let shutdown = shared::shutdown::on_signal();
    let running = processor_service::start(cfg, metrics, shutdown).await?;
    running.wait().await;
    tracing::info!("processor-service stopped");
    Ok(())
}
