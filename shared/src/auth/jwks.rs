//! An identity provider's public keys (a JSON Web Key Set, RFC 7517) and verification with
//! them: the key is chosen by the token's `kid`, and its type fixes the algorithm (RS256 for
//! `RSA`, ES256 for `EC` on P-256). The token's own `alg` is never trusted to pick one: an
//! HS256 token signed with a public key as its secret, or `alg: none`, is refused.

use super::{AuthError, Principal, Refusal, TokenPolicy};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::HashMap;

/// More keys than this in one document is not a key set, it is an attack or a mistake.
pub const MAX_KEYS: usize = 64;

/// The usable keys of one JWKS document, by `kid`.
#[derive(Clone)]
pub struct KeySet {
    keys: HashMap<String, Key>,
    /// Each key's `kid`, algorithm and public numbers, sorted: two sets with the same
    /// fingerprint verify exactly the same tokens.
    fingerprint: Vec<String>,
}

#[derive(Clone)]
struct Key {
    key: DecodingKey,
    validation: Validation,
}

/// Why a JWKS document gave no key set.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwksError {
    #[error("not a JWKS document: {0}")]
    NotJwks(String),
    #[error("the JWKS holds {0} keys, more than the {MAX_KEYS} accepted")]
    TooManyKeys(usize),
    #[error("the JWKS holds no RS256 or ES256 signing key with a kid ({skipped} skipped)")]
    NoUsableKey { skipped: usize },
}

/// One entry of `keys`, as far as it is read.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

impl Jwk {
    /// What identifies this key's material.
    fn fingerprint(&self, kid: &str, alg: Algorithm) -> String {
        let part = |v: &Option<String>| v.clone().unwrap_or_default();
        format!(
            "{kid} {alg:?} {} {} {} {}",
            part(&self.n),
            part(&self.e),
            part(&self.x),
            part(&self.y)
        )
    }

    /// The key and its one algorithm, or `None` for a key this service does not verify with
    /// (encryption keys, symmetric keys, other curves and algorithms).
    fn usable(&self) -> Option<(String, Algorithm, DecodingKey)> {
        let kid = self.kid.clone().filter(|k| !k.is_empty())?;
        if self.use_.as_deref().is_some_and(|u| u != "sig") {
            return None;
        }
        let (alg, key) = match (self.kty.as_str(), self.alg.as_deref()) {
            ("RSA", None | Some("RS256")) => (
                Algorithm::RS256,
                DecodingKey::from_rsa_components(self.n.as_deref()?, self.e.as_deref()?).ok()?,
            ),
            ("EC", None | Some("ES256")) if self.crv.as_deref() == Some("P-256") => (
                Algorithm::ES256,
                DecodingKey::from_ec_components(self.x.as_deref()?, self.y.as_deref()?).ok()?,
            ),
            _ => return None,
        };
        Some((kid, alg, key))
    }
}

impl KeySet {
    /// Reads a JWKS document, keeping the RS256 and ES256 signing keys that have a `kid`.
    pub fn parse(body: &[u8], policy: &TokenPolicy) -> Result<Self, JwksError> {
        let doc: Document =
            serde_json::from_slice(body).map_err(|e| JwksError::NotJwks(e.to_string()))?;
        if doc.keys.len() > MAX_KEYS {
            return Err(JwksError::TooManyKeys(doc.keys.len()));
        }
        let mut keys = HashMap::new();
        let mut fingerprint = Vec::new();
        let mut skipped = 0;
        for value in doc.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
                skipped += 1;
                continue;
            };
            match jwk.usable() {
                Some((kid, alg, key)) => {
                    fingerprint.push(jwk.fingerprint(&kid, alg));
                    let validation = policy.validation(alg);
                    keys.insert(kid, Key { key, validation });
                }
                None => skipped += 1,
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey { skipped });
        }
        fingerprint.sort();
        Ok(Self { keys, fingerprint })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Do both sets hold the same keys (the same `kid`s with the same material)?
    pub fn same_keys(&self, other: &KeySet) -> bool {
        self.fingerprint == other.fingerprint
    }

    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// Verifies `token` with the key its `kid` names.
    pub fn verify(&self, token: &str, policy: &TokenPolicy) -> Result<Principal, AuthError> {
        self.verify_until(token, policy).map(|(p, _)| p)
    }

    /// [`KeySet::verify`], with the token's `exp` (how long the answer holds).
    pub fn verify_until(
        &self,
        token: &str,
        policy: &TokenPolicy,
    ) -> Result<(Principal, u64), AuthError> {
        let kid = kid_of(token)?;
        let key = self.keys.get(&kid).ok_or(Refusal::UnknownKey)?;
        Ok(policy.decode_until(token, &key.key, &key.validation)?)
    }
}

/// The `kid` of a token's header; a token without one cannot be matched to a key.
pub fn kid_of(token: &str) -> Result<String, Refusal> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Malformed)?;
    header.kid.ok_or(Refusal::UnknownKey)
}

#[cfg(all(test, feature = "signing"))]
mod tests {
    use super::*;
    use crate::auth::signing::SigningKey;
    use crate::auth::{now_secs, MintedClaims};
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    fn policy() -> TokenPolicy {
        TokenPolicy {
            issuer: Some("https://idp.test/".into()),
            audience: Some("wallet-api".into()),
            ..TokenPolicy::default()
        }
    }

    fn claims(sub: &str) -> MintedClaims<'_> {
        let now = now_secs();
        MintedClaims {
            sub,
            iat: now,
            exp: now + 600,
            scope: None,
            iss: Some("https://idp.test/"),
            aud: Some("wallet-api"),
        }
    }

    fn set_of(keys: &[&SigningKey]) -> KeySet {
        let doc = json!({"keys": keys.iter().map(|k| k.public_jwk()).collect::<Vec<_>>()});
        KeySet::parse(doc.to_string().as_bytes(), &policy()).unwrap()
    }

    fn refusal(set: &KeySet, token: &str) -> Refusal {
        match set.verify(token, &policy()) {
            Err(AuthError::Invalid(r)) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn es256_and_rs256_tokens_verify_with_their_key() {
        let ec = SigningKey::generate_es256("ec-1");
        let rsa = SigningKey::test_rsa("rsa-1");
        let set = set_of(&[&ec, &rsa]);
        assert_eq!(set.len(), 2);
        for key in [&ec, &rsa] {
            let p = set.verify(&key.sign(&claims("alice")), &policy()).unwrap();
            assert_eq!(p.sub, "alice");
        }
    }

    #[test]
    fn a_token_is_refused_by_the_wrong_key_or_kid() {
        let ec = SigningKey::generate_es256("ec-1");
        let set = set_of(&[&ec]);
        // Another key that claims the same kid.
        let impostor = SigningKey::generate_es256("ec-1");
        assert_eq!(
            refusal(&set, &impostor.sign(&claims("alice"))),
            Refusal::BadSignature
        );
        // A kid the set does not have, and no kid at all.
        let stranger = SigningKey::generate_es256("ec-2");
        assert_eq!(
            refusal(&set, &stranger.sign(&claims("alice"))),
            Refusal::UnknownKey
        );
        let no_kid = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims("alice"),
            &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        )
        .unwrap();
        assert_eq!(refusal(&set, &no_kid), Refusal::UnknownKey);
    }

    #[test]
    fn the_token_cannot_choose_the_algorithm() {
        let rsa = SigningKey::test_rsa("rsa-1");
        let set = set_of(&[&rsa]);
        let jwk = rsa.public_jwk();
        // HS256 "signed" with the public key (its JWK, its modulus) as the HMAC secret.
        for secret in [jwk.to_string(), jwk["n"].as_str().unwrap().to_owned()] {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("rsa-1".into());
            let forged = jsonwebtoken::encode(
                &header,
                &claims("alice"),
                &EncodingKey::from_secret(secret.as_bytes()),
            )
            .unwrap();
            assert_eq!(refusal(&set, &forged), Refusal::BadSignature);
        }
        // alg: none, unsigned.
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#),
            b64(&serde_json::to_string(&claims("alice")).unwrap())
        );
        assert!(set.verify(&none, &policy()).is_err());
        // ES256 header on an RSA key.
        let ec = SigningKey::generate_es256("rsa-1");
        assert_eq!(
            refusal(&set, &ec.sign(&claims("alice"))),
            Refusal::BadSignature
        );
    }

    #[test]
    fn the_claim_rules_apply_as_with_a_secret() {
        let ec = SigningKey::generate_es256("ec-1");
        let set = set_of(&[&ec]);
        let mut c = claims("alice");
        c.iss = Some("https://evil.test/");
        assert_eq!(refusal(&set, &ec.sign(&c)), Refusal::WrongIssuer);
        let mut c = claims("alice");
        c.aud = Some("another-api");
        assert_eq!(refusal(&set, &ec.sign(&c)), Refusal::WrongAudience);
        let mut c = claims("alice");
        c.iat -= 7200;
        c.exp = c.iat + 600;
        assert_eq!(refusal(&set, &ec.sign(&c)), Refusal::Expired);
    }

    #[test]
    fn documents_without_a_usable_key_are_refused() {
        let p = policy();
        let parse = |v: serde_json::Value| KeySet::parse(v.to_string().as_bytes(), &p).err();
        assert!(matches!(
            KeySet::parse(b"<html>oops</html>", &p).err(),
            Some(JwksError::NotJwks(_))
        ));
        assert!(matches!(
            parse(json!({"keys": "x"})),
            Some(JwksError::NotJwks(_))
        ));
        // Symmetric keys, encryption keys, other curves, keys without kid: all skipped.
        let ec = SigningKey::generate_es256("ec-1").public_jwk();
        let mut enc = ec.clone();
        enc["use"] = json!("enc");
        let mut p384 = ec.clone();
        p384["crv"] = json!("P-384");
        let mut no_kid = ec.clone();
        no_kid.as_object_mut().unwrap().remove("kid");
        let mut rs512 = SigningKey::test_rsa("r").public_jwk();
        rs512["alg"] = json!("RS512");
        let oct = json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0"});
        assert_eq!(
            parse(json!({"keys": [enc, p384, no_kid, rs512, oct, 42]})),
            Some(JwksError::NoUsableKey { skipped: 6 })
        );
        let many: Vec<_> = (0..=MAX_KEYS).map(|_| ec.clone()).collect();
        assert_eq!(
            parse(json!({ "keys": many })),
            Some(JwksError::TooManyKeys(MAX_KEYS + 1))
        );
        // One good key among bad ones is enough, and only it is kept.
        let set =
            KeySet::parse(json!({"keys": [oct_key(), ec]}).to_string().as_bytes(), &p).unwrap();
        assert!(set.contains("ec-1") && !set.contains("h"));
    }

    #[test]
    fn a_key_replaced_under_the_same_kid_is_a_different_set() {
        let p = policy();
        let set = |keys: &[&SigningKey]| {
            let doc = json!({"keys": keys.iter().map(|k| k.public_jwk()).collect::<Vec<_>>()});
            KeySet::parse(doc.to_string().as_bytes(), &p).unwrap()
        };
        let (a, b) = (
            SigningKey::generate_es256("k1"),
            SigningKey::generate_es256("k2"),
        );
        assert!(set(&[&a, &b]).same_keys(&set(&[&b, &a])));
        assert!(!set(&[&a]).same_keys(&set(&[&a, &b])));
        let a_again = SigningKey::generate_es256("k1");
        assert!(!set(&[&a]).same_keys(&set(&[&a_again])));
    }

    fn oct_key() -> serde_json::Value {
        json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0"})
    }
}
