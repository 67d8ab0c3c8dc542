//! Private signing keys, for the project's local identity provider and for tests: ES256 keys
//! generated here (P-256), or an RSA key for RS256. Each has a `kid` and publishes its
//! public half as a JWK ([`SigningKey::public_jwk`]).

#[cfg(doc)]
use super::MintedClaims;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

/// A private key and its `kid`.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    alg: Algorithm,
    /// PKCS#8 for ES256, PKCS#1 for RS256 (what `jsonwebtoken` signs with).
    der: Vec<u8>,
    public: Value,
}

#[derive(Debug, thiserror::Error)]
#[error("not a usable private key: {0}")]
pub struct BadKey(String);

impl SigningKey {
    /// A fresh P-256 key for ES256.
    pub fn generate_es256(kid: &str) -> Self {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .expect("the system's random source works");
        Self::es256_from_pkcs8(kid, pkcs8.as_ref()).expect("a key just generated is valid")
    }

    /// An ES256 key from its PKCS#8 DER (what [`SigningKey::private_der`] gave).
    pub fn es256_from_pkcs8(kid: &str, pkcs8: &[u8]) -> Result<Self, BadKey> {
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8,
            &SystemRandom::new(),
        )
        .map_err(|e| BadKey(e.to_string()))?;
        // The uncompressed point: 0x04, then x and y of 32 bytes each.
        let point = pair.public_key().as_ref();
        let public = json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        });
        Ok(Self {
            kid: kid.to_owned(),
            alg: Algorithm::ES256,
            der: pkcs8.to_vec(),
            public,
        })
    }

    /// An RS256 key from its PKCS#1 DER (`openssl rsa -outform DER -traditional`).
    pub fn rs256_from_pkcs1(kid: &str, der: &[u8]) -> Result<Self, BadKey> {
        let pair = RsaKeyPair::from_der(der).map_err(|e| BadKey(e.to_string()))?;
        let parts = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
        let public = json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(&parts.n),
            "e": URL_SAFE_NO_PAD.encode(&parts.e),
        });
        Ok(Self {
            kid: kid.to_owned(),
            alg: Algorithm::RS256,
            der: der.to_vec(),
            public,
        })
    }

    /// A fixed 2048-bit RSA key for tests (ring cannot generate RSA keys). Public in this
    /// repository, so never trusted outside tests.
    pub fn test_rsa(kid: &str) -> Self {
        Self::rs256_from_pkcs1(kid, include_bytes!("test-rsa-key.der"))
            .expect("the test key is valid")
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The private key, to keep it across restarts.
    pub fn private_der(&self) -> &[u8] {
        &self.der
    }

    /// The public half, as the JWKS publishes it.
    pub fn public_jwk(&self) -> Value {
        self.public.clone()
    }

    /// A signed token with these claims (a [`MintedClaims`], or any JSON in tests) and this
    /// key's `kid`.
    pub fn sign<C: serde::Serialize>(&self, claims: &C) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        let key = match self.alg {
            Algorithm::RS256 => EncodingKey::from_rsa_der(&self.der),
            _ => EncodingKey::from_ec_der(&self.der),
        };
        jsonwebtoken::encode(&header, claims, &key).expect("a valid key signs")
    }
}
