//! What verifying one bearer token costs on this machine, per algorithm: the CPU the
//! wallet-service spends on sign-in for every request.
//!
//!     cargo run --release -p shared --features signing --example verify_cost

use shared::auth::jwks::KeySet;
use shared::auth::signing::SigningKey;
use shared::auth::{mint, now_secs, MintedClaims, SecretVerifier, TokenPolicy};
use std::time::Instant;

const ROUNDS: u32 = 20_000;

fn per_call(label: &str, mut f: impl FnMut()) {
    for _ in 0..1_000 {
        f();
    }
    let t = Instant::now();
    for _ in 0..ROUNDS {
        f();
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / f64::from(ROUNDS);
    println!("{label:<8} {us:>8.1} us per verification ({ROUNDS} rounds, one core)");
}

fn main() {
    let policy = TokenPolicy {
        issuer: Some("https://idp.bench/".into()),
        audience: Some("wallet-api".into()),
        ..TokenPolicy::default()
    };
    let now = now_secs();
    let claims = MintedClaims {
        sub: "alice",
        iat: now,
        exp: now + 3600,
        scope: None,
        iss: Some("https://idp.bench/"),
        aud: Some("wallet-api"),
    };

    let secret = "0123456789abcdef0123456789abcdef";
    let hs = SecretVerifier::new(secret, &TokenPolicy::default()).unwrap();
    let hs_token = mint(secret, "alice", false, 3600);
    per_call("HS256", || {
        hs.verify(&hs_token).unwrap();
    });

    let es = SigningKey::generate_es256("es");
    let rs = SigningKey::test_rsa("rs");
    let doc = serde_json::json!({"keys": [es.public_jwk(), rs.public_jwk()]});
    let keys = KeySet::parse(doc.to_string().as_bytes(), &policy).unwrap();
    for (label, key) in [("ES256", &es), ("RS256", &rs)] {
        let token = key.sign(&claims);
        per_call(label, || {
            keys.verify(&token, &policy).unwrap();
        });
    }
}
