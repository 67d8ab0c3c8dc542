//! Bearer tokens: HS256 JWTs with `sub` (the principal) and `exp`, optional `scope`.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

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

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Verifies tokens with one secret; only HS256 is accepted (no `none`, no key confusion).
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        Self {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// Parses an `Authorization` header value.
    pub fn verify_header(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| AuthError::Invalid("expected `Bearer <token>`".into()))?;
        self.verify(token.trim())
    }

    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let claims = data.claims;
        if claims.sub.is_empty() || claims.sub.len() > 255 {
            return Err(AuthError::Invalid("sub must be 1..=255 characters".into()));
        }
        let admin = claims
            .scope
            .as_deref()
            .is_some_and(|s| s.split_whitespace().any(|s| s == "admin"));
        Ok(Principal {
            sub: claims.sub,
            admin,
        })
    }
}

/// Mints a token (the `token` subcommand and tests).
pub fn mint(secret: &str, sub: &str, admin: bool, ttl_secs: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let claims = Claims {
        sub: sub.to_owned(),
        exp: now + ttl_secs,
        scope: admin.then(|| "admin".to_owned()),
        iat: Some(now),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 encoding cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-test-secret-of-sufficient-length";

    #[test]
    fn minted_tokens_verify_with_scope() {
        let v = Verifier::new(SECRET);
        let p = v.verify(&mint(SECRET, "alice", false, 60)).unwrap();
        assert_eq!(
            p,
            Principal {
                sub: "alice".into(),
                admin: false
            }
        );
        assert!(v.verify(&mint(SECRET, "ops", true, 60)).unwrap().admin);
    }

    #[test]
    fn bad_tokens_are_refused() {
        let v = Verifier::new(SECRET);
        assert!(matches!(v.verify_header(None), Err(AuthError::Missing)));
        assert!(v.verify_header(Some("Basic abc")).is_err());
        assert!(v
            .verify(&mint("another-secret-of-good-length", "alice", false, 60))
            .is_err());
        // Expired well past the leeway.
        let expired = {
            let claims = Claims {
                sub: "alice".into(),
                exp: 1_000,
                scope: None,
                iat: None,
            };
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .unwrap()
        };
        assert!(v.verify(&expired).is_err());
        // alg: none, unsigned.
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(r#"{"sub":"alice","exp":99999999999}"#)
        );
        assert!(v.verify(&none).is_err());
        // HS512 with the right secret is still the wrong algorithm.
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &Claims {
                sub: "alice".into(),
                exp: 99_999_999_999,
                scope: None,
                iat: None,
            },
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert!(v.verify(&hs512).is_err());
    }

    fn b64(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

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
}
