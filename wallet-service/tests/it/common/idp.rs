//! The identity provider the tests sign in with: the project's own (`local-idp`), serving
//! its JWKS over HTTP on loopback.

use std::future::IntoFuture;
use std::sync::{Arc, OnceLock};

use super::AUDIENCE;

/// An identity provider of the project's own, serving its JWKS over HTTP on loopback.
pub struct TestIdp {
    pub provider: Arc<local_idp::Provider>,
    /// Base URL; the JWKS is at `{url}/.well-known/jwks.json`.
    pub url: String,
}

impl TestIdp {
    pub fn jwks_url(&self) -> String {
        format!("{}/.well-known/jwks.json", self.url)
    }

    /// Sign-in settings that trust this provider.
    pub fn auth_config(&self) -> wallet_service::config::AuthConfig {
        wallet_service::config::AuthConfig::with_jwks(
            &self.jwks_url(),
            &self.provider.settings().issuer,
            AUDIENCE,
        )
    }

    pub fn token(&self, sub: &str, admin: bool) -> String {
        self.provider
            .mint(&local_idp::TokenRequest {
                sub: sub.into(),
                admin,
                ttl_secs: Some(600),
            })
            .expect("a valid token request")
    }
}

fn idp_settings(addr: std::net::SocketAddr) -> local_idp::Settings {
    local_idp::Settings {
        issuer: format!("http://{addr}/"),
        audience: AUDIENCE.into(),
        max_ttl_secs: 86_400,
        keys_file: None,
    }
}

/// The provider every test's service trusts by default: one per test binary, serving from
/// a thread of its own (each test runs on a runtime that ends with it).
pub fn idp() -> &'static TestIdp {
    static IDP: OnceLock<TestIdp> = OnceLock::new();
    IDP.get_or_init(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let provider = local_idp::Provider::new(idp_settings(addr)).unwrap();
        let served = provider.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, local_idp::router(served))
                    .await
                    .unwrap();
            });
        });
        TestIdp {
            provider,
            url: format!("http://{addr}"),
        }
    })
}

/// A provider of the calling test's own, on `listener` (tests that stop, break or rotate it).
pub fn spawn_idp(listener: tokio::net::TcpListener) -> TestIdp {
    let addr = listener.local_addr().unwrap();
    let provider = local_idp::Provider::new(idp_settings(addr)).unwrap();
    tokio::spawn(axum::serve(listener, local_idp::router(provider.clone())).into_future());
    TestIdp {
        provider,
        url: format!("http://{addr}"),
    }
}

pub fn token(sub: &str) -> String {
    idp().token(sub, false)
}

pub fn admin_token() -> String {
    idp().token("ops", true)
}
