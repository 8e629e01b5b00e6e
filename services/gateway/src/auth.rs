//! Token verification at the edge with a cache of verified tokens.
//!
//! The shared verifier checks a signature per request (Ed25519, RSA or ECDSA), which at the
//! edge costs more than everything else a request does. Like Envoy's `jwt_authn` cache, the
//! gateway remembers a token it verified, keyed by the SHA-256 of the exact token bytes, for at
//! most `token_cache.ttl_secs` and never past the token's own `exp`; any other token, however
//! similar, misses and is verified in full. A key removed from the JWKS therefore stops being
//! honoured at the edge within the TTL (every service behind still verifies in full).
//!
//! Refusals are the shared layer's: the same codes, reasons, `WWW-Authenticate` and security
//! log line.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use liquid_auth::{AuthError, BearerToken, Claims, Verifier, bearer_from_headers};
use liquid_kit::telemetry::target;
use sha2::{Digest, Sha256};

use crate::config::TokenCacheSettings;

/// Verifies tokens, remembering the verified ones for a while; cheap to clone.
#[derive(Clone)]
pub struct TokenCache {
    verifier: Arc<Verifier>,
    cache: Option<moka::sync::Cache<[u8; 32], Arc<Claims>>>,
    /// `routing.public_paths`: read without a token.
    public: Arc<Vec<String>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TokenCache {
    /// A cache in front of `verifier` with `[token_cache]`.
    pub fn new(verifier: Arc<Verifier>, settings: &TokenCacheSettings) -> TokenCache {
        let cache = settings.enabled.then(|| {
            moka::sync::Cache::builder()
                .max_capacity(settings.max_entries)
                .time_to_live(Duration::from_secs(settings.ttl_secs))
                .build()
        });
        TokenCache {
            verifier,
            cache,
            public: Arc::new(Vec::new()),
        }
    }

    /// Lets `GET`/`HEAD` of these path patterns through without a token.
    pub fn with_public_paths(mut self, paths: Vec<String>) -> TokenCache {
        self.public = Arc::new(paths);
        self
    }

    /// The verifier behind the cache.
    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.verifier
    }

    /// The claims of `token`, from the cache when it was verified recently and has not expired.
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let Some(cache) = &self.cache else {
            return self.verifier.verify_or_refresh(token).await;
        };
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(claims) = cache.get(&key) {
            if claims.exp > unix_now() {
                return Ok(Claims::clone(&claims));
            }
            cache.invalidate(&key);
        }
        let claims = self.verifier.verify_or_refresh(token).await?;
        cache.insert(key, Arc::new(claims.clone()));
        Ok(claims)
    }
}

fn refuse(error: &AuthError, path: &str) -> Response {
    tracing::info!(target: target::SECURITY, path, grpc = false, reason = error.reason(), %error, "request refused");
    error.clone().into_response()
}

/// Middleware: the verified caller's [`Claims`] and [`BearerToken`] into the extensions, or
/// the refusal. Without a token the request passes only when auth is not required, or when it
/// reads a public path (`routing.public_paths`, `GET` or `HEAD`: discovery documents).
pub async fn authenticate(
    State(tokens): State<TokenCache>,
    mut request: Request,
    next: Next,
) -> Response {
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    if reads
        && request.headers().get(header::AUTHORIZATION).is_none()
        && tokens
            .public
            .iter()
            .any(|p| crate::config::public_path_matches(p, request.uri().path()))
    {
        return next.run(request).await;
    }
    let token = match bearer_from_headers(request.headers()) {
        Ok(Some(token)) => token.to_owned(),
        Ok(None) if !tokens.verifier.required() => return next.run(request).await,
        Ok(None) => return refuse(&AuthError::MissingToken, request.uri().path()),
        Err(error) => return refuse(&error, request.uri().path()),
    };
    match tokens.verify(&token).await {
        Ok(claims) => {
            let extensions = request.extensions_mut();
            extensions.insert(claims);
            extensions.insert(BearerToken::new(token));
            next.run(request).await
        }
        Err(error) => refuse(&error, request.uri().path()),
    }
}

#[cfg(test)]
mod tests {
    use liquid_auth::{AuthConfig, SigningKey, TokenRequest};

    use super::*;

    async fn cache(enabled: bool) -> (TokenCache, SigningKey, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate().unwrap();
        let pem = dir.path().join("pub.pem");
        std::fs::write(&pem, key.public_key_pem()).unwrap();
        let verifier = Verifier::from_config(&AuthConfig::dev_public_key(&pem, "t", "liquid"))
            .await
            .unwrap();
        let settings = TokenCacheSettings {
            enabled,
            ..TokenCacheSettings::default()
        };
        (TokenCache::new(Arc::new(verifier), &settings), key, dir)
    }

    fn mint(key: &SigningKey, sub: &str) -> String {
        key.mint(
            &TokenRequest::user(sub, ["read:prices"])
                .issuer("t")
                .audience("liquid"),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_cached_token_answers_the_same_claims_and_any_edit_misses() {
        let (tokens, key, _dir) = cache(true).await;
        let token = mint(&key, "bob");
        let first = tokens.verify(&token).await.unwrap();
        let again = tokens.verify(&token).await.unwrap();
        assert_eq!(first, again);
        assert_eq!(again.sub, "bob");
        // Flip one character of the signature: not the cached token, so verified and refused.
        let mut tampered = token.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(tokens.verify(&tampered).await.is_err());
    }

    #[tokio::test]
    async fn refused_tokens_are_never_remembered() {
        let (tokens, _key, _dir) = cache(true).await;
        let other = SigningKey::generate().unwrap();
        let forged = mint(&other, "mallory");
        for _ in 0..3 {
            assert_eq!(tokens.verify(&forged).await, Err(AuthError::BadSignature));
        }
        let (plain, key, _dir) = cache(false).await;
        assert!(plain.verify(&mint(&key, "x")).await.is_ok());
    }
}
