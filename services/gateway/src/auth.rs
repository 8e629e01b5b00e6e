//! Token verification at the edge.
//!
//! The shared verifier remembers verified tokens (`auth.cache_ttl_secs`, keyed by the SHA-256
//! of the exact token bytes, never past `exp`, emptied when the keys change), so a caller's
//! next requests skip the signature check, which at the edge costs more than everything else a
//! request does. This middleware adds the gateway's public paths (`routing.public_paths`) to
//! the shared layer's rules.
//!
//! Refusals are the shared layer's: the same codes, reasons, `WWW-Authenticate` and security
//! log line.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use liquid_auth::{AuthError, BearerToken, Claims, Verifier, bearer_from_headers};
use liquid_kit::telemetry::target;

/// The edge's token checks: the shared verifier and the public paths; cheap to clone.
#[derive(Clone)]
pub struct EdgeAuth {
    verifier: Arc<Verifier>,
    /// `routing.public_paths`: read without a token.
    public: Arc<Vec<String>>,
}

impl EdgeAuth {
    /// Checks with `verifier` (which remembers verified tokens per `[auth]`).
    pub fn new(verifier: Arc<Verifier>) -> EdgeAuth {
        EdgeAuth {
            verifier,
            public: Arc::new(Vec::new()),
        }
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

fn refuse(error: &AuthError, path: &str) -> Response {
    tracing::info!(target: target::SECURITY, path, grpc = false, reason = error.reason(), %error, "request refused");
    error.clone().into_response()
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
