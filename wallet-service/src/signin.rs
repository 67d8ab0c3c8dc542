//! Sign-in: the one verifier a service runs, chosen by [`crate::config::AuthConfig::mode`],
//! an identity provider's JWKS or (for development) a shared secret; never both.

use crate::config::{AuthConfig, AuthMode};
use shared::auth::{AuthError, JwksVerifier, Principal, SecretVerifier};
use std::sync::Arc;

#[derive(Clone)]
pub enum Verifier {
    /// RS256/ES256 with the provider's cached keys.
    Jwks(Arc<JwksVerifier>),
    /// HS256 with `AUTH_JWT_SECRET`.
    Secret(Arc<SecretVerifier>),
}

impl Verifier {
    /// Refuses settings that name no mode or both, a weak secret, and a JWKS without issuer
    /// and audience: the service does not start with them.
    pub fn from_config(cfg: &AuthConfig) -> anyhow::Result<Self> {
        Ok(match cfg.mode()? {
            AuthMode::Jwks(settings) => {
                tracing::info!(
                    url = %settings.url,
                    issuer = ?cfg.issuer,
                    audience = ?cfg.audience,
                    "sign-in: tokens are checked against the identity provider's keys (JWKS)",
                );
                Self::Jwks(JwksVerifier::new(settings, cfg.policy())?)
            }
            AuthMode::Secret(secret) => {
                tracing::info!(
                    "sign-in: HS256 tokens signed with AUTH_JWT_SECRET (development mode)"
                );
                Self::Secret(Arc::new(SecretVerifier::new(
                    secret.expose(),
                    &cfg.policy(),
                )?))
            }
        })
    }

    /// Parses and checks an `Authorization` header value. With a JWKS this waits for the
    /// network only when the token names a key not seen yet, at most once per refresh gap.
    pub async fn verify_header(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        match self {
            Self::Jwks(v) => v.verify_header(header).await,
            Self::Secret(v) => v.verify_header(header),
        }
    }

    /// The JWKS verifier, whose keys must be fetched before the service is ready.
    pub fn jwks(&self) -> Option<&Arc<JwksVerifier>> {
        match self {
            Self::Jwks(v) => Some(v),
            Self::Secret(_) => None,
        }
    }
}
