//! Where the tools (load generator, fault suite, end-to-end tests) get their tokens: from the
//! local identity provider over HTTP (`IDP_URL`, the default stack), or signed with the
//! shared secret (`AUTH_JWT_SECRET`, the development mode). Both settings come from
//! `.run/env`, so a tool works against whichever mode the stack runs.

use super::secret::Mint;
use serde::Deserialize;
use serde_json::json;

/// How to get a token the running stack accepts.
#[derive(Clone)]
pub enum TokenSource {
    /// The local identity provider's `POST /token`.
    Provider { url: String, http: reqwest::Client },
    /// HS256 with the stack's secret, and its issuer and audience when set.
    Secret {
        secret: String,
        issuer: Option<String>,
        audience: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum TokenRequestError {
    #[error(
        "no way to get tokens: set IDP_URL (the local identity provider) or \
         AUTH_JWT_SECRET (HS256), as `source .run/env` does"
    )]
    NotConfigured,
    #[error("the identity provider at {url} did not answer: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the identity provider at {url} refused: HTTP {status}: {body}")]
    Refused {
        url: String,
        status: u16,
        body: String,
    },
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
}

impl TokenSource {
    /// The identity provider when `idp_url` is set, else the secret; empty values count as
    /// unset.
    pub fn new(
        idp_url: Option<String>,
        secret: Option<String>,
        issuer: Option<String>,
        audience: Option<String>,
    ) -> Result<Self, TokenRequestError> {
        let set = |v: Option<String>| v.filter(|v| !v.is_empty());
        match (set(idp_url), set(secret)) {
            (Some(url), _) => Ok(Self::Provider {
                url: url.trim_end_matches('/').to_owned(),
                http: reqwest::Client::builder()
                    .timeout(std::time::Duration::from_secs(10))
                    .build()
                    .expect("an HTTP client with a timeout builds"),
            }),
            (None, Some(secret)) => Ok(Self::Secret {
                secret,
                issuer: set(issuer),
                audience: set(audience),
            }),
            (None, None) => Err(TokenRequestError::NotConfigured),
        }
    }

    /// From the environment: `IDP_URL`, `AUTH_JWT_SECRET`, `AUTH_ISSUER`, `AUTH_AUDIENCE`.
    pub fn from_env() -> Result<Self, TokenRequestError> {
        let var = |k| std::env::var(k).ok();
        Self::new(
            var("IDP_URL"),
            var("AUTH_JWT_SECRET"),
            var("AUTH_ISSUER"),
            var("AUTH_AUDIENCE"),
        )
    }

    /// A token for `sub`, admin or not, living `ttl_secs`.
    pub async fn token(
        &self,
        sub: &str,
        admin: bool,
        ttl_secs: u64,
    ) -> Result<String, TokenRequestError> {
        match self {
            Self::Secret {
                secret,
                issuer,
                audience,
            } => Ok(Mint {
                sub,
                admin,
                ttl_secs,
                issuer: issuer.as_deref(),
                audience: audience.as_deref(),
            }
            .sign(secret)),
            Self::Provider { url, http } => {
                let url = format!("{url}/token");
                let unreachable = |source| TokenRequestError::Unreachable {
                    url: url.clone(),
                    source,
                };
                let response = http
                    .post(&url)
                    .json(&json!({"sub": sub, "admin": admin, "ttl_secs": ttl_secs}))
                    .send()
                    .await
                    .map_err(unreachable)?;
                let status = response.status();
                if !status.is_success() {
                    let body = response.text().await.unwrap_or_default();
                    return Err(TokenRequestError::Refused {
                        url,
                        status: status.as_u16(),
                        body: body.chars().take(300).collect(),
                    });
                }
                let answer: TokenResponse = response.json().await.map_err(unreachable)?;
                Ok(answer.access_token)
            }
        }
    }
}
