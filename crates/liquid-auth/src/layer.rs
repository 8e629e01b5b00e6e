//! One tower layer for axum routers and tonic servers.
//!
//! [`AuthLayer`] reads `Authorization: Bearer <jwt>`, verifies it, and puts the [`Claims`] and
//! the raw [`BearerToken`] into the request extensions, where axum extractors and tonic handlers
//! find them. [`RequireScope`] sits inside it and refuses callers without a scope. Refusals use
//! the platform's error shape: the JSON envelope with 401/403 (plus RFC 6750 `WWW-Authenticate`)
//! for HTTP, and for gRPC requests (content type `application/grpc…`) a trailers-only answer:
//! HTTP 200 with `grpc-status`, `grpc-message` and `x-liquid-error-code`. Public paths (probes,
//! metrics, discovery, gRPC health) pass untouched. This module must not decide which scope a
//! route needs; services say so.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use liquid_kit::error::{ErrorCode, ErrorEnvelope, HasErrorCode};
use liquid_kit::telemetry::target;

use crate::outbound::BearerToken;
use crate::{AuthError, Claims, Verifier};

/// Paths that never need a token: probes, metrics, discovery documents and gRPC health. A
/// pattern ending in `/*` matches everything below it; any other pattern matches exactly.
pub const DEFAULT_PUBLIC_PATHS: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/.well-known/*",
    "/grpc.health.v1.Health/*",
];

/// The body of a response that went through the auth layers: the inner service's body, or a
/// refusal.
pub type AuthBody<B> = Either<B, Full<Bytes>>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathPattern {
    Exact(String),
    Below(String),
}

/// The set of paths that skip authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicPaths {
    patterns: Arc<[PathPattern]>,
}

impl Default for PublicPaths {
    fn default() -> Self {
        PublicPaths::none().with_all(DEFAULT_PUBLIC_PATHS.iter().copied())
    }
}

impl PublicPaths {
    /// No public path: every request needs a token.
    pub fn none() -> Self {
        PublicPaths {
            patterns: Arc::from(Vec::new()),
        }
    }

    /// [`DEFAULT_PUBLIC_PATHS`].
    pub fn defaults() -> Self {
        PublicPaths::default()
    }

    /// Adds a pattern: `/exact/path` or `/prefix/*`.
    pub fn with(self, pattern: &str) -> Self {
        self.with_all([pattern])
    }

    /// Adds several patterns.
    pub fn with_all<'a>(self, patterns: impl IntoIterator<Item = &'a str>) -> Self {
        let mut all: Vec<PathPattern> = self.patterns.to_vec();
        for p in patterns {
            let pattern = match p.strip_suffix('*') {
                Some(prefix) if prefix.ends_with('/') => PathPattern::Below(prefix.to_owned()),
                _ => PathPattern::Exact(p.to_owned()),
            };
            if !all.contains(&pattern) {
                all.push(pattern);
            }
        }
        PublicPaths {
            patterns: Arc::from(all),
        }
    }

    /// True when `path` skips authentication. Paths with `.`/`..` segments (or their
    /// percent-encoded forms) are never public, so `/healthz/../api` cannot sneak past.
    pub fn is_public(&self, path: &str) -> bool {
        let dotted = path.split('/').any(|segment| {
            if segment.contains('%') {
                let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
                decoded == "." || decoded == ".."
            } else {
                segment == "." || segment == ".."
            }
        });
        if dotted {
            return false;
        }
        self.patterns.iter().any(|p| match p {
            PathPattern::Exact(exact) => path == exact,
            PathPattern::Below(prefix) => path.starts_with(prefix.as_str()),
        })
    }
}

/// True for gRPC requests (`application/grpc`, `application/grpc+proto`, grpc-web, …).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// The bearer token of `Authorization`: `Ok(None)` when there is no header, an error when the
/// header is not a usable bearer credential.
pub fn bearer_from_headers(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| AuthError::Malformed("authorization header is not visible ASCII".into()))?;
    bearer_from_value(text).map(Some)
}

/// The token of one `Bearer <token>` credential.
pub(crate) fn bearer_from_value(text: &str) -> Result<&str, AuthError> {
    let (scheme, rest) = text.trim().split_once(' ').ok_or_else(|| {
        AuthError::Malformed("authorization header is not `Bearer <token>`".into())
    })?;
    // RFC 7235 §2.1: the scheme is case-insensitive.
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed(
            "authorization scheme is not Bearer".into(),
        ));
    }
    let token = rest.trim();
    if token.is_empty() {
        return Err(AuthError::MissingToken);
    }
    Ok(token)
}

fn www_authenticate(error: &AuthError) -> Option<HeaderValue> {
    let value = match error {
        AuthError::MissingToken => r#"Bearer realm="liquid""#.to_owned(),
        AuthError::MissingScope { scope } => {
            format!(r#"Bearer realm="liquid", error="insufficient_scope", scope="{scope}""#)
        }
        e if e.error_code() == ErrorCode::Unauthenticated => {
            r#"Bearer realm="liquid", error="invalid_token""#.to_owned()
        }
        _ => return None,
    };
    HeaderValue::from_str(&value).ok()
}

/// The response for a refused request: a gRPC trailers-only status for gRPC callers, the JSON
/// error envelope otherwise.
pub(crate) fn refusal_response(error: &AuthError, grpc: bool) -> Response<Full<Bytes>> {
    if grpc {
        return error.to_status().into_http::<Full<Bytes>>();
    }
    let api = error.to_api_error();
    let status = api.code.http_status();
    let body = serde_json::to_vec(&ErrorEnvelope { error: api }).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
        && let Some(value) = www_authenticate(error)
    {
        response
            .headers_mut()
            .insert(http::header::WWW_AUTHENTICATE, value);
    }
    response
}

fn refuse<B>(error: &AuthError, path: &str, grpc: bool) -> Response<AuthBody<B>> {
    tracing::info!(target: target::SECURITY, path, grpc, reason = error.reason(), %error, "request refused");
    refusal_response(error, grpc).map(Either::Right)
}

fn pass_through<S, ReqBody, ResBody>(
    inner: &mut S,
    request: Request<ReqBody>,
) -> BoxFuture<Result<Response<AuthBody<ResBody>>, S::Error>>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    let future = inner.call(request);
    Box::pin(async move { future.await.map(|r| r.map(Either::Left)) })
}

/// Verifies bearer tokens in front of a service. Wrap an axum `Router` with `.layer(...)`, a
/// tonic server with `Server::builder().layer(...)`, or one tonic service with
/// `tower::Layer::layer` (the result keeps its gRPC service name).
#[derive(Debug, Clone)]
pub struct AuthLayer {
    verifier: Arc<Verifier>,
    public: PublicPaths,
    required: bool,
}

impl AuthLayer {
    /// A layer verifying with `verifier`, with [`DEFAULT_PUBLIC_PATHS`] and the verifier's
    /// `required` setting.
    pub fn new(verifier: Arc<Verifier>) -> Self {
        let required = verifier.required();
        AuthLayer {
            verifier,
            public: PublicPaths::default(),
            required,
        }
    }

    /// Replaces the public paths.
    pub fn public_paths(mut self, public: PublicPaths) -> Self {
        self.public = public;
        self
    }

    /// Overrides whether requests without a token are refused.
    pub fn required(mut self, required: bool) -> Self {
        self.required = required;
        self
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`AuthLayer`] produces.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for AuthService<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for AuthService<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<AuthBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // Take the service that was driven to readiness and leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if self.layer.public.is_public(request.uri().path()) {
            return pass_through(&mut inner, request);
        }
        let grpc = is_grpc(request.headers());
        let token = match bearer_from_headers(request.headers()) {
            Ok(Some(token)) => token.to_owned(),
            Ok(None) if !self.layer.required => return pass_through(&mut inner, request),
            Ok(None) => {
                let response = refuse(&AuthError::MissingToken, request.uri().path(), grpc);
                return Box::pin(async move { Ok(response) });
            }
            Err(error) => {
                let response = refuse(&error, request.uri().path(), grpc);
                return Box::pin(async move { Ok(response) });
            }
        };
        let verifier = self.layer.verifier.clone();
        Box::pin(async move {
            match verifier.verify_or_refresh(&token).await {
                Ok(claims) => {
                    let extensions = request.extensions_mut();
                    extensions.insert(claims);
                    extensions.insert(BearerToken::new(token));
                    inner.call(request).await.map(|r| r.map(Either::Left))
                }
                Err(error) => Ok(refuse(&error, request.uri().path(), grpc)),
            }
        })
    }
}

/// Refuses callers whose verified claims lack a scope (403 `permission_denied`, or 401 when no
/// claims are present). Put it inside an [`AuthLayer`]: on one axum route
/// (`post(handler).layer(RequireScope::new(scopes::COWORK_WRITE))`), a router, or a tonic
/// service.
#[derive(Debug, Clone)]
pub struct RequireScope {
    scope: Arc<str>,
}

impl RequireScope {
    /// Requires `scope` (wildcards in the caller's scopes apply).
    pub fn new(scope: &str) -> Self {
        RequireScope {
            scope: Arc::from(scope),
        }
    }

    /// The scope required.
    pub fn scope(&self) -> &str {
        &self.scope
    }
}

impl<S> tower::Layer<S> for RequireScope {
    type Service = RequireScopeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireScopeService {
            inner,
            scope: self.scope.clone(),
        }
    }
}

/// The service [`RequireScope`] produces.
#[derive(Debug, Clone)]
pub struct RequireScopeService<S> {
    inner: S,
    scope: Arc<str>,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for RequireScopeService<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for RequireScopeService<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<AuthBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verdict = match request.extensions().get::<Claims>() {
            None => Err(AuthError::MissingToken),
            Some(claims) => claims.require(&self.scope),
        };
        match verdict {
            Ok(()) => pass_through(&mut inner, request),
            Err(error) => {
                let response = refuse(&error, request.uri().path(), is_grpc(request.headers()));
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_and_discovery_are_public_everything_else_is_not() {
        let p = PublicPaths::default();
        for public in [
            "/healthz",
            "/readyz",
            "/metrics",
            "/.well-known/agent-card.json",
            "/.well-known/jwks.json",
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
        ] {
            assert!(p.is_public(public), "{public}");
        }
        for private in [
            "/healthz/extra",
            "/healthzz",
            "/api/v1/cowork/info",
            "/liquid.platform.v1.PlatformService/GetInfo",
            "/.well-known",
            "/.well-known/../api/v1/x",
            "/.well-known/%2e%2e/api",
            "/.well-known/%2E%2E/api",
            "/grpc.health.v1.Health/./x",
            "/grpc.health.v1.HealthX/Check",
        ] {
            assert!(!p.is_public(private), "{private}");
        }
    }

    #[test]
    fn public_paths_can_be_extended_or_emptied() {
        let p = PublicPaths::none()
            .with("/api/v1/a2a/card")
            .with("/static/*");
        assert!(p.is_public("/api/v1/a2a/card"));
        assert!(p.is_public("/static/app.js"));
        assert!(!p.is_public("/healthz"));
        assert!(!p.is_public("/static"));
        // A star that does not follow a slash is taken literally.
        let p = PublicPaths::none().with("/odd*");
        assert!(p.is_public("/odd*"));
        assert!(!p.is_public("/oddity"));
    }

    #[test]
    fn the_bearer_token_is_read_from_the_authorization_header() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_from_headers(&h), Ok(None));
        for (value, expected) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER   abc  ", Some("abc")),
        ] {
            h.insert(http::header::AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(bearer_from_headers(&h), Ok(expected), "{value}");
        }
        for value in ["Basic abc", "Bearer", "abc", "Bearer "] {
            h.insert(http::header::AUTHORIZATION, HeaderValue::from_static(value));
            assert!(bearer_from_headers(&h).is_err(), "{value}");
        }
    }

    #[test]
    fn grpc_is_recognised_by_content_type() {
        let mut h = HeaderMap::new();
        assert!(!is_grpc(&h));
        for (ct, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc-web", true),
            ("application/json", false),
        ] {
            h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
            assert_eq!(is_grpc(&h), grpc, "{ct}");
        }
    }

    #[test]
    fn refusals_carry_the_envelope_or_the_grpc_status() {
        let r = refusal_response(&AuthError::Expired, false);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers()[http::header::WWW_AUTHENTICATE],
            r#"Bearer realm="liquid", error="invalid_token""#
        );
        let r = refusal_response(
            &AuthError::MissingScope {
                scope: "media:write".into(),
            },
            false,
        );
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(
            r.headers()[http::header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .contains(r#"scope="media:write""#)
        );
        let r = refusal_response(&AuthError::Expired, true);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "16");
        assert_eq!(r.headers()["x-liquid-error-code"], "unauthenticated");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/grpc")
        );
        let r = refusal_response(
            &AuthError::MissingScope {
                scope: "a:b".into(),
            },
            true,
        );
        assert_eq!(r.headers()["grpc-status"], "7");
        assert_eq!(r.headers()["x-liquid-error-code"], "permission_denied");
    }
}
