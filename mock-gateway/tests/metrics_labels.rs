//! Label values never come from what a client sends: thousands of made-up methods and paths
//! add no series. A test binary of its own, so the process's metrics are this test's alone.

use mock_gateway::{spawn, Config};
use reqwest::{Client, Method, StatusCode};

fn config() -> Config {
    Config {
        bind: "127.0.0.1:0".parse().unwrap(),
        metrics_bind: "127.0.0.1:0".parse().unwrap(),
        latency_ms: 0,
        decline_rate: 0.0,
        error_rate: 0.0,
        seed: Some(7),
        data_file: None,
    }
}

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

/// A method token of `len` characters unique to `i` (tokens may be any visible letters).
fn odd_method(i: usize, len: usize) -> Method {
    let mut m = format!("ZZODD{i}X");
    while m.len() < len {
        m.push('Q');
    }
    Method::from_bytes(m.as_bytes()).unwrap()
}

#[tokio::test]
async fn made_up_methods_and_paths_add_no_series() {
    let gw = spawn(config()).await.expect("gateway starts");
    let client = Client::new();
    let scrape = || async {
        let r = client.get(gw.metrics_url()).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.text().await.unwrap()
    };

    // Once each kind, so every series the flood may touch exists.
    let r = client
        .request(odd_method(0, 8), gw.url("/v1/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let r = client
        .request(odd_method(0, 8), gw.url("/zz/0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = client.get(gw.url("/zz/0")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let before = scrape().await;

    // 3000 requests, each with a method or a path never seen before; methods up to 2 KB.
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let (client, base) = (client.clone(), gw.url(""));
        tasks.spawn(async move {
            for n in 0..375 {
                let i = 1 + worker * 375 + n;
                let (method, path, expect) = match i % 3 {
                    0 => (
                        odd_method(i, 16 + (i * 37) % 2048),
                        "/v1/stats".to_owned(),
                        StatusCode::METHOD_NOT_ALLOWED,
                    ),
                    1 => (
                        odd_method(i, 16 + (i * 53) % 2048),
                        format!("/zz/{i}/{}", "p".repeat(i % 500)),
                        StatusCode::NOT_FOUND,
                    ),
                    _ => (Method::GET, format!("/zz/{i}?q={i}"), StatusCode::NOT_FOUND),
                };
                let r = client
                    .request(method, format!("{base}{path}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), expect, "{path}");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }

    let after = scrape().await;
    assert_eq!(
        series(&after).len(),
        series(&before).len(),
        "series appeared:\n{}",
        series(&after)
            .into_iter()
            .filter(|l| !before.contains(l.rsplit_once(' ').map_or(*l, |(s, _)| s)))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The page grew by a few digits of counts, not by anything a client sent.
    assert!(
        size(&after) < size(&before) + 4096,
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
    assert!(after.contains(r#"method="OTHER",route="unmatched",status="404""#));
    assert!(after.contains(r#"method="OTHER",route="/v1/stats",status="405""#));
}
