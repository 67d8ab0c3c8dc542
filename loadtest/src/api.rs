//! The HTTP side: calls to the wallet-service, the gateway's stats, metrics scrapes.

use reqwest::{Client, StatusCode};
use serde_json::Value;
use std::time::Duration;

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    /// `Idempotent-Replayed: true` was present.
    pub replayed: bool,
    /// `Retry-After` (seconds), on 429 and 503.
    pub retry_after: Option<Duration>,
}

impl Reply {
    /// The problem `code`, if the body has one.
    pub fn code(&self) -> Option<&str> {
        self.body.get("code").and_then(Value::as_str)
    }

    /// `STATUS[ code]`, the key of an unexpected answer in the error table.
    pub fn describe(&self) -> String {
        match self.code() {
            Some(c) => format!("{} {c}", self.status.as_u16()),
            None => self.status.as_u16().to_string(),
        }
    }

    /// Worth retrying with the same key: nothing definitive was stored.
    pub fn transient(&self) -> bool {
        self.status.is_server_error()
            || self.status == StatusCode::CONFLICT
            || self.status == StatusCode::TOO_MANY_REQUESTS
    }
}

/// A call that got no HTTP answer.
#[derive(Debug, Clone)]
pub enum CallError {
    Timeout,
    Connect,
    Other,
}

impl CallError {
    pub fn describe(&self) -> String {
        match self {
            CallError::Timeout => "timeout".into(),
            CallError::Connect => "connect error".into(),
            CallError::Other => "transport error".into(),
        }
    }

    fn from(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            CallError::Timeout
        } else if e.is_connect() {
            CallError::Connect
        } else {
            CallError::Other
        }
    }
}

pub type CallResult = Result<Reply, CallError>;

#[derive(Clone)]
pub struct Api {
    http: Client,
    pub wallet: String,
    pub gateway: String,
    /// The wallet-service's and the processor-service's metrics pages.
    pub wallet_metrics: String,
    pub processor_metrics: String,
}

impl Api {
    pub fn new(
        wallet: &str,
        gateway: &str,
        wallet_metrics: &str,
        processor_metrics: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let http = Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()?;
        let trim = |s: &str| s.trim_end_matches('/').to_owned();
        Ok(Self {
            http,
            wallet: trim(wallet),
            gateway: trim(gateway),
            wallet_metrics: wallet_metrics.to_owned(),
            processor_metrics: processor_metrics.to_owned(),
        })
    }

    /// POST to the wallet-service, with an Idempotency-Key.
    pub async fn post(&self, path: &str, token: &str, key: &str, body: &Value) -> CallResult {
        let req = self
            .http
            .post(format!("{}{path}", self.wallet))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(body);
        Self::send(req).await
    }

    /// GET from the wallet-service.
    pub async fn get(&self, path: &str, token: &str) -> CallResult {
        Self::send(
            self.http
                .get(format!("{}{path}", self.wallet))
                .bearer_auth(token),
        )
        .await
    }

    /// GET any URL, without a token.
    pub async fn get_url(&self, url: &str) -> CallResult {
        Self::send(self.http.get(url)).await
    }

    async fn send(req: reqwest::RequestBuilder) -> CallResult {
        let r = req.send().await.map_err(CallError::from)?;
        let status = r.status();
        let replayed = r
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        let retry_after = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = r.bytes().await.map_err(CallError::from)?;
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok(Reply {
            status,
            body,
            replayed,
            retry_after,
        })
    }

    /// GET for the checks (not measured): rides out rate limiting (429, honouring
    /// Retry-After), 5xx and lost answers for up to 60 s.
    pub async fn get_patiently(&self, path: &str, token: &str) -> CallResult {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut attempt = 0u32;
        loop {
            let r = self.get(path, token).await;
            let wait = match &r {
                Ok(reply) if reply.transient() => reply.retry_after,
                Ok(_) => return r,
                Err(_) => None,
            };
            attempt += 1;
            let wait = wait.unwrap_or(Duration::from_millis(50 << attempt.min(5)));
            if std::time::Instant::now() + wait > deadline {
                return r;
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// The gateway's `/v1/stats`.
    pub async fn gateway_stats(&self) -> anyhow::Result<Value> {
        let r = self
            .get_url(&format!("{}/v1/stats", self.gateway))
            .await
            .map_err(|e| anyhow::anyhow!("gateway /v1/stats: {}", e.describe()))?;
        anyhow::ensure!(
            r.status.is_success(),
            "gateway /v1/stats answered {}",
            r.status
        );
        Ok(r.body)
    }

    /// The gateway's record of a charge by its idempotency key (the payment id).
    pub async fn gateway_charge(&self, key: &str) -> CallResult {
        self.get_url(&format!("{}/v1/charges/{key}", self.gateway))
            .await
    }

    /// One gauge from a service's Prometheus metrics page (`url`, on the service's metrics
    /// listener; `None` if absent or unreachable).
    pub async fn scrape(&self, url: &str, metric: &str) -> Option<f64> {
        let r = self
            .http
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        let text = r.text().await.ok()?;
        metric_value(&text, metric)
    }
}

/// The value of an unlabelled sample `metric` (or the sum over its labelled series) in a
/// Prometheus text exposition.
pub fn metric_value(text: &str, metric: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        let rest = if let Some(labels) = rest.strip_prefix('{') {
            match labels.find('}') {
                Some(end) => &labels[end + 1..],
                None => continue,
            }
        } else if rest.starts_with(' ') {
            rest
        } else {
            continue; // a longer name with this prefix
        };
        if let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_values() {
        let text = "# HELP outbox_backlog Outbox events not yet published.\n\
                    # TYPE outbox_backlog gauge\n\
                    outbox_backlog 12\n\
                    outbox_backlog_extra 99\n\
                    requests_in_flight{queue=\"a\"} 3\n\
                    requests_in_flight{queue=\"b\"} 4 1700000000\n";
        assert_eq!(metric_value(text, "outbox_backlog"), Some(12.0));
        assert_eq!(metric_value(text, "requests_in_flight"), Some(7.0));
        assert_eq!(metric_value(text, "outbox"), None);
        assert_eq!(metric_value(text, "missing"), None);
    }
}
