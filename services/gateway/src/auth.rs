//! Token verification at the edge.
//!
//! The shared verifier remembers verified tokens (`auth.cache_ttl_secs`, keyed by the SHA-256
//! of the exact token bytes, never past `exp`, emptied when the keys change), so a caller's
//! next requests skip the signature check, which at the edge costs more than everything else a
//! request does. This middleware adds the gateway's public paths (`routing.public_paths`) to
//! the shared layer's rules.
//!
//! Refusals are the shared layer's: the same codes, reasons, `WWW-Authenticate` and security
//! log line. Each refusal is also charged to the client address (the IP tier of the route's
//! class), as an anonymous request would be, and becomes 429 once that quota is spent: refused
//! tokens are not a way around the limits. Only refusals pay for this; a verified request does
//! no extra work.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use liquid_auth::{AuthError, BearerToken, Claims, Verifier, bearer_from_headers};
use liquid_kit::telemetry::target;

use crate::ratelimit::{self, RateLimiter};

/// The edge's token checks: the shared verifier and the public paths; cheap to clone.
#[derive(Clone)]
pub struct EdgeAuth {
    verifier: Arc<Verifier>,
    /// `routing.public_paths`: read without a token.
    public: Arc<Vec<String>>,
    /// Charges refusals to the client address, when set.
    limiter: Option<RateLimiter>,
}

impl EdgeAuth {
    /// Checks with `verifier` (which remembers verified tokens per `[auth]`).
    pub fn new(verifier: Arc<Verifier>) -> EdgeAuth {
        EdgeAuth {
            verifier,
            public: Arc::new(Vec::new()),
            limiter: None,
        }
    }

    /// Charges every refusal to the client address in `limiter` (429 once spent).
    pub fn with_refusals_charged(mut self, limiter: RateLimiter) -> EdgeAuth {
        self.limiter = Some(limiter);
        self
    }

    /// Lets `GET`/`HEAD` of these path patterns through without a token.
    pub fn with_public_paths(mut self, paths: Vec<String>) -> EdgeAuth {
        self.public = Arc::new(paths);
        self
    }

    /// The claims of `token` (see [`Verifier::verify_or_refresh`]).
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        self.verifier.verify_or_refresh(token).await
    }
}

impl EdgeAuth {
    /// The refusal of a request for `path` from `peer`: logged, charged to the client address
    /// when a limiter is set, and 429 instead of 401 once the address's quota is spent.
    pub async fn refuse(
        &self,
        error: &AuthError,
        path: &str,
        headers: &HeaderMap,
        peer: IpAddr,
    ) -> Response {
        tracing::info!(target: target::SECURITY, path, grpc = false, reason = error.reason(), %error, "request refused");
        let mut response = error.clone().into_response();
        if let Some(limiter) = &self.limiter {
            let charge = limiter.charge_address(None, headers, peer);
            if let Some(outcome) = limiter.check(limiter.class_of(path), charge).await {
                if !outcome.decision.allowed {
                    return ratelimit::refusal(&outcome);
                }
                ratelimit::write_headers(response.headers_mut(), &outcome);
            }
        }
        response
    }
}

/// Middleware: the verified caller's [`Claims`] and [`BearerToken`] into the extensions, or
/// the refusal. Without a token the request passes only when auth is not required, or when it
/// reads a public path (`routing.public_paths`, `GET` or `HEAD`: discovery documents).
pub async fn authenticate(
    State(tokens): State<EdgeAuth>,
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
    let refused = match bearer_from_headers(request.headers()) {
        Ok(Some(token)) => {
            let token = token.to_owned();
            match tokens.verify(&token).await {
                Ok(claims) => {
                    let extensions = request.extensions_mut();
                    extensions.insert(claims);
                    extensions.insert(BearerToken::new(token));
                    return next.run(request).await;
                }
                Err(error) => error,
            }
        }
        Ok(None) if !tokens.verifier.required() => return next.run(request).await,
        Ok(None) => AuthError::MissingToken,
        Err(error) => error,
    };
    let peer = ratelimit::peer_of(&request);
    tokens
        .refuse(&refused, request.uri().path(), request.headers(), peer)
        .await
}
