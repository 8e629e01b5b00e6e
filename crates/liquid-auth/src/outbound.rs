//! Credentials for outbound calls: forwarding the caller's bearer token, and minting (and
//! caching) this service's own service token.
//!
//! The gateway forwards the caller's token so the next service verifies the same identity; a
//! service acting on its own behalf presents a service token signed with its service key. Both
//! travel as `authorization: Bearer …` (HTTP header or gRPC metadata), marked sensitive so that
//! HTTP tracing layers do not log them. This module never verifies anything.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use liquid_kit::Secret;

use crate::layer::bearer_from_headers;
use crate::signing::unix_now;
use crate::{AuthError, SigningKey, TokenRequest};

/// A raw bearer token (the caller's, as the auth layer found it, or a minted one). Debug output
/// is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(Secret<String>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken([redacted])")
    }
}

impl BearerToken {
    /// Wraps a compact JWT.
    pub fn new(token: impl Into<String>) -> Self {
        BearerToken(Secret::new(token.into()))
    }

    /// The token from an `Authorization: Bearer` header, if there is one.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<BearerToken>, AuthError> {
        Ok(bearer_from_headers(headers)?.map(BearerToken::new))
    }

    /// The compact JWT.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// `Bearer <jwt>` as a header value marked sensitive.
    pub fn header_value(&self) -> Result<HeaderValue, AuthError> {
        let mut value = HeaderValue::try_from(format!("Bearer {}", self.expose()))
            .map_err(|_| AuthError::Malformed("token is not a valid header value".into()))?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// Sets `authorization` on outbound HTTP headers.
    pub fn apply_to_headers(&self, headers: &mut HeaderMap) -> Result<(), AuthError> {
        headers.insert(http::header::AUTHORIZATION, self.header_value()?);
        Ok(())
    }

    /// Sets `authorization` on outbound gRPC metadata.
    pub fn apply_to_metadata(
        &self,
        metadata: &mut tonic::metadata::MetadataMap,
    ) -> Result<(), AuthError> {
        let value =
            tonic::metadata::MetadataValue::try_from(format!("Bearer {}", self.expose()))
                .map_err(|_| AuthError::Malformed("token is not a valid metadata value".into()))?;
        metadata.insert("authorization", value);
        Ok(())
    }
}

/// Copies the caller's `authorization` header onto an outbound request's headers (the gateway's
/// forwarding rule). Returns whether there was one to copy.
pub fn forward_bearer(inbound: &HeaderMap, outbound: &mut HeaderMap) -> Result<bool, AuthError> {
    match BearerToken::from_headers(inbound)? {
        Some(token) => {
            token.apply_to_headers(outbound)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

struct CachedToken {
    token: BearerToken,
    exp: u64,
}

struct SourceInner {
    key: Arc<SigningKey>,
    request: TokenRequest,
    refresh_margin: Duration,
    cached: Mutex<Option<CachedToken>>,
}

/// Mints this service's service token and reuses it until it is close to expiry. Cheap to
/// clone; clones share the cache. Also a tonic client interceptor that adds the token.
#[derive(Clone)]
pub struct ServiceTokenSource {
    inner: Arc<SourceInner>,
}

impl std::fmt::Debug for ServiceTokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceTokenSource")
            .field("kid", &self.inner.key.kid())
            .field("request", &self.inner.request)
            .field("refresh_margin", &self.inner.refresh_margin)
            .finish_non_exhaustive()
    }
}

impl ServiceTokenSource {
    /// Mints with `key` what `request` says (build it with [`TokenRequest::service`]). A token
    /// is re-minted when less than a quarter of its lifetime, at most a minute, is left.
    pub fn new(key: Arc<SigningKey>, request: TokenRequest) -> Self {
        let refresh_margin = (request.lifetime() / 4).min(Duration::from_secs(60));
        ServiceTokenSource {
            inner: Arc::new(SourceInner {
                key,
                request,
                refresh_margin,
                cached: Mutex::new(None),
            }),
        }
    }

    /// Re-mint when less than `margin` of the token's life is left.
    pub fn with_refresh_margin(self, margin: Duration) -> Self {
        ServiceTokenSource {
            inner: Arc::new(SourceInner {
                key: self.inner.key.clone(),
                request: self.inner.request.clone(),
                refresh_margin: margin,
                cached: Mutex::new(None),
            }),
        }
    }

    /// The current service token, minted now if the cached one is near expiry.
    pub fn token(&self) -> Result<BearerToken, AuthError> {
        let mut cached = match self.inner.cached.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let margin = self.inner.refresh_margin.as_secs();
        if let Some(c) = cached.as_ref()
            && unix_now().saturating_add(margin) < c.exp
        {
            return Ok(c.token.clone());
        }
        let claims = self.inner.request.to_claims()?;
        let token = BearerToken::new(self.inner.key.mint_claims(&claims)?);
        *cached = Some(CachedToken {
            token: token.clone(),
            exp: claims.exp,
        });
        Ok(token)
    }

    /// `Bearer <service token>` as a sensitive header value.
    pub fn header_value(&self) -> Result<HeaderValue, AuthError> {
        self.token()?.header_value()
    }
}

impl tonic::service::Interceptor for ServiceTokenSource {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let token = self.token().map_err(|e| e.to_status())?;
        token
            .apply_to_metadata(request.metadata_mut())
            .map_err(|e| e.to_status())?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    fn source() -> ServiceTokenSource {
        let key = Arc::new(SigningKey::generate().unwrap());
        ServiceTokenSource::new(key, TokenRequest::service("cowork", ["a2a:write"]))
    }

    #[test]
    fn the_service_token_is_cached_until_near_expiry() {
        let s = source();
        let first = s.token().unwrap();
        assert_eq!(s.token().unwrap(), first, "a fresh token must be reused");
        // A margin longer than the lifetime makes every token "near expiry".
        let eager = s.with_refresh_margin(Duration::from_secs(7200));
        let a = eager.token().unwrap();
        let b = eager.token().unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn tokens_never_show_in_debug_and_are_sensitive_headers() {
        let s = source();
        let token = s.token().unwrap();
        assert!(!format!("{token:?}").contains(token.expose()));
        assert!(!format!("{s:?}").contains(token.expose()));
        let value = s.header_value().unwrap();
        assert!(value.is_sensitive());
        assert!(value.to_str().unwrap().starts_with("Bearer ey"));
    }

    #[test]
    fn the_interceptor_adds_authorization_metadata() {
        let mut s = source();
        let request = s.call(tonic::Request::new(())).unwrap();
        let value = request
            .metadata()
            .get("authorization")
            .unwrap()
            .to_str()
            .unwrap();
        assert_eq!(value, format!("Bearer {}", s.token().unwrap().expose()));
    }

    #[test]
    fn the_callers_token_is_forwarded_verbatim() {
        let mut inbound = HeaderMap::new();
        let mut outbound = HeaderMap::new();
        assert!(!forward_bearer(&inbound, &mut outbound).unwrap());
        assert!(outbound.is_empty());
        inbound.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc.def.ghi"),
        );
        assert!(forward_bearer(&inbound, &mut outbound).unwrap());
        assert_eq!(outbound[http::header::AUTHORIZATION], "Bearer abc.def.ghi");
        assert!(outbound[http::header::AUTHORIZATION].is_sensitive());
        inbound.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Basic Zm9v"),
        );
        assert!(forward_bearer(&inbound, &mut outbound).is_err());
    }
}
