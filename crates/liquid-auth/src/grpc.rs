//! tonic helpers for the identity the [`crate::AuthLayer`] verified, and an interceptor for
//! servers that cannot take a tower layer.
//!
//! tonic copies HTTP request extensions into `tonic::Request`, so a handler behind the layer
//! reads the caller with [`claims_from_request`]. [`AuthInterceptor`] verifies on its own for
//! tonic stacks without the layer; being synchronous, it uses the keys in hand and cannot reload
//! the JWKS for an unknown `kid` (the periodic reload still runs), so prefer the layer.

use std::sync::Arc;

use crate::layer::bearer_from_value;
use crate::{AuthError, BearerToken, Claims, Verifier};

/// The verified caller of a gRPC request, or `Unauthenticated`.
pub fn claims_from_request<T>(request: &tonic::Request<T>) -> Result<&Claims, tonic::Status> {
    request
        .extensions()
        .get::<Claims>()
        .ok_or_else(|| AuthError::MissingToken.to_status())
}

/// The verified caller when it holds `scope`; `Unauthenticated` or `PermissionDenied` otherwise.
pub fn require_scope<'a, T>(
    request: &'a tonic::Request<T>,
    scope: &str,
) -> Result<&'a Claims, tonic::Status> {
    let claims = claims_from_request(request)?;
    claims.require(scope).map_err(|e| e.to_status())?;
    Ok(claims)
}

/// The caller's raw bearer token (to forward on outbound calls), if the auth layer saw one.
pub fn bearer_from_request<T>(request: &tonic::Request<T>) -> Option<&BearerToken> {
    request.extensions().get::<BearerToken>()
}

/// A tonic server interceptor that verifies the `authorization` metadata and inserts the
/// [`Claims`] into the request extensions.
#[derive(Debug, Clone)]
pub struct AuthInterceptor {
    verifier: Arc<Verifier>,
}

impl AuthInterceptor {
    /// An interceptor verifying with `verifier` (honouring its `required` setting).
    pub fn new(verifier: Arc<Verifier>) -> Self {
        AuthInterceptor { verifier }
    }
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let token = match request.metadata().get("authorization") {
            None if !self.verifier.required() => return Ok(request),
            None => return Err(AuthError::MissingToken.to_status()),
            Some(value) => {
                let text = value.to_str().map_err(|_| {
                    AuthError::Malformed("authorization metadata is not visible ASCII".into())
                        .to_status()
                })?;
                bearer_from_value(text)
                    .map_err(|e| e.to_status())?
                    .to_owned()
            }
        };
        let claims = self.verifier.verify(&token).map_err(|e| e.to_status())?;
        request.extensions_mut().insert(claims);
        request.extensions_mut().insert(BearerToken::new(token));
        Ok(request)
    }
}
