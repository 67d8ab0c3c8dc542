//! Bearer tokens: JWTs with `sub` (the principal), `exp` and `iat`, optional `nbf`, `iss`,
//! `aud`, and admin rights in `scope` or `permissions`.
//!
//! Two ways to check a signature, never both at once in one service:
//!
//! - [`jwks`]: RS256/ES256 with public keys from an identity provider's JWKS, chosen by the
//!   token's `kid` (production; [`JwksVerifier`] fetches and caches them, feature `jwks`);
//! - [`secret`]: HS256 with a secret shared with whoever mints tokens (development).
//!
//! Whatever the signature, the claims pass the same rules ([`TokenPolicy`]): a token is
//! refused when it is expired or not yet valid (`nbf`), when `iss` or `aud` do not match the
//! configured ones, when `iat` is missing or in the future, or when it lives longer
//! (`exp - iat`) than the policy allows. Every refusal looks the same to the client (401
//! `unauthorized`); the reason ([`Refusal`]) is for logs and tests only.
//!
//! [`signing`] (feature `signing`) holds the private keys of the project's local identity
//! provider, and [`TokenSource`] (feature `token-source`) is how the tools get tokens from
//! whichever of the two the stack runs.

#[cfg(feature = "jwks")]
mod cache;
pub mod jwks;
pub mod secret;
#[cfg(feature = "signing")]
pub mod signing;
#[cfg(feature = "token-source")]
mod source;

#[cfg(feature = "jwks")]
pub use cache::{JwksSettings, JwksVerifier};
pub use secret::{check_secret, mint, Mint, SecretVerifier, WeakSecret, MIN_SECRET_BYTES};
#[cfg(feature = "token-source")]
pub use source::{TokenRequestError, TokenSource};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
pub const LEEWAY_SECS: u64 = 5;
/// The default of `AUTH_MAX_TOKEN_LIFETIME_SECS`.
pub const DEFAULT_MAX_LIFETIME_SECS: u64 = 86_400;
/// The default of `AUTH_ADMIN_SCOPE`.
pub const DEFAULT_ADMIN_SCOPE: &str = "admin";

/// Who is calling. Wallets whose `owner_id` equals `sub` are theirs; `admin` reads all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub sub: String,
    pub admin: bool,
}

impl Principal {
    /// May this principal read a resource owned by `owner_id`?
    pub fn can_read(&self, owner_id: &str) -> bool {
        self.admin || self.sub == owner_id
    }
}

/// The claims read from a token. `iss`, `aud` and `nbf` are checked by `jsonwebtoken` from
/// the raw claims (`aud` may be an array).
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
    /// Space-separated scopes (OAuth 2.0, RFC 8693).
    #[serde(default)]
    scope: Option<String>,
    /// Auth0's RBAC permissions.
    #[serde(default)]
    permissions: Option<Vec<String>>,
}

/// The claims a minted token carries (the local identity provider and HS256 minting).
#[derive(Debug, Serialize)]
pub struct MintedClaims<'a> {
    pub sub: &'a str,
    pub iat: u64,
    pub exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<&'a str>,
}

/// What a token must satisfy besides its signature and expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPolicy {
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud` (one of the token's audiences), when set.
    pub audience: Option<String>,
    /// The longest `exp - iat` accepted, in seconds.
    pub max_lifetime_secs: u64,
    /// The scope or permission that grants admin rights.
    pub admin_scope: String,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        Self {
            issuer: None,
            audience: None,
            max_lifetime_secs: DEFAULT_MAX_LIFETIME_SECS,
            admin_scope: DEFAULT_ADMIN_SCOPE.to_owned(),
        }
    }
}

impl TokenPolicy {
    /// `jsonwebtoken`'s checks for a key of algorithm `alg`: only that algorithm, so a token
    /// cannot pick another one (no `none`, no HS256 signed with a public key).
    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        if let Some(aud) = &self.audience {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        // Without a configured audience, a token naming one is refused (RFC 7519 4.1.3).
        validation.set_required_spec_claims(&required);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        validation
    }

    /// Checks the signature with `key` and then every claim rule.
    fn decode(
        &self,
        token: &str,
        key: &DecodingKey,
        validation: &Validation,
    ) -> Result<Principal, Refusal> {
        self.decode_until(token, key, validation).map(|(p, _)| p)
    }

    /// [`TokenPolicy::decode`], with the token's `exp`.
    fn decode_until(
        &self,
        token: &str,
        key: &DecodingKey,
        validation: &Validation,
    ) -> Result<(Principal, u64), Refusal> {
        let claims = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|e| refusal_of(e.kind()))?
            .claims;
        let iat = claims.iat.ok_or(Refusal::MissingClaim("iat".into()))?;
        if iat > now_secs() + LEEWAY_SECS {
            return Err(Refusal::IssuedInFuture);
        }
        if claims
            .exp
            .checked_sub(iat)
            .is_none_or(|lifetime| lifetime > self.max_lifetime_secs)
        {
            return Err(Refusal::LifetimeTooLong);
        }
        if claims.sub.is_empty() || claims.sub.len() > 255 {
            return Err(Refusal::BadSubject);
        }
        let scope = &self.admin_scope;
        let admin = claims
            .scope
            .as_deref()
            .is_some_and(|s| s.split_whitespace().any(|s| s == scope))
            || claims
                .permissions
                .is_some_and(|p| p.iter().any(|p| p == scope));
        let principal = Principal {
            sub: claims.sub,
            admin,
        };
        Ok((principal, claims.exp))
    }
}

/// Why a token was refused. Never shown to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not `Bearer <token>`, not a JWT, or claims of the wrong type.
    Malformed,
    /// Wrong signature, or an algorithm other than the key's.
    BadSignature,
    /// No key of the JWKS has the token's `kid` (or the token names none).
    UnknownKey,
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    /// A required claim is absent (`sub`, `exp`, `iat`, and `iss`/`aud` when configured).
    MissingClaim(String),
    /// `iat` is in the future.
    IssuedInFuture,
    /// `exp - iat` exceeds the policy's maximum (or `exp` precedes `iat`).
    LifetimeTooLong,
    /// `sub` is empty or longer than 255 bytes.
    BadSubject,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token: {0:?}")]
    Invalid(Refusal),
    /// The identity provider's keys have never been fetched: nothing can be verified yet,
    /// and that is not the client's fault.
    #[error("the identity provider's signing keys are not loaded yet")]
    KeysUnavailable,
}

impl From<Refusal> for AuthError {
    fn from(r: Refusal) -> Self {
        Self::Invalid(r)
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(header: Option<&str>) -> Result<&str, AuthError> {
    let header = header.ok_or(AuthError::Missing)?;
    header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or(AuthError::Invalid(Refusal::Malformed))
}

fn refusal_of(kind: &ErrorKind) -> Refusal {
    match kind {
        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => Refusal::BadSignature,
        ErrorKind::ExpiredSignature => Refusal::Expired,
        ErrorKind::ImmatureSignature => Refusal::NotYetValid,
        ErrorKind::InvalidIssuer => Refusal::WrongIssuer,
        ErrorKind::InvalidAudience => Refusal::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) => Refusal::MissingClaim(c.clone()),
        _ => Refusal::Malformed,
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership() {
        let alice = Principal {
            sub: "alice".into(),
            admin: false,
        };
        assert!(alice.can_read("alice"));
        assert!(!alice.can_read("bob"));
        assert!(Principal {
            sub: "ops".into(),
            admin: true
        }
        .can_read("bob"));
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer(Some("Bearer abc ")).unwrap(), "abc");
        assert_eq!(bearer(Some("bearer abc")).unwrap(), "abc");
        assert!(matches!(bearer(None), Err(AuthError::Missing)));
        assert!(matches!(
            bearer(Some("Basic abc")),
            Err(AuthError::Invalid(Refusal::Malformed))
        ));
    }
}
