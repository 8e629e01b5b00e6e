//! axum extractors for the identity the [`crate::AuthLayer`] verified.
//!
//! [`Authenticated`] hands a handler the caller's [`Claims`] and answers 401 with the platform
//! envelope when there are none (the layer did not run, or auth is optional and no token came);
//! `Option<Authenticated>` accepts anonymous callers. [`BearerToken`] gives the raw token for
//! forwarding. Scope checks are [`Claims::require`] in a handler or [`crate::RequireScope`] on a
//! route. This module reads request extensions only; it never verifies.

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use http::request::Parts;

use crate::{AuthError, BearerToken, Claims};

/// The verified caller. Rejection: 401 `unauthenticated`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated(pub Claims);

impl Authenticated {
    /// The claims when they hold `scope`, else a 403 `permission_denied` naming it.
    pub fn require(&self, scope: &str) -> Result<&Claims, AuthError> {
        self.0.require(scope)?;
        Ok(&self.0)
    }
}

impl std::ops::Deref for Authenticated {
    type Target = Claims;

    fn deref(&self) -> &Claims {
        &self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Claims>()
            .cloned()
            .map(Authenticated)
            .ok_or(AuthError::MissingToken)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Authenticated {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Claims>().cloned().map(Authenticated))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for BearerToken {
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<BearerToken>()
            .cloned()
            .ok_or(AuthError::MissingToken)
    }
}
