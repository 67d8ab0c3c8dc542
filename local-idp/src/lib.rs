//! A local identity provider, standing in for Auth0 and the like in development and tests:
//! it publishes its public keys as a JWKS, mints ES256 tokens on request, and rotates its key
//! on command. The wallet service verifies its tokens exactly as it would a real provider's.
//!
//! - `GET /.well-known/jwks.json`: the current key and the one before it (tokens signed just
//!   before a rotation stay valid until they expire);
//! - `GET /.well-known/openid-configuration`: the issuer and where the keys are;
//! - `POST /token` `{"sub": "alice", "admin": false, "ttl_secs": 3600}`: a signed token;
//! - `POST /rotate`: a new signing key; the oldest one leaves the JWKS.
//!
//! Anyone who reaches it can mint an admin token: it listens on loopback, for development.
//! Keys are kept in a file (`IDP_KEYS_FILE`), so tokens survive a restart.

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use shared::auth::signing::SigningKey;
use shared::auth::{now_secs, MintedClaims, DEFAULT_ADMIN_SCOPE};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How the provider is set up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `iss` of every token.
    pub issuer: String,
    /// The `aud` of every token.
    pub audience: String,
    /// The longest `ttl_secs` a token may ask for.
    pub max_ttl_secs: u64,
    /// Where the private keys are kept; `None` keeps them in memory only (tests).
    pub keys_file: Option<PathBuf>,
}

/// What `GET /.well-known/jwks.json` answers: the keys, or (to test the services' handling
/// of a provider in trouble) an error or garbage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwksAnswer {
    Keys,
    Unavailable,
    Garbage,
}

/// The provider's state: its keys, newest first.
pub struct Provider {
    settings: Settings,
    keys: Mutex<Vec<SigningKey>>,
    /// Keys published but never used to sign (tests add RS256 keys this way).
    extra: Mutex<Vec<SigningKey>>,
    answer: Mutex<JwksAnswer>,
    jwks_requests: AtomicU64,
}

/// How many keys the JWKS publishes: the signing one and the one before it.
const PUBLISHED_KEYS: usize = 2;

#[derive(Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    /// PKCS#8 DER, base64.
    pkcs8: String,
}

#[derive(Debug, Deserialize)]
pub struct TokenRequest {
    pub sub: String,
    #[serde(default)]
    pub admin: bool,
    pub ttl_secs: Option<u64>,
}

/// Why a token was not minted.
#[derive(Debug, PartialEq, Eq)]
pub enum MintRefusal {
    BadSubject,
    BadTtl { max: u64 },
}

fn new_kid() -> String {
    format!("es256-{}", &uuid::Uuid::now_v7().simple().to_string()[20..])
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Provider {
    /// Loads the keys from `keys_file`, or makes one (and saves it) when there are none.
    pub fn new(settings: Settings) -> anyhow::Result<Arc<Self>> {
        let mut keys = match &settings.keys_file {
            Some(path) if path.exists() => load(path)?,
            _ => Vec::new(),
        };
        let fresh = keys.is_empty();
        if fresh {
            keys.push(SigningKey::generate_es256(&new_kid()));
        }
        let provider = Arc::new(Self {
            settings,
            keys: Mutex::new(keys),
            extra: Mutex::new(Vec::new()),
            answer: Mutex::new(JwksAnswer::Keys),
            jwks_requests: AtomicU64::new(0),
        });
        if fresh {
            provider.save()?;
        }
        Ok(provider)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The `kid` tokens are signed with now.
    pub fn current_kid(&self) -> String {
        lock(&self.keys)[0].kid().to_owned()
    }

    /// A token for `sub`.
    pub fn mint(&self, req: &TokenRequest) -> Result<String, MintRefusal> {
        if req.sub.is_empty() || req.sub.len() > 255 || req.sub.chars().any(char::is_control) {
            return Err(MintRefusal::BadSubject);
        }
        let max = self.settings.max_ttl_secs;
        let ttl = req.ttl_secs.unwrap_or(3600);
        if ttl == 0 || ttl > max {
            return Err(MintRefusal::BadTtl { max });
        }
        let now = now_secs();
        Ok(self.sign(&MintedClaims {
            sub: &req.sub,
            iat: now,
            exp: now + ttl,
            scope: req.admin.then_some(DEFAULT_ADMIN_SCOPE),
            iss: Some(&self.settings.issuer),
            aud: Some(&self.settings.audience),
        }))
    }

    /// Signs any claims with the current key (tests forge tokens this way).
    pub fn sign<C: Serialize>(&self, claims: &C) -> String {
        lock(&self.keys)[0].sign(claims)
    }

    /// A new signing key; the JWKS keeps the previous one and drops the one before.
    pub fn rotate(&self) -> anyhow::Result<String> {
        let kid = new_kid();
        {
            let mut keys = lock(&self.keys);
            keys.insert(0, SigningKey::generate_es256(&kid));
            keys.truncate(PUBLISHED_KEYS);
        }
        self.save()?;
        tracing::info!(kid = %kid, "rotated the signing key");
        Ok(kid)
    }

    /// Publishes a key that never signs here (tests: an RS256 key they sign with).
    pub fn publish(&self, key: SigningKey) {
        lock(&self.extra).push(key);
    }

    pub fn set_jwks_answer(&self, answer: JwksAnswer) {
        *lock(&self.answer) = answer;
    }

    /// How many times the JWKS was asked for.
    pub fn jwks_requests(&self) -> u64 {
        self.jwks_requests.load(Ordering::Relaxed)
    }

    /// The public keys, as a JWKS document.
    pub fn jwks(&self) -> Value {
        let keys = lock(&self.keys);
        let extra = lock(&self.extra);
        let published: Vec<Value> = keys
            .iter()
            .chain(extra.iter())
            .map(SigningKey::public_jwk)
            .collect();
        json!({ "keys": published })
    }

    fn save(&self) -> anyhow::Result<()> {
        let Some(path) = &self.settings.keys_file else {
            return Ok(());
        };
        let stored: Vec<StoredKey> = lock(&self.keys)
            .iter()
            .map(|k| StoredKey {
                kid: k.kid().to_owned(),
                pkcs8: STANDARD.encode(k.private_der()),
            })
            .collect();
        let tmp = path.with_extension("tmp");
        write_private(&tmp, &serde_json::to_vec_pretty(&stored)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

#[cfg(unix)]
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

fn load(path: &std::path::Path) -> anyhow::Result<Vec<SigningKey>> {
    let text =
        std::fs::read(path).with_context(|| format!("reading the keys in {}", path.display()))?;
    let stored: Vec<StoredKey> = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a keys file of local-idp", path.display()))?;
    stored
        .iter()
        .map(|k| {
            let der = STANDARD.decode(&k.pkcs8)?;
            Ok(SigningKey::es256_from_pkcs8(&k.kid, &der)?)
        })
        .collect::<anyhow::Result<_>>()
        .with_context(|| format!("a key in {} is damaged", path.display()))
}

/// The HTTP interface.
pub fn router(provider: Arc<Provider>) -> Router {
    Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/token", post(token))
        .route("/rotate", post(rotate))
        .route("/healthz", get(shared::telemetry::healthz))
        .with_state(provider)
}

async fn jwks(State(p): State<Arc<Provider>>) -> Response {
    p.jwks_requests.fetch_add(1, Ordering::Relaxed);
    let answer = *lock(&p.answer);
    match answer {
        JwksAnswer::Keys => Json(p.jwks()).into_response(),
        JwksAnswer::Unavailable => {
            (StatusCode::SERVICE_UNAVAILABLE, "down for a test").into_response()
        }
        JwksAnswer::Garbage => (StatusCode::OK, "<html>not a key set</html>").into_response(),
    }
}

async fn discovery(State(p): State<Arc<Provider>>) -> Json<Value> {
    let base = p.settings.issuer.trim_end_matches('/');
    Json(json!({
        "issuer": p.settings.issuer,
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "token_endpoint": format!("{base}/token"),
        "id_token_signing_alg_values_supported": ["ES256"],
    }))
}

async fn token(State(p): State<Arc<Provider>>, body: Json<TokenRequest>) -> Response {
    match p.mint(&body) {
        Ok(token) => Json(json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": body.ttl_secs.unwrap_or(3600),
        }))
        .into_response(),
        Err(MintRefusal::BadSubject) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "sub must be 1 to 255 bytes without control characters",
        )
            .into_response(),
        Err(MintRefusal::BadTtl { max }) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("ttl_secs must be between 1 and {max}"),
        )
            .into_response(),
    }
}

async fn rotate(State(p): State<Arc<Provider>>) -> Response {
    match p.rotate() {
        Ok(kid) => Json(json!({ "kid": kid })).into_response(),
        Err(e) => {
            tracing::error!(error = ?e, "rotation failed");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(keys_file: Option<PathBuf>) -> Settings {
        Settings {
            issuer: "http://127.0.0.1:1/".into(),
            audience: "wallet-api".into(),
            max_ttl_secs: 3600,
            keys_file,
        }
    }

    #[test]
    fn keys_survive_a_restart_and_rotation_keeps_two() {
        let dir = std::env::temp_dir().join(format!("local-idp-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keys.json");
        let first = Provider::new(settings(Some(file.clone()))).unwrap();
        let kid = first.current_kid();
        let again = Provider::new(settings(Some(file.clone()))).unwrap();
        assert_eq!(again.current_kid(), kid);
        let k2 = again.rotate().unwrap();
        let k3 = again.rotate().unwrap();
        let published: Vec<String> = again.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(published, vec![k3.clone(), k2]);
        assert_eq!(
            Provider::new(settings(Some(file))).unwrap().current_kid(),
            k3
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("keys.json"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "the keys file is private");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn mint_checks_its_request() {
        let p = Provider::new(settings(None)).unwrap();
        let req = |sub: &str, ttl| TokenRequest {
            sub: sub.into(),
            admin: false,
            ttl_secs: ttl,
        };
        assert!(p.mint(&req("alice", None)).is_ok());
        assert_eq!(p.mint(&req("", None)), Err(MintRefusal::BadSubject));
        assert_eq!(p.mint(&req("a\nb", None)), Err(MintRefusal::BadSubject));
        assert_eq!(
            p.mint(&req("alice", Some(0))),
            Err(MintRefusal::BadTtl { max: 3600 })
        );
        assert_eq!(
            p.mint(&req("alice", Some(3601))),
            Err(MintRefusal::BadTtl { max: 3600 })
        );
    }
}
