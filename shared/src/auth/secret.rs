//! HS256 tokens signed with a secret shared with whoever mints them: the development mode
//! (`AUTH_JWT_SECRET`). Production verifies against an identity provider's keys instead
//! ([`super::jwks`]).

use super::{now_secs, AuthError, MintedClaims, Principal, TokenPolicy, DEFAULT_ADMIN_SCOPE};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

/// The shortest `AUTH_JWT_SECRET` accepted, in bytes (HS256 wants a key of at least its
/// 256-bit output).
pub const MIN_SECRET_BYTES: usize = 32;

/// `AUTH_JWT_SECRET` is not fit to sign tokens. The message is for the operator and never
/// contains the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeakSecret {
    #[error(
        "AUTH_JWT_SECRET is {0} bytes long; it must be at least {MIN_SECRET_BYTES} random bytes \
         (generate one with `openssl rand -hex 32`)"
    )]
    TooShort(usize),
    #[error(
        "AUTH_JWT_SECRET is a placeholder from an example configuration, not a secret; set a \
         random one of at least {MIN_SECRET_BYTES} bytes (generate one with `openssl rand -hex 32`)"
    )]
    Placeholder,
}

/// Refuses secrets that are short, placeholders from examples (`dev-only-jwt-secret-change-me`
/// and the like) or one character repeated.
pub fn check_secret(secret: &str) -> Result<(), WeakSecret> {
    let normalised: String = secret
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    const MARKERS: [&str; 7] = [
        "changeme",
        "changethis",
        "replaceme",
        "placeholder",
        "devonly",
        "yoursecret",
        "notasecret",
    ];
    if MARKERS.iter().any(|m| normalised.contains(m)) {
        return Err(WeakSecret::Placeholder);
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(WeakSecret::TooShort(secret.len()));
    }
    let mut seen = std::collections::BTreeSet::new();
    seen.extend(secret.bytes());
    if seen.len() < 8 {
        return Err(WeakSecret::Placeholder);
    }
    Ok(())
}

/// Verifies tokens with one secret; only HS256 is accepted (no `none`, no key confusion).
#[derive(Clone)]
pub struct SecretVerifier {
    key: DecodingKey,
    validation: Validation,
    policy: TokenPolicy,
}

impl SecretVerifier {
    /// Refuses a weak secret (see [`check_secret`]): the service does not start with one.
    pub fn new(secret: &str, policy: &TokenPolicy) -> Result<Self, WeakSecret> {
        check_secret(secret)?;
        Ok(Self {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation: policy.validation(Algorithm::HS256),
            policy: policy.clone(),
        })
    }

    /// Parses an `Authorization` header value.
    pub fn verify_header(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        self.verify(super::bearer(header)?)
    }

    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        Ok(self.policy.decode(token, &self.key, &self.validation)?)
    }
}

/// A token to mint: the `token` subcommand fills `issuer` and `audience` from the service's
/// settings, so what it prints is what the service accepts.
#[derive(Debug, Clone, Default)]
pub struct Mint<'a> {
    pub sub: &'a str,
    pub admin: bool,
    pub ttl_secs: u64,
    pub issuer: Option<&'a str>,
    pub audience: Option<&'a str>,
}

impl Mint<'_> {
    /// The claims of this token, issued now.
    pub fn claims(&self) -> MintedClaims<'_> {
        let now = now_secs();
        MintedClaims {
            sub: self.sub,
            iat: now,
            exp: now + self.ttl_secs,
            scope: self.admin.then_some(DEFAULT_ADMIN_SCOPE),
            iss: self.issuer,
            aud: self.audience,
        }
    }

    pub fn sign(&self, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &self.claims(),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("HS256 encoding cannot fail")
    }
}

/// Mints a token without `iss` and `aud` (tests and the load tools).
pub fn mint(secret: &str, sub: &str, admin: bool, ttl_secs: u64) -> String {
    Mint {
        sub,
        admin,
        ttl_secs,
        ..Mint::default()
    }
    .sign(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Refusal, LEEWAY_SECS};
    use serde_json::{json, Value};

    const SECRET: &str = "a-test-secret-of-sufficient-length";

    fn verifier() -> SecretVerifier {
        SecretVerifier::new(SECRET, &TokenPolicy::default()).unwrap()
    }

    /// Signs arbitrary claims with `SECRET`.
    fn sign(claims: &Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn refusal(v: &SecretVerifier, token: &str) -> Refusal {
        match v.verify(token) {
            Err(AuthError::Invalid(r)) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn minted_tokens_verify_with_scope() {
        let v = verifier();
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
        let v = verifier();
        assert!(matches!(v.verify_header(None), Err(AuthError::Missing)));
        assert!(v.verify_header(Some("Basic abc")).is_err());
        assert_eq!(
            refusal(
                &v,
                &mint("another-secret-of-good-length", "alice", false, 60)
            ),
            Refusal::BadSignature
        );
        // Expired well past the leeway.
        let expired = sign(&json!({"sub": "alice", "exp": 1_000, "iat": 900}));
        assert_eq!(refusal(&v, &expired), Refusal::Expired);
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
            &json!({"sub": "alice", "exp": 99_999_999_999u64, "iat": now_secs()}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(refusal(&v, &hs512), Refusal::BadSignature);
    }

    #[test]
    fn a_token_not_yet_valid_is_refused() {
        let v = verifier();
        let now = now_secs();
        let early = sign(&json!({"sub": "alice", "iat": now, "exp": now + 600, "nbf": now + 120}));
        assert_eq!(refusal(&v, &early), Refusal::NotYetValid);
        // Within the leeway, and in the past: accepted.
        for nbf in [now + LEEWAY_SECS, now - 60] {
            let t = sign(&json!({"sub": "alice", "iat": now, "exp": now + 600, "nbf": nbf}));
            assert!(v.verify(&t).is_ok(), "nbf {nbf}");
        }
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let policy = TokenPolicy {
            issuer: Some("https://auth.example".into()),
            audience: Some("wallet-api".into()),
            ..TokenPolicy::default()
        };
        let v = SecretVerifier::new(SECRET, &policy).unwrap();
        let now = now_secs();
        let token = |iss: Option<&str>, aud: Option<Value>| {
            let mut c = json!({"sub": "alice", "iat": now, "exp": now + 600});
            if let Some(iss) = iss {
                c["iss"] = json!(iss);
            }
            if let Some(aud) = aud {
                c["aud"] = aud;
            }
            sign(&c)
        };
        let (iss, aud) = (Some("https://auth.example"), Some(json!("wallet-api")));
        assert!(v.verify(&token(iss, aud.clone())).is_ok());
        // One of several audiences is enough.
        assert!(v
            .verify(&token(iss, Some(json!(["other", "wallet-api"]))))
            .is_ok());
        assert_eq!(
            refusal(&v, &token(Some("https://evil.example"), aud.clone())),
            Refusal::WrongIssuer
        );
        assert_eq!(
            refusal(&v, &token(iss, Some(json!("another-api")))),
            Refusal::WrongAudience
        );
        assert_eq!(
            refusal(&v, &token(None, aud)),
            Refusal::MissingClaim("iss".into())
        );
        assert_eq!(
            refusal(&v, &token(iss, None)),
            Refusal::MissingClaim("aud".into())
        );
        // The minting side writes both, and the result verifies.
        let minted = Mint {
            sub: "alice",
            ttl_secs: 60,
            issuer: policy.issuer.as_deref(),
            audience: policy.audience.as_deref(),
            ..Mint::default()
        }
        .sign(SECRET);
        assert!(v.verify(&minted).is_ok());
        // A token without them is refused by this verifier, and accepted by one without policy.
        let plain = mint(SECRET, "alice", false, 60);
        assert!(v.verify(&plain).is_err());
        assert!(verifier().verify(&plain).is_ok());
        // Without a configured audience, a token naming one is refused.
        assert_eq!(refusal(&verifier(), &minted), Refusal::WrongAudience);
    }

    #[test]
    fn a_token_living_too_long_is_refused() {
        let v = SecretVerifier::new(
            SECRET,
            &TokenPolicy {
                max_lifetime_secs: 3600,
                ..TokenPolicy::default()
            },
        )
        .unwrap();
        assert!(v.verify(&mint(SECRET, "alice", false, 3600)).is_ok());
        assert_eq!(
            refusal(&v, &mint(SECRET, "alice", false, 3601)),
            Refusal::LifetimeTooLong
        );
        // Backdating `iat` does not help: the lifetime is `exp - iat`, whatever is left of it.
        let now = now_secs();
        let backdated = sign(&json!({"sub": "alice", "iat": now - 86_400, "exp": now + 60}));
        assert_eq!(refusal(&v, &backdated), Refusal::LifetimeTooLong);
        // Nor does an `iat` in the future that would make a long-lived token look short.
        let future = sign(&json!({"sub": "alice", "iat": now + 86_400, "exp": now + 87_000}));
        assert_eq!(refusal(&v, &future), Refusal::IssuedInFuture);
        // `exp` before `iat` is nonsense.
        let inverted = sign(&json!({"sub": "alice", "iat": now, "exp": now - 1}));
        assert_eq!(refusal(&v, &inverted), Refusal::LifetimeTooLong);
    }

    #[test]
    fn a_token_without_iat_is_refused() {
        let now = now_secs();
        let token = sign(&json!({"sub": "alice", "exp": now + 60}));
        assert_eq!(
            refusal(&verifier(), &token),
            Refusal::MissingClaim("iat".into())
        );
    }

    #[test]
    fn a_valid_token_with_every_claim_is_accepted() {
        let policy = TokenPolicy {
            issuer: Some("issuer".into()),
            audience: Some("wallet".into()),
            max_lifetime_secs: 600,
            ..TokenPolicy::default()
        };
        let v = SecretVerifier::new(SECRET, &policy).unwrap();
        let now = now_secs();
        let token = sign(&json!({
            "sub": "ops", "scope": "read admin", "iat": now, "nbf": now, "exp": now + 600,
            "iss": "issuer", "aud": "wallet",
        }));
        assert_eq!(
            v.verify_header(Some(&format!("Bearer {token}"))).unwrap(),
            Principal {
                sub: "ops".into(),
                admin: true
            }
        );
    }

    #[test]
    fn admin_rights_come_from_the_configured_scope_or_permission() {
        let policy = TokenPolicy {
            admin_scope: "wallet:admin".into(),
            ..TokenPolicy::default()
        };
        let v = SecretVerifier::new(SECRET, &policy).unwrap();
        let now = now_secs();
        let admin = |extra: Value| {
            let mut c = json!({"sub": "ops", "iat": now, "exp": now + 60});
            c.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            v.verify(&sign(&c)).unwrap().admin
        };
        assert!(admin(json!({"scope": "openid wallet:admin"})));
        assert!(admin(
            json!({"permissions": ["read:wallets", "wallet:admin"]})
        ));
        // The default scope name means nothing once another is configured; a prefix is not a match.
        assert!(!admin(json!({"scope": "admin"})));
        assert!(!admin(json!({"scope": "wallet:admin:read"})));
        assert!(!admin(json!({"permissions": []})));
        assert!(!admin(json!({})));
        // A `permissions` claim of the wrong type is a malformed token, not a silent non-admin.
        let bad = sign(
            &json!({"sub": "ops", "iat": now, "exp": now + 60, "permissions": "wallet:admin"}),
        );
        assert_eq!(refusal(&v, &bad), Refusal::Malformed);
    }

    #[test]
    fn weak_secrets_are_refused() {
        assert_eq!(
            check_secret("dev-only-jwt-secret-change-me"),
            Err(WeakSecret::Placeholder)
        );
        assert_eq!(
            check_secret("please-CHANGE_ME-before-production-0123456789"),
            Err(WeakSecret::Placeholder)
        );
        assert_eq!(
            check_secret("0123456789abcdef0123456789abcde"),
            Err(WeakSecret::TooShort(31))
        );
        assert_eq!(check_secret(&"ab".repeat(32)), Err(WeakSecret::Placeholder));
        assert!(SecretVerifier::new("short", &TokenPolicy::default()).is_err());
        // The message names the setting and the fix, never the secret.
        let msg = check_secret("tooshort-secret").unwrap_err().to_string();
        assert!(msg.contains("AUTH_JWT_SECRET") && msg.contains("at least 32"));
        assert!(!msg.contains("tooshort-secret"));
        // What scripts/up generates (32 random bytes as hex) and the tests' secrets pass.
        assert!(check_secret(&"0123456789abcdef".repeat(4)).is_ok());
        assert!(check_secret(SECRET).is_ok());
        assert!(check_secret("integration-test-secret-0123456789").is_ok());
    }

    fn b64(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }
}
