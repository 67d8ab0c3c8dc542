//! Label values never come from what a client sends: thousands of made-up methods and paths
//! sent to the wallet-service, the processor-service and the gateway add no series, and
//! metrics are served on each service's own metrics listener only. A test binary of its own,
//! not a module of `it`, so the process's metrics (one global recorder) are this test's alone.

// The `it` binary's harness; this binary uses only a few of its helpers (and re-exports).
#[path = "it/common/mod.rs"]
#[allow(dead_code, unused_imports)]
mod common;

use common::*;
use reqwest::{Client, Method, StatusCode};
use sqlx::PgPool;
use std::time::Duration;

/// The HTTP metrics' sample lines of a Prometheus text page: one per series (and per
/// bucket of a histogram). Other metrics move with background work, not with requests.
fn series(page: &str) -> Vec<&str> {
    page.lines().filter(|l| l.starts_with("http_")).collect()
}

/// Bytes of those lines.
fn size(page: &str) -> usize {
    series(page).iter().map(|l| l.len() + 1).sum()
}

/// Every `method="..."` value on the page.
fn methods(page: &str) -> std::collections::BTreeSet<String> {
    page.split("method=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap_or_default().to_owned())
        .collect()
}

/// A method token of `len` characters unique to `i`.
fn odd_method(i: usize, len: usize) -> Method {
    let mut m = format!("ZZODD{i}X");
    while m.len() < len {
        m.push('Q');
    }
    Method::from_bytes(m.as_bytes()).unwrap()
}

async fn scrape(client: &Client, url: &str) -> String {
    let r = client.get(url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{url}");
    r.text().await.unwrap()
}

/// Sends `n` requests to `base`, each with a method or a path never seen before (methods up
/// to 2 KB), on a known route (`route`) and on unknown paths; answers must be 4xx.
async fn flood(client: &Client, base: &str, route: &str, n: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    let workers = 8;
    for worker in 0..workers {
        let (client, base, route) = (client.clone(), base.to_owned(), route.to_owned());
        tasks.spawn(async move {
            for k in 0..n / workers {
                let i = 1 + worker * (n / workers) + k;
                let (method, path) = match i % 3 {
                    0 => (odd_method(i, 16 + (i * 37) % 2048), route.clone()),
                    1 => (
                        odd_method(i, 16 + (i * 53) % 2048),
                        format!("/zz/{i}/{}", "p".repeat(i % 500)),
                    ),
                    _ => (Method::GET, format!("/zz/{i}?q={i}")),
                };
                let r = client
                    .request(method, format!("{base}{path}"))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_client_error(), "{base}{path}: {}", r.status());
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn made_up_methods_and_paths_add_no_series_on_any_service(pool: PgPool) {
    let wallet = spawn(pool, Opts::default()).await;
    let gateway = common::pipeline::gateway(0).await;
    let prefix = unique_prefix();
    let processor_cfg = processor_service::config::Config {
        bind: "127.0.0.1:0".into(),
        metrics_bind: "127.0.0.1:0".into(),
        amqp_url: amqp_url(),
        kafka_brokers: kafka_brokers(),
        gateway_url: gateway.url(""),
        gateway_timeout: Duration::from_millis(1000),
        gateway_attempts: 3,
        gateway_backoff: Duration::from_millis(20),
        concurrency: 8,
        drain_timeout: Duration::from_millis(5_000),
        broker_prefix: prefix,
    };
    let (trigger, shutdown) = shared::shutdown::channel();
    let processor = processor_service::start(
        processor_cfg,
        shared::telemetry::install_metrics(),
        shutdown,
    )
    .await
    .expect("processor starts");
    let processor_url = format!("http://{}", processor.addr);
    let processor_metrics = format!(
        "http://{}/metrics",
        processor.metrics_addr.expect("a metrics listener")
    );
    let client = Client::new();
    let targets = [
        (wallet.url.clone(), "/v1/payments"),
        (processor_url.clone(), "/readyz"),
        (gateway.url(""), "/v1/stats"),
    ];

    // Metrics are on each service's metrics listener, not on its public port.
    for (base, _) in &targets {
        let r = client.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{base}/metrics");
    }
    for url in [
        &wallet.metrics_url,
        &processor_metrics,
        &gateway.metrics_url(),
    ] {
        assert!(scrape(&client, url).await.contains("http_requests_total"));
    }

    // Every kind of request once, so the series the flood may touch exist.
    for (base, route) in &targets {
        flood(&client, base, route, 24).await;
    }
    let before = scrape(&client, &wallet.metrics_url).await;

    for (base, route) in &targets {
        flood(&client, base, route, 2400).await;
    }

    // One process, one recorder: every service's page shows the same series.
    let after = scrape(&client, &wallet.metrics_url).await;
    let new: Vec<&str> = series(&after)
        .into_iter()
        .filter(|l| {
            let name = l.rsplit_once(' ').map_or(*l, |(s, _)| s);
            !before.contains(name)
        })
        .collect();
    assert!(new.is_empty(), "series appeared:\n{}", new.join("\n"));
    assert_eq!(series(&after).len(), series(&before).len());
    assert!(
        size(&after) < size(&before) + 8192,
        "the HTTP metrics grew from {} to {} bytes",
        size(&before),
        size(&after)
    );
    assert!(!after.contains("ZZODD") && !after.contains("/zz/"));
    let allowed = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER",
    ];
    for m in methods(&after) {
        assert!(allowed.contains(&m.as_str()), "method label {m:?}");
    }
    assert!(after.contains(r#"method="OTHER",route="unmatched""#));

    trigger.fire();
    tokio::time::timeout(Duration::from_secs(30), processor.wait())
        .await
        .expect("processor drains");
    wallet.stop().await;
}
