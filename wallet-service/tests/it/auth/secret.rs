//! The HS256 development mode: bearer tokens over HTTP with `AUTH_ISSUER`, `AUTH_AUDIENCE` and
//! `AUTH_MAX_TOKEN_LIFETIME_SECS` set: every refused token gets the very same 401 problem,
//! whichever check failed, and a weak secret stops the service before it starts.

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "wallet-api";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign_with(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn remove(claims: &mut Value, name: &str) {
    claims.as_object_mut().unwrap().remove(name);
}

/// Valid claims for the configured policy, with `change` applied.
fn token(change: impl FnOnce(&mut Value)) -> String {
    let t = now();
    let mut claims = json!({
        "sub": "alice", "iat": t, "nbf": t, "exp": t + 600, "iss": ISSUER, "aud": AUDIENCE,
    });
    change(&mut claims);
    sign_with(SECRET, &claims)
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn every_refused_token_gets_the_same_401(pool: PgPool) {
    let mut cfg = serve_config(&Opts::default());
    cfg.auth = wallet_service::config::AuthConfig::with_secret(SECRET);
    cfg.auth.issuer = Some(ISSUER.into());
    cfg.auth.audience = Some(AUDIENCE.into());
    cfg.auth.max_token_lifetime_secs = 3600;
    let (trigger, shutdown) = shared::shutdown::channel();
    let service_pool = wallet_service::app::pool_with(&cfg.db, (*pool.connect_options()).clone());
    let running = wallet_service::app::start_with_pool(
        cfg,
        service_pool,
        shared::telemetry::install_metrics(),
        shutdown,
    )
    .await
    .expect("app starts");
    let url = format!(
        "http://{}/v1/wallets/{}",
        running.addr,
        uuid::Uuid::new_v4()
    );
    let http = reqwest::Client::new();
    let get = |token: String| {
        let req = http.get(&url).bearer_auth(token);
        async move { req.send().await.unwrap() }
    };

    // Accepted: authentication passes, the wallet just does not exist.
    assert_eq!(get(token(|_| {})).await.status(), StatusCode::NOT_FOUND);
    let t = now();
    let refused = [
        ("nbf in the future", token(|c| c["nbf"] = json!(t + 300))),
        (
            "wrong issuer",
            token(|c| c["iss"] = json!("https://evil.test")),
        ),
        ("no issuer", token(|c| remove(c, "iss"))),
        ("wrong audience", token(|c| c["aud"] = json!("other-api"))),
        ("no audience", token(|c| remove(c, "aud"))),
        ("lifetime too long", token(|c| c["exp"] = json!(t + 3601))),
        ("no iat", token(|c| remove(c, "iat"))),
        ("iat in the future", token(|c| c["iat"] = json!(t + 300))),
        ("expired", token(|c| c["exp"] = json!(t - 60))),
        (
            "wrong secret",
            sign_with(
                "another-secret-that-is-long-enough-0123",
                &json!({"sub": "alice", "iat": t, "exp": t + 60, "iss": ISSUER, "aud": AUDIENCE}),
            ),
        ),
        ("from the identity provider", crate::common::token("alice")),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    let mut first: Option<Value> = None;
    for (case, token) in refused {
        let r = get(token).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{case}");
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{case}"
        );
        assert_eq!(
            r.headers()["www-authenticate"],
            r#"Bearer error="invalid_token""#,
            "{case}"
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized", "{case}: {body}");
        match &first {
            None => first = Some(body),
            Some(f) => assert_eq!(&body, f, "{case}: the answer tells which check failed"),
        }
    }

    trigger.fire();
    tokio::time::timeout(std::time::Duration::from_secs(30), running.wait())
        .await
        .expect("drains");
}

#[tokio::test]
async fn a_weak_secret_stops_the_service_before_it_starts() {
    for (secret, says) in [
        ("dev-only-jwt-secret-change-me", "placeholder"),
        ("sixteen-byte-key", "at least 32"),
    ] {
        let mut cfg = serve_config(&Opts::default());
        cfg.auth = wallet_service::config::AuthConfig::with_secret(secret);
        // Never connected: the secret is checked before the database is touched.
        let err = start_refused(cfg).await;
        let msg = err.to_string();
        assert!(
            msg.contains("AUTH_JWT_SECRET") && msg.contains(says),
            "{msg}"
        );
        assert!(!msg.contains(secret), "the message shows the secret: {msg}");
    }
}
