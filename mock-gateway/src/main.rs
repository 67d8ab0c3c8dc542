use anyhow::Context;
use clap::Parser;
use mock_gateway::{app, Config, Gateway};
use shared::telemetry::{init_tracing, install_metrics, MetricsServer};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_tracing("mock-gateway");
    let metrics = install_metrics();
    let gateway = Gateway::new(&config)?;
    let retention = gateway.spawn_retention(&config);
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("binding {}", config.bind))?;
    let metrics_server = MetricsServer::bind(&config.metrics_bind.to_string(), metrics).await?;
    tracing::info!(
        addr = %listener.local_addr()?,
        metrics_addr = %metrics_server.local_addr()?,
        "listening"
    );
    let shutdown = shared::shutdown::on_signal();
    let mut sd = shutdown.clone();
    let metrics_task = tokio::spawn(metrics_server.serve(async move { sd.wait().await }));
    let mut sd = shutdown;
    axum::serve(listener, app(gateway))
        .with_graceful_shutdown(async move { sd.wait().await })
        .await?;
    let _ = metrics_task.await;
    retention.abort();
    tracing::info!("stopped");
    Ok(())
}
