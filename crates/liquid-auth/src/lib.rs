//! Identity for every Liquid service: JWT verification, scopes, the auth layer for axum and
//! tonic, and token minting for the CLI, the embedded mode, service-to-service calls and tests.
//!
//! The gateway verifies the caller's token and forwards it; every service verifies it again with
//! the same keys ([`Verifier`], from `[auth]` = [`AuthConfig`]) and authorises by scope
//! ([`Claims::require`], [`RequireScope`]). A token verified once is remembered for a short
//! while (`auth.cache_ttl_secs`, never past `exp`, forgotten when the keys change). Keys come
//! from a JWKS file or URL (RS256, ES256, EdDSA; reloaded periodically and on an unknown
//! `kid`), a PEM public key, or — for development only — an HS256 secret. Verification is
//! jsonwebtoken with the aws-lc-rs backend.
//! [`AuthLayer`] is one tower layer for both axum routers and tonic servers; it answers refusals
//! in the platform's error shape. [`Claims::tenant_id`] is the tenant that scopes data.
//!
//! This crate decides who the caller is and whether a scope covers another; it must not decide
//! what a scope allows, which is each service's business.

mod claims;
mod config;
mod error;
mod extract;
mod grpc;
mod keys;
mod layer;
mod outbound;
mod scope;
mod signing;
mod verifier;

pub use claims::{Claims, PrincipalKind};
pub use config::{
    AuthConfig, MAX_CACHE_TTL_SECS, MAX_LEEWAY_SECS, MIN_HS256_SECRET_BYTES, PublicKeyAlgorithm,
};
pub use error::AuthError;
pub use extract::Authenticated;
pub use grpc::{AuthInterceptor, bearer_from_request, claims_from_request, require_scope};
pub use layer::{
    AuthBody, AuthLayer, AuthService, DEFAULT_PUBLIC_PATHS, PublicPaths, RequireScope,
    RequireScopeService, bearer_from_headers, is_grpc,
};
pub use outbound::{BearerToken, ServiceTokenSource, forward_bearer};
pub use scope::{Scope, ScopeAction, any_grants, scope_grants, scopes};
pub use signing::{SigningKey, TokenRequest, unix_now};
pub use verifier::{MAX_TOKEN_BYTES, Verifier};

/// The JWKS document types [`SigningKey::jwks`] returns (re-exported from jsonwebtoken).
pub mod jwk {
    pub use jsonwebtoken::jwk::{Jwk, JwkSet};
}
