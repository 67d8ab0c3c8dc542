//! Request ids in answers and logs. A binary of its own, not a module of `it`: it captures
//! the service's logs with a subscriber set for this test's thread, and tracing decides per
//! callsite, for the whole process, whether a span is wanted; another test running at the
//! same moment with no subscriber can make that decision first, and the request span would
//! go missing here.

// The `it` binary's harness; this binary uses only a few of its helpers (and re-exports).
#[path = "it/common/mod.rs"]
#[allow(dead_code, unused_imports)]
mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

#[derive(Clone, Default)]
struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    fn lines(&self) -> Vec<String> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn every_request_has_an_id_in_its_answer_and_in_every_line_it_logs(pool: PgPool) {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish(),
    );
    let app = spawn(pool, Opts::default()).await;
    let wallet = app.create_wallet("alice", "EUR").await;
    app.deposit(&wallet, 10_000, "EUR").await;

    // A sane id of the client's is kept and answered back.
    let pay = |request_id: &str| {
        app.http
            .post(format!("{}/v1/payments", app.url))
            .bearer_auth(token("alice"))
            .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
            .header("X-Request-Id", request_id)
            .json(&json!({"wallet_id": wallet, "amount": 100, "currency": "EUR", "merchant_id": "m_1"}))
            .send()
    };
    let r = pay("req-7f3a.b:9/1").await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["x-request-id"], "req-7f3a.b:9/1");
    let payment_id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let accepted: Vec<String> = logs
        .lines()
        .into_iter()
        .filter(|l| l.contains("payment accepted"))
        .collect();
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    for field in [
        "request_id=req-7f3a.b:9/1",
        "route=\"/v1/payments\"",
        "principal=\"alice\"",
        &format!("payment_id={payment_id}"),
    ] {
        assert!(
            accepted[0].contains(field),
            "{field} missing from {}",
            accepted[0]
        );
    }

    // One that would write into the logs (spaces, quotes, a kilobyte) is replaced by a
    // fresh UUID, and so is a missing one; every answer has one, errors included.
    let long = "x".repeat(1024);
    for bad in ["two words", "quote\"d", long.as_str()] {
        let r = pay(bad).await.unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert!(id.parse::<uuid::Uuid>().is_ok(), "{id} is not a fresh UUID");
        assert!(
            !logs.lines().iter().any(|l| l.contains(bad)),
            "{bad:?} was logged"
        );
    }
    let r = app.get("/v1/no-such-route", &token("alice")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let id = r.headers()["x-request-id"].to_str().unwrap();
    assert!(id.parse::<uuid::Uuid>().is_ok());
    app.stop().await;
}
