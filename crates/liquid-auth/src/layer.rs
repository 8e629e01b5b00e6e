//! One tower layer for axum routers and tonic servers: verifies the bearer token, puts the
//! [`Claims`] into request extensions, and refuses with the platform's error shape (JSON
//! envelope for HTTP, a gRPC status for `application/grpc` requests).

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use liquid_kit::ApiError;
use liquid_kit::error::GRPC_ERROR_CODE_KEY;

use crate::{AuthError, Claims, Verifier};

/// Paths that never need a token (probes, metrics, discovery, gRPC health).
pub const PUBLIC_PATHS: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/.well-known/",
    "/grpc.health.v1.Health/",
];

/// Adds token verification in front of a service.
#[derive(Clone)]
pub struct AuthLayer {
    verifier: Arc<Verifier>,
}

impl AuthLayer {
    /// A layer verifying with `verifier`.
    pub fn new(verifier: Arc<Verifier>) -> Self {
        AuthLayer { verifier }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            verifier: self.verifier.clone(),
        }
    }
}

/// The service [`AuthLayer`] produces.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    verifier: Arc<Verifier>,
}

fn is_public(path: &str) -> bool {
    PUBLIC_PATHS.iter().any(|p| {
        if p.ends_with('/') {
            path.starts_with(p)
        } else {
            path == *p
        }
    })
}

fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

fn refuse(error: &AuthError, grpc: bool) -> Response {
    let api = ApiError::from_error(error);
    if grpc {
        let mut response = Response::new(axum::body::Body::empty());
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        headers.insert(
            "grpc-status",
            http::HeaderValue::from(api.code.grpc_code() as i32),
        );
        if let Ok(v) = http::HeaderValue::from_str(&api.message) {
            headers.insert("grpc-message", v);
        }
        headers.insert(
            GRPC_ERROR_CODE_KEY,
            http::HeaderValue::from_static(api.code.as_str()),
        );
        response
    } else {
        api.into_response()
    }
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if !is_public(request.uri().path()) {
            let grpc = request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("application/grpc"));
            let verified = match bearer(request.headers()) {
                None => Err(AuthError::MissingToken),
                Some(token) => self.verifier.verify(token),
            };
            match verified {
                Ok(claims) => {
                    request.extensions_mut().insert(claims);
                }
                Err(error) => {
                    tracing::info!(target: "security", path = %request.uri().path(), %error, "request refused");
                    let response = refuse(&error, grpc);
                    return Box::pin(async move { Ok(response) });
                }
            }
        }
        // Take the service that was driven to readiness, leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move { inner.call(request).await })
    }
}

/// Extractor for the verified caller; answers 401 when the auth layer did not run or found
/// no token.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Claims);

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Claims>()
            .cloned()
            .map(Authenticated)
            .ok_or_else(|| ApiError::from_error(&AuthError::MissingToken))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_and_discovery_are_public_everything_else_is_not() {
        assert!(is_public("/healthz"));
        assert!(is_public("/.well-known/agent-card.json"));
        assert!(is_public("/grpc.health.v1.Health/Check"));
        assert!(!is_public("/healthz/extra"));
        assert!(!is_public("/api/v1/cowork/info"));
        assert!(!is_public("/liquid.platform.v1.PlatformService/GetInfo"));
    }

    #[test]
    fn bearer_is_read_from_the_authorization_header() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
