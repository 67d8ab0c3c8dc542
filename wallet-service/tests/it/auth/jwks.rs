//! Sign-in with an identity provider: the service checks RS256/ES256 tokens against the JWKS
//! a real provider (the project's local one, over HTTP) serves. Every refusal is the same 401
//! with `WWW-Authenticate: Bearer error="invalid_token"`; a provider that cannot be reached
//! before the keys were ever fetched makes the service unready and answer 503, not 401.

use crate::common::*;
use local_idp::JwksAnswer;
use reqwest::StatusCode;
use serde_json::{json, Value};
use shared::auth::signing::SigningKey;
use sqlx::PgPool;
use std::time::Duration;
use wallet_service::config::AuthConfig;

fn now() -> u64 {
    shared::auth::now_secs()
}

/// Valid claims for `idp`, with `change` applied.
fn claims(idp: &TestIdp, change: impl FnOnce(&mut Value)) -> Value {
    let t = now();
    let mut c = json!({
        "sub": "alice", "iat": t, "exp": t + 600,
        "iss": idp.provider.settings().issuer, "aud": AUDIENCE,
    });
    change(&mut c);
    c
}

/// The service trusting `idp`, with `tune` applied to its sign-in settings.
async fn service(
    pool: PgPool,
    idp_auth: AuthConfig,
    tune: impl FnOnce(&mut AuthConfig),
) -> TestApp {
    let mut cfg = serve_config(&Opts::default());
    cfg.auth = idp_auth;
    tune(&mut cfg.auth);
    spawn_with(pool, cfg).await
}

/// Status and body of a read of an unknown wallet: 404 means the token was accepted.
async fn read(app: &TestApp, token: &str) -> (StatusCode, Value, Option<String>) {
    let r = app
        .get(&format!("/v1/wallets/{}", uuid::Uuid::new_v4()), token)
        .await;
    let status = r.status();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, r.json().await.unwrap_or(Value::Null), challenge)
}

/// Polls `read` with `token` until it answers `want`, for at most 30 s.
async fn until_status(app: &TestApp, token: &str, want: StatusCode) {
    eventually(
        &format!("{want} for the token"),
        Duration::from_secs(30),
        || async { (read(app, token).await.0 == want).then_some(()) },
    )
    .await
}

async fn readyz(app: &TestApp) -> (StatusCode, Value) {
    let r = app
        .http
        .get(format!("{}/readyz", app.url))
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap())
}

/// Polls `/readyz` until it answers `want` (its answer is cached for a second).
async fn until_ready(app: &TestApp, want: StatusCode) {
    eventually(
        &format!("/readyz {want}"),
        Duration::from_secs(30),
        || async { (readyz(app).await.0 == want).then_some(()) },
    )
    .await
}

async fn own_idp() -> TestIdp {
    spawn_idp(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn every_bad_token_gets_the_same_401(pool: PgPool) {
    let idp = own_idp().await;
    // RS256 as well as ES256: the provider also publishes an RSA key.
    let rsa = SigningKey::test_rsa("rsa-1");
    idp.provider.publish(rsa.clone());
    let app = service(pool, idp.auth_config(), |_| {}).await;

    assert_eq!(
        read(&app, &idp.token("alice", false)).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        read(&app, &rsa.sign(&claims(&idp, |_| {}))).await.0,
        StatusCode::NOT_FOUND
    );

    let t = now();
    let sign = |change: fn(&mut Value, u64)| idp.provider.sign(&claims(&idp, |c| change(c, t)));
    let kid = idp.provider.current_kid();
    // Another key, same kid: the signature does not match the published key.
    let impostor = SigningKey::generate_es256(&kid).sign(&claims(&idp, |_| {}));
    // A kid the provider never published.
    let stranger = SigningKey::generate_es256("never-published").sign(&claims(&idp, |_| {}));
    // HS256, "signed" with the RSA public key (its JWK as text) as the HMAC secret.
    let confused = {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        let secret = rsa.public_jwk().to_string();
        jsonwebtoken::encode(
            &header,
            &claims(&idp, |_| {}),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let none = {
        use base64::Engine;
        let b64 =
            |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT", "kid": kid})),
            b64(&claims(&idp, |_| {}))
        )
    };
    let refused = [
        (
            "expired",
            sign(|c, t| {
                c["iat"] = json!(t - 7200);
                c["exp"] = json!(t - 3600);
            }),
        ),
        ("not yet valid", sign(|c, t| c["nbf"] = json!(t + 300))),
        (
            "wrong issuer",
            sign(|c, _| c["iss"] = json!("https://evil.test/")),
        ),
        (
            "wrong audience",
            sign(|c, _| c["aud"] = json!("another-api")),
        ),
        (
            "no audience",
            sign(|c, _| {
                c.as_object_mut().unwrap().remove("aud");
            }),
        ),
        ("another key with the same kid", impostor),
        ("unknown kid", stranger),
        ("alg none", none),
        ("HS256 with the public key as secret", confused),
        (
            "an HS256 token of the development mode",
            shared::auth::mint(SECRET, "alice", true, 600),
        ),
        ("garbage", "not.a.jwt".into()),
    ];
    let mut first: Option<Value> = None;
    for (case, token) in refused {
        let (status, body, challenge) = read(&app, &token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{case}: {body}");
        assert_eq!(
            challenge.as_deref(),
            Some(r#"Bearer error="invalid_token""#),
            "{case}"
        );
        assert_eq!(body["code"], "unauthorized", "{case}");
        match &first {
            None => first = Some(body),
            Some(f) => assert_eq!(&body, f, "{case}: the answer tells which check failed"),
        }
    }
    // No token at all: the same challenge.
    let r = app
        .get_anonymous(&format!("/v1/wallets/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers()["www-authenticate"],
        r#"Bearer error="invalid_token""#
    );
    app.stop().await;
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn rotation_works_without_a_restart_and_a_retired_key_is_refused(pool: PgPool) {
    let idp = own_idp().await;
    // No gap between refetches: each unknown kid looks again at once.
    let app = service(pool, idp.auth_config(), |a| a.jwks_min_refresh_secs = 0).await;
    let old = idp.token("alice", false);
    assert_eq!(read(&app, &old).await.0, StatusCode::NOT_FOUND);

    // A new key: its tokens are accepted at the first request (the service refetches), and
    // the old key stays published, so tokens signed just before still work.
    idp.provider.rotate().unwrap();
    let second = idp.token("alice", false);
    assert_eq!(read(&app, &second).await.0, StatusCode::NOT_FOUND);
    assert_eq!(read(&app, &old).await.0, StatusCode::NOT_FOUND);

    // One more rotation retires the first key: once the service has seen the new set, a
    // token of the retired key is refused, whatever its claims.
    idp.provider.rotate().unwrap();
    let third = idp.token("alice", false);
    assert_eq!(read(&app, &third).await.0, StatusCode::NOT_FOUND);
    assert_eq!(read(&app, &old).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(read(&app, &second).await.0, StatusCode::NOT_FOUND);
    app.stop().await;
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn a_rotation_is_picked_up_at_once_and_made_up_kids_fetch_nothing_more(pool: PgPool) {
    let idp = own_idp().await;
    // A long gap: at most one fetch an hour on behalf of unknown kids.
    let app = service(pool, idp.auth_config(), |a| a.jwks_min_refresh_secs = 3600).await;
    let at_start = idp.provider.jwks_requests();
    // The fetch at start does not count against the gap: a key rotated in just after it is
    // fetched at its first token.
    idp.provider.rotate().unwrap();
    assert_eq!(
        read(&app, &idp.token("alice", false)).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(idp.provider.jwks_requests(), at_start + 1);

    // Then 200 tokens with made-up kids, all at once: refused, and not one more fetch.
    let before = idp.provider.jwks_requests();
    let forged: Vec<String> = (0..200)
        .map(|i| SigningKey::generate_es256(&format!("made-up-{i}")).sign(&claims(&idp, |_| {})))
        .collect();
    let answers = futures_util::future::join_all(forged.iter().map(|t| read(&app, t))).await;
    assert!(answers
        .iter()
        .all(|(s, _, _)| *s == StatusCode::UNAUTHORIZED));
    let fetches = idp.provider.jwks_requests() - before;
    assert_eq!(fetches, 0, "{fetches} JWKS fetches for 200 unknown kids");
    // Valid tokens are still served from the cache.
    assert_eq!(
        read(&app, &idp.token("alice", false)).await.0,
        StatusCode::NOT_FOUND
    );
    app.stop().await;
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn a_provider_down_at_start_makes_the_service_unready_until_it_comes_up(pool: PgPool) {
    // A port with nobody listening yet.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let jwks_url = format!("http://{addr}/.well-known/jwks.json");
    let auth = AuthConfig::with_jwks(&jwks_url, &format!("http://{addr}/"), AUDIENCE);
    let app = service(pool, auth, |_| {}).await;

    // Nothing can be verified: 503 with a clear problem, not 401, and not ready.
    let some_token = idp().token("alice", false);
    let r = app
        .get(
            &format!("/v1/wallets/{}", uuid::Uuid::new_v4()),
            &some_token,
        )
        .await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "service_unavailable");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("identity provider"),
        "{body}"
    );
    // Even without a token: nothing can be verified yet.
    let r = app
        .get_anonymous(&format!("/v1/wallets/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let (status, ready) = readyz(&app).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert!(ready.to_string().contains("signin"), "{ready}");

    // The provider comes up on that address: the service picks its keys up by itself.
    let idp = spawn_idp(tokio::net::TcpListener::bind(addr).await.unwrap());
    until_status(&app, &idp.token("alice", false), StatusCode::NOT_FOUND).await;
    until_ready(&app, StatusCode::OK).await;
    app.stop().await;
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn a_provider_answering_garbage_is_not_trusted_and_old_keys_stay(pool: PgPool) {
    let idp = own_idp().await;
    idp.provider.set_jwks_answer(JwksAnswer::Garbage);
    let app = service(pool, idp.auth_config(), |a| a.jwks_min_refresh_secs = 0).await;
    let token = idp.token("alice", false);
    assert_eq!(read(&app, &token).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(readyz(&app).await.0, StatusCode::SERVICE_UNAVAILABLE);

    idp.provider.set_jwks_answer(JwksAnswer::Keys);
    until_status(&app, &token, StatusCode::NOT_FOUND).await;
    until_ready(&app, StatusCode::OK).await;

    // Broken again (garbage, then an error status): refetches fail, the keys fetched before
    // keep serving, and a token of a key the service never saw is refused.
    for answer in [JwksAnswer::Garbage, JwksAnswer::Unavailable] {
        idp.provider.set_jwks_answer(answer);
        let unseen =
            SigningKey::generate_es256(&format!("unseen-{answer:?}")).sign(&claims(&idp, |_| {}));
        let before = idp.provider.jwks_requests();
        assert_eq!(read(&app, &unseen).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(
            idp.provider.jwks_requests(),
            before + 1,
            "the unknown kid made it look"
        );
        assert_eq!(read(&app, &token).await.0, StatusCode::NOT_FOUND);
        // Ready all along: the keys are there, only their refresh failed.
        assert_eq!(readyz(&app).await.0, StatusCode::OK);
    }
    app.stop().await;
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn admin_rights_come_from_the_configured_scope_or_permission(pool: PgPool) {
    // The shared provider: `create_wallet` signs in with it.
    let idp = idp();
    let app = service(pool, idp.auth_config(), |a| {
        a.admin_scope = "wallet:admin".into()
    })
    .await;
    let wallet = app.create_wallet("bob", "EUR").await;
    let read_bob = |token: String| {
        let app = &app;
        let path = format!("/v1/wallets/{wallet}");
        async move { app.get(&path, &token).await.status() }
    };
    let as_ops = |extra: Value| {
        idp.provider.sign(&claims(idp, |c| {
            c["sub"] = json!("ops");
            c.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
        }))
    };
    assert_eq!(
        read_bob(as_ops(json!({"scope": "openid wallet:admin"}))).await,
        StatusCode::OK
    );
    assert_eq!(
        read_bob(as_ops(
            json!({"permissions": ["read:stats", "wallet:admin"]})
        ))
        .await,
        StatusCode::OK
    );
    // The default name grants nothing once another is configured.
    assert_eq!(
        read_bob(as_ops(json!({"scope": "admin"}))).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(read_bob(as_ops(json!({}))).await, StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test]
async fn sign_in_settings_that_cannot_work_stop_the_service_before_it_starts() {
    let jwks = "http://127.0.0.1:1/.well-known/jwks.json";
    let mut both = AuthConfig::with_jwks(jwks, "http://127.0.0.1:1/", AUDIENCE);
    both.jwt_secret = Some(SECRET.parse().unwrap());
    let mut no_audience = AuthConfig::with_jwks(jwks, "http://127.0.0.1:1/", AUDIENCE);
    no_audience.audience = Some(String::new());
    let mut neither = AuthConfig::with_secret("");
    neither.jwt_secret = None;
    // Keys over plain http from another host: anyone on the way could hand in their own.
    let remote_http = AuthConfig::with_jwks(
        "http://idp.example.com/.well-known/jwks.json",
        "http://idp.example.com/",
        AUDIENCE,
    );
    for (auth, says) in [
        (both, "never both"),
        (no_audience, "AUTH_AUDIENCE"),
        (neither, "no sign-in configured"),
        (remote_http, "must be https"),
    ] {
        let mut cfg = serve_config(&Opts::default());
        cfg.auth = auth;
        // Never connected: sign-in is checked before the database is touched.
        let err = start_refused(cfg).await;
        assert!(err.to_string().contains(says), "{err}");
    }
}
