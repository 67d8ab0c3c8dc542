//! Logs and metrics, set up the same way in every service.
//!
//! Logs go to stderr through `tracing` (`RUST_LOG` filters, `LOG_FORMAT=json` for
//! machine-readable lines). Metrics go through the `metrics` facade to a Prometheus
//! recorder rendered at `GET /metrics` on a listener of its own ([`MetricsServer`]), never on
//! a service's public port. Label values never come from what a client sends: methods
//! outside a fixed set are `OTHER`, paths are the matched route or `unmatched`.

use anyhow::Context;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
pub use metrics_exporter_prometheus::PrometheusHandle;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tracing::Instrument;
use tracing_subscriber::EnvFilter;

/// Latency buckets in seconds: sub-millisecond to tens of seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

pub fn init_tracing(service: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,lapin=warn,rdkafka=warn"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.compact().try_init()
    };
    tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "starting");
}

/// Installs the global Prometheus recorder once per process and returns its handle; later
/// calls (several services in one test process) return the same handle, so every
/// in-process service renders the process's metrics.
pub fn install_metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("static buckets are valid");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                // Someone else's recorder is installed: ours renders nothing, but works.
                tracing::warn!("a metrics recorder was already installed");
                return handle;
            }
            describe_http_metrics();
            // A thread of its own, so upkeep does not depend on the runtime that happened to
            // install the recorder (in tests, runtimes come and go).
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                });
            handle
        })
        .clone()
}

fn describe_http_metrics() {
    metrics::describe_counter!(
        "http_requests_total",
        "HTTP requests answered, by method, matched route and status."
    );
    metrics::describe_histogram!(
        "http_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP request latency, by method, matched route and status."
    );
}

/// `GET /metrics`.
pub async fn render_metrics(State(handle): State<PrometheusHandle>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

/// The metrics listener: `GET /metrics` alone, on an address of its own (loopback by
/// default), so business counters are not served to whoever reaches the public port.
pub struct MetricsServer {
    listener: TcpListener,
    handle: PrometheusHandle,
}

impl MetricsServer {
    /// Binds `bind` (`host:port`; port 0 picks a free one).
    pub async fn bind(bind: &str, handle: PrometheusHandle) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(bind)
            .await
            .with_context(|| format!("binding the metrics listener {bind}"))?;
        Ok(Self { listener, handle })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves. Scrapes are not counted in `http_requests_total`.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let app = Router::new()
            .route("/metrics", get(render_metrics))
            .with_state(self.handle);
        if let Err(e) = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "metrics server failed");
        }
    }
}

/// The `method` label: the standard methods by name, anything else `OTHER` (a client can
/// send any token as a method; each would otherwise become a series of its own).
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// Middleware recording rate, status and latency of every request. Every label comes from
/// a fixed set: the matched route's template (`unmatched` for any path no route takes), the
/// method through [`method_label`], and the status the service answered.
pub async fn track_http(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(req.method());
    let start = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    let labels = [
        ("method", method.to_owned()),
        ("route", route),
        ("status", status),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(start.elapsed().as_secs_f64());
    response
}

/// The header that carries a request's id, both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The client's request id, when it is safe to log and echo: 1 to 128 characters of
/// `A-Z a-z 0-9 - _ . : /`. A UUID, a ULID or a trace id pass; anything else (spaces, quotes,
/// control characters, a kilobyte of text) is replaced by a fresh id rather than written into
/// every log line of the request.
pub fn acceptable_request_id(value: &str) -> bool {
    (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b))
}

/// Middleware giving every request an id and a span. The id is the client's `X-Request-Id`
/// when [`acceptable_request_id`], else a new UUID v7; it goes back in the response's
/// `X-Request-Id`. The span, `request{request_id, method, route, principal}`, is around the
/// whole handling, so every line logged for the request carries them (`principal` is filled
/// in once the bearer token was checked).
pub async fn request_span(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let value = header::HeaderValue::from_str(&id).expect("an acceptable id is a header value");
    req.headers_mut().insert(REQUEST_ID_HEADER, value.clone());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = method_label(req.method()),
        route,
        principal = tracing::field::Empty,
    );
    let mut response = next.run(req).instrument(span).await;
    response.headers_mut().insert(REQUEST_ID_HEADER, value);
    response
}

/// One dependency's state, as `/readyz` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReadinessCheck {
    pub name: &'static str,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ReadinessCheck {
    pub fn ok(name: &'static str) -> Self {
        Self {
            name,
            ok: true,
            error: None,
        }
    }

    pub fn down(name: &'static str, error: impl Into<String>) -> Self {
        Self {
            name,
            ok: false,
            error: Some(error.into()),
        }
    }
}

/// How long a readiness answer is reused: a flood of `/readyz` costs one probe of the
/// dependencies per second, not one per request.
pub const READINESS_TTL: Duration = Duration::from_secs(1);

/// The last readiness probe, reused for [`READINESS_TTL`]. Callers arriving while a probe
/// runs wait for it and share its answer: at most one probe is in flight.
pub struct ReadinessCache {
    ttl: Duration,
    last: tokio::sync::Mutex<Option<(Instant, Vec<ReadinessCheck>)>>,
}

impl Default for ReadinessCache {
    fn default() -> Self {
        Self::new(READINESS_TTL)
    }
}

impl ReadinessCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The checks of a probe at most `ttl` old, running `probe` if there is none.
    pub async fn checks<F, Fut>(&self, probe: F) -> Vec<ReadinessCheck>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Vec<ReadinessCheck>>,
    {
        // Held across the probe: the single in-flight check the others wait for.
        let mut last = self.last.lock().await;
        if let Some((at, checks)) = &*last {
            if at.elapsed() < self.ttl {
                return checks.clone();
            }
        }
        let checks = probe().await;
        *last = Some((Instant::now(), checks.clone()));
        checks
    }
}

/// `/readyz` body: 200 when every check passed, else 503 naming what is down.
pub fn readiness(checks: Vec<ReadinessCheck>) -> Response {
    let down: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.name).collect();
    let status = if down.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if down.is_empty() { "ready" } else { "not_ready" },
        "down": down,
        "checks": checks,
    });
    (status, axum::Json(body)).into_response()
}

/// `/healthz`: the process is alive.
pub async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn request_ids_safe_to_log_are_kept_and_others_are_not() {
        let longest = "x".repeat(128);
        for ok in [
            "0196e0c4-5b9a-7c3e-8f00-0123456789ab",
            "req-1",
            "a.b:c/d_e",
            &longest,
        ] {
            assert!(acceptable_request_id(ok), "{ok}");
        }
        let too_long = "x".repeat(129);
        for bad in ["", "two words", "quote\"d", "new\nline", "é", &too_long] {
            assert!(!acceptable_request_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn methods_outside_the_standard_set_are_other() {
        assert_eq!(method_label(&Method::POST), "POST");
        for odd in ["ZZODD1", "get", "PROPFIND", &"X".repeat(2048)] {
            let m = Method::from_bytes(odd.as_bytes()).unwrap();
            assert_eq!(method_label(&m), "OTHER", "{odd}");
        }
    }

    #[tokio::test]
    async fn concurrent_readiness_callers_share_one_probe_until_it_expires() {
        // The probe is held open until every caller has been started, so they all arrive
        // while it is in flight.
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let probes = Arc::new(AtomicUsize::new(0));
        let ask = |cache: Arc<ReadinessCache>,
                   probes: Arc<AtomicUsize>,
                   gate: Arc<tokio::sync::Semaphore>| async move {
            cache
                .checks(|| async {
                    probes.fetch_add(1, Ordering::SeqCst);
                    let _open = gate.acquire().await.unwrap();
                    vec![ReadinessCheck::ok("postgres")]
                })
                .await
        };
        let cache = Arc::new(ReadinessCache::new(Duration::from_secs(3600)));
        let callers: Vec<_> = (0..100)
            .map(|_| tokio::spawn(ask(cache.clone(), probes.clone(), gate.clone())))
            .collect();
        gate.add_permits(1);
        for c in callers {
            assert!(c.await.unwrap()[0].ok);
        }
        assert_eq!(
            probes.load(Ordering::SeqCst),
            1,
            "one probe for 100 callers"
        );
        ask(cache.clone(), probes.clone(), gate.clone()).await;
        assert_eq!(probes.load(Ordering::SeqCst), 1, "fresh answer reused");
        // An answer past its time to live is probed again.
        let expired = Arc::new(ReadinessCache::new(Duration::ZERO));
        ask(expired.clone(), probes.clone(), gate.clone()).await;
        ask(expired, probes.clone(), gate.clone()).await;
        assert_eq!(
            probes.load(Ordering::SeqCst),
            3,
            "expired answer probed again"
        );
    }
}
