//! The identity provider's keys, fetched from `AUTH_JWKS_URL` and cached: verifying a token
//! never waits for the network, except once per [`JwksSettings::min_refresh_gap`] when a
//! token names a `kid` the cache lacks (the provider rotated its keys). A flood of tokens
//! with made-up `kid`s therefore costs the provider one request per gap, not one each.
//!
//! Until the first fetch succeeds nothing can be verified: [`JwksVerifier::verify`] answers
//! [`AuthError::KeysUnavailable`] (a 503, not a 401: the client did nothing wrong) and
//! [`JwksVerifier::is_ready`] is false. [`JwksVerifier::keep_fresh`] fetches at start, retries
//! until it succeeds, and then refetches every [`JwksSettings::refresh_every`]. A failed
//! refetch keeps the keys it had.
//!
//! Checking an ES256 signature costs about 85 us of CPU (RS256 35 us, HS256 2 us), and a
//! client sends the same access token with every request until it expires. Tokens that
//! passed are therefore remembered ([`Verified`]), by their SHA-256, until their `exp`: at
//! most [`VERIFIED_CAPACITY`] of them, and all forgotten whenever the key set changes, so a
//! key the provider retired stops working as soon as the service has seen the new set.

use super::jwks::{kid_of, JwksError, KeySet};
use super::{AuthError, Principal, Refusal, TokenPolicy};
use crate::backoff::Backoff;
use crate::shutdown::Shutdown;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The most verified tokens remembered (about 100 bytes each).
pub const VERIFIED_CAPACITY: usize = 10_000;

/// A JWKS document larger than this is refused unread.
const MAX_BODY_BYTES: usize = 256 * 1024;

/// Where the keys come from and how often they are fetched.
#[derive(Debug, Clone)]
pub struct JwksSettings {
    /// The provider's JWKS, e.g. `https://tenant.auth0.com/.well-known/jwks.json`.
    pub url: String,
    /// Refetch this often even when nothing asks for it (providers publish a new key before
    /// they sign with it).
    pub refresh_every: Duration,
    /// At most one fetch per this interval on behalf of unknown `kid`s.
    pub min_refresh_gap: Duration,
    /// A fetch that takes longer has failed.
    pub fetch_timeout: Duration,
    /// Accept a plain-http URL for a host other than loopback (development networks only).
    pub allow_http: bool,
}

/// Verifies RS256/ES256 tokens with the provider's cached keys.
pub struct JwksVerifier {
    settings: JwksSettings,
    policy: TokenPolicy,
    http: reqwest::Client,
    keys: RwLock<Option<Arc<KeySet>>>,
    verified: Mutex<Verified>,
    /// When the last fetch for an unknown `kid` started; held during every fetch, so
    /// concurrent callers wait for the one fetch instead of starting their own. Scheduled
    /// fetches do not count: a rotation right after one is still picked up at once.
    last_on_demand: tokio::sync::Mutex<Option<Instant>>,
}

/// Why a fetch gave no keys (logged; the old keys stay).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot fetch the JWKS: {0}")]
    Http(#[from] reqwest::Error),
    #[error("the JWKS answered HTTP {0}")]
    Status(u16),
    #[error("the JWKS is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error(transparent)]
    Document(#[from] JwksError),
}

/// `AUTH_JWKS_URL` cannot be trusted to deliver keys.
#[derive(Debug, thiserror::Error)]
pub enum UnsafeJwksUrl {
    #[error("AUTH_JWKS_URL is not a URL: {0}")]
    NotUrl(String),
    #[error(
        "AUTH_JWKS_URL must be https (anyone on the way could hand the service keys that sign \
         admin tokens); plain http is accepted for loopback, or anywhere with \
         AUTH_JWKS_ALLOW_HTTP=true (a private development network)"
    )]
    NotHttps,
    #[error("cannot build the HTTP client for AUTH_JWKS_URL: {0}")]
    Client(#[from] reqwest::Error),
}

impl JwksVerifier {
    /// Refuses a URL that is not https, unless it is loopback or `allow_http` is set.
    pub fn new(settings: JwksSettings, policy: TokenPolicy) -> Result<Arc<Self>, UnsafeJwksUrl> {
        let url =
            reqwest::Url::parse(&settings.url).map_err(|e| UnsafeJwksUrl::NotUrl(e.to_string()))?;
        let host = url.host_str().unwrap_or_default();
        let loopback = host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        match url.scheme() {
            "https" => {}
            "http" if loopback || settings.allow_http => {}
            _ => return Err(UnsafeJwksUrl::NotHttps),
        }
        // No redirects: one could lead from https to anywhere.
        let http = reqwest::Client::builder()
            .timeout(settings.fetch_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Arc::new(Self {
            settings,
            policy,
            http,
            keys: RwLock::new(None),
            verified: Mutex::new(Verified::default()),
            last_on_demand: tokio::sync::Mutex::new(None),
        }))
    }

    /// Have the keys been fetched at least once?
    pub fn is_ready(&self) -> bool {
        self.current().is_some()
    }

    pub fn url(&self) -> &str {
        &self.settings.url
    }

    fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.read().expect("key cache lock").clone()
    }

    /// Parses an `Authorization` header value. Until the keys are loaded, every request is
    /// answered [`AuthError::KeysUnavailable`], whatever its header.
    pub async fn verify_header(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        if !self.is_ready() {
            return Err(AuthError::KeysUnavailable);
        }
        self.verify(super::bearer(header)?).await
    }

    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let keys = self.current().ok_or(AuthError::KeysUnavailable)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(principal) = self.lock_verified().get(&digest, super::now_secs()) {
            return Ok(principal);
        }
        let kid = kid_of(token)?;
        let keys = if keys.contains(&kid) {
            keys
        } else {
            // Perhaps the provider rotated: look again, at most once per gap.
            self.refresh_unless_recent().await;
            match self.current() {
                Some(keys) if keys.contains(&kid) => keys,
                _ => return Err(Refusal::UnknownKey.into()),
            }
        };
        let (principal, exp) = keys.verify_until(token, &self.policy)?;
        // Remembered only if these keys are still the current ones, checked under the lock
        // that a swap takes to forget: a token checked with keys replaced meanwhile is not
        // remembered past the swap.
        let mut verified = self.lock_verified();
        if self.current().is_some_and(|now| Arc::ptr_eq(&now, &keys)) {
            verified.insert(digest, principal.clone(), exp, super::now_secs());
        }
        Ok(principal)
    }

    fn lock_verified(&self) -> std::sync::MutexGuard<'_, Verified> {
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fetches now, unless a fetch for an unknown `kid` started less than `min_refresh_gap`
    /// ago.
    async fn refresh_unless_recent(&self) {
        let mut last = self.last_on_demand.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.settings.min_refresh_gap) {
            return;
        }
        *last = Some(Instant::now());
        let _ = self.fetch_and_swap("a token names an unknown key").await;
    }

    /// Fetches now, whenever the last fetch was.
    async fn refresh(&self, why: &str) -> Result<usize, FetchError> {
        let _one_at_a_time = self.last_on_demand.lock().await;
        self.fetch_and_swap(why).await
    }

    async fn fetch_and_swap(&self, why: &str) -> Result<usize, FetchError> {
        match self.fetch().await {
            Ok(set) => {
                let count = set.len();
                let changed = self.current().is_none_or(|old| !old.same_keys(&set));
                *self.keys.write().expect("key cache lock") = Some(Arc::new(set));
                if changed {
                    // A token verified with a key that is gone or changed must be checked
                    // again.
                    self.lock_verified().clear();
                }
                metrics::counter!("auth_jwks_fetches_total", "result" => "ok").increment(1);
                if changed {
                    tracing::info!(
                        url = %self.settings.url,
                        keys = count,
                        reason = why,
                        "loaded the identity provider's signing keys",
                    );
                }
                Ok(count)
            }
            Err(e) => {
                metrics::counter!("auth_jwks_fetches_total", "result" => "error").increment(1);
                let kept = if self.is_ready() {
                    "keeping the keys fetched before"
                } else {
                    "no token can be verified until it succeeds"
                };
                tracing::warn!(
                    url = %self.settings.url,
                    error = %e,
                    reason = why,
                    "could not fetch the identity provider's signing keys; {kept}",
                );
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, FetchError> {
        let mut response = self.http.get(&self.settings.url).send().await?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(KeySet::parse(&body, &self.policy)?)
    }

    /// Fetches the keys now, whenever the last fetch was (at start, before serving: a
    /// service whose provider answers comes up ready).
    pub async fn refresh_now(&self, why: &str) -> Result<usize, FetchError> {
        self.refresh(why).await
    }

    /// Refetches every `refresh_every`; until the first fetch succeeds (and after a failed
    /// one), retries with backoff up to 5 s (once keys are loaded, up to the refresh gap).
    /// Returns at shutdown.
    pub async fn keep_fresh(self: Arc<Self>, mut shutdown: Shutdown) {
        let retry = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut failures = u32::from(!self.is_ready());
        loop {
            let wait = if failures == 0 {
                self.settings.refresh_every
            } else {
                // Before the first success every request waits on this; after it, the old
                // keys serve and a refetch can wait longer.
                let ceiling = if self.is_ready() {
                    self.settings.min_refresh_gap.max(Duration::from_secs(5))
                } else {
                    Duration::from_secs(5)
                };
                retry.delay(failures - 1).min(ceiling)
            };
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            match self.refresh("scheduled refresh").await {
                Ok(_) => failures = 0,
                Err(_) => failures = failures.saturating_add(1),
            }
        }
    }
}

/// Tokens that passed verification, by SHA-256, each until its `exp`.
#[derive(Default)]
struct Verified {
    entries: HashMap<[u8; 32], (Principal, u64)>,
}

impl Verified {
    fn get(&mut self, digest: &[u8; 32], now: u64) -> Option<Principal> {
        match self.entries.get(digest) {
            Some((p, exp)) if *exp > now => Some(p.clone()),
            Some(_) => {
                self.entries.remove(digest);
                None
            }
            None => None,
        }
    }

    /// Remembers a token; when full, forgets the expired ones, and everything if that did
    /// not free a quarter (so the scan runs at most once per quarter of inserts).
    fn insert(&mut self, digest: [u8; 32], principal: Principal, exp: u64, now: u64) {
        if self.entries.len() >= VERIFIED_CAPACITY {
            self.entries.retain(|_, (_, e)| *e > now);
            if self.entries.len() > VERIFIED_CAPACITY * 3 / 4 {
                self.entries.clear();
            }
        }
        self.entries.insert(digest, (principal, exp));
    }

    fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Principal {
        Principal {
            sub: "alice".into(),
            admin: false,
        }
    }

    #[test]
    fn a_verified_token_is_remembered_until_it_expires() {
        let mut v = Verified::default();
        v.insert([1; 32], alice(), 100, 10);
        assert_eq!(v.get(&[1; 32], 99), Some(alice()));
        assert_eq!(v.get(&[2; 32], 99), None);
        // At `exp` it is gone, and forgotten.
        assert_eq!(v.get(&[1; 32], 100), None);
        assert!(v.entries.is_empty());
    }

    #[test]
    fn the_memory_is_bounded() {
        let mut v = Verified::default();
        let digest = |i: usize| {
            let mut d = [0u8; 32];
            d[..8].copy_from_slice(&(i as u64).to_le_bytes());
            d
        };
        // Full of live tokens, half of them expiring at 50.
        for i in 0..VERIFIED_CAPACITY {
            v.insert(digest(i), alice(), if i % 2 == 0 { 50 } else { 500 }, 10);
        }
        assert_eq!(v.entries.len(), VERIFIED_CAPACITY);
        // One more after 50: the expired half goes.
        v.insert(digest(VERIFIED_CAPACITY), alice(), 500, 60);
        assert_eq!(v.entries.len(), VERIFIED_CAPACITY / 2 + 1);
        // Full of tokens none of which has expired: everything goes.
        for i in 0..VERIFIED_CAPACITY {
            v.insert(digest(VERIFIED_CAPACITY + 1 + i), alice(), 500, 60);
        }
        assert!(v.entries.len() <= VERIFIED_CAPACITY);
        for i in 0..3 * VERIFIED_CAPACITY {
            v.insert(digest(10 * VERIFIED_CAPACITY + i), alice(), 500, 60);
            assert!(v.entries.len() <= VERIFIED_CAPACITY);
        }
    }
}
