//! The crate's one error type and its mapping onto the platform's error vocabulary.
//!
//! Every refusal has its own variant so logs and tests can tell them apart; callers see the
//! shared [`ErrorCode`] (`unauthenticated` or `permission_denied`) plus a stable `reason` in the
//! error details. This module must not decide anything; it only names outcomes.

use axum::response::{IntoResponse, Response};
use liquid_kit::ApiError;
use liquid_kit::error::{ErrorCode, HasErrorCode};

/// Why a caller was refused, or why key material could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No bearer token was sent.
    #[error("missing bearer token; send `authorization: Bearer <jwt>` (`liquid token` mints one)")]
    MissingToken,
    /// The token is not a well-formed compact JWT or its claims have the wrong shape.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The header says `alg: none`: an unsigned token.
    #[error("unsigned tokens (alg none) are refused")]
    AlgorithmNone,
    /// The header names an algorithm no configured key accepts.
    #[error("token algorithm {alg} is not accepted by this service")]
    AlgorithmNotAllowed {
        /// The algorithm from the token header.
        alg: String,
    },
    /// The key the header names signs with a different algorithm than the header claims.
    #[error("token algorithm {alg} is not allowed for key `{kid}`")]
    AlgorithmMismatch {
        /// The algorithm from the token header.
        alg: String,
        /// The key the header names.
        kid: String,
    },
    /// The header's `kid` matches no configured key (after a refresh where one is allowed).
    #[error("token key id `{kid}` is unknown")]
    UnknownKey {
        /// The key id from the token header.
        kid: String,
    },
    /// The header has no `kid` and several keys accept its algorithm.
    #[error("token has no key id (kid) and several keys could have signed it")]
    MissingKeyId,
    /// The signature does not verify with the selected key.
    #[error("token signature is not valid")]
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("token expired; mint a new one")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token is not valid yet (nbf is in the future)")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("token issuer is not accepted")]
    WrongIssuer,
    /// `aud` names none of the configured audiences.
    #[error("token audience is not accepted")]
    WrongAudience,
    /// A claim every token must carry is absent or empty.
    #[error("token has no `{0}` claim")]
    MissingClaim(String),
    /// The caller is verified but lacks a scope.
    #[error("missing scope `{scope}`")]
    MissingScope {
        /// The scope the operation needs.
        scope: String,
    },
    /// Key material could not be read or parsed.
    #[error("key {path}: {reason}")]
    Key {
        /// The file (or `<generated>`/`<memory>`).
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// No key source is configured while authentication is required.
    #[error(
        "no verification key configured; set auth.jwks_url, auth.jwks_file or auth.public_key_pem_file"
    )]
    NoKeySource,
    /// A JWKS document could not be fetched or parsed.
    #[error("jwks {location}: {reason}")]
    Jwks {
        /// The URL or file.
        location: String,
        /// What went wrong.
        reason: String,
    },
    /// A token could not be signed.
    #[error("cannot sign token: {0}")]
    Signing(String),
    /// A scope string does not follow `namespace:name` / `namespace:*`.
    #[error("invalid scope `{0}`; expected `namespace:name` or `namespace:*`")]
    InvalidScope(String),
}

impl AuthError {
    /// A stable, machine-matchable reason that refines the error code (goes into the error
    /// details as `reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::Malformed(_) => "malformed_token",
            AuthError::AlgorithmNone => "alg_none",
            AuthError::AlgorithmNotAllowed { .. } => "algorithm_not_allowed",
            AuthError::AlgorithmMismatch { .. } => "algorithm_not_allowed_for_key",
            AuthError::UnknownKey { .. } => "unknown_key",
            AuthError::MissingKeyId => "missing_kid",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::MissingScope { .. } => "missing_scope",
            AuthError::Key { .. } => "bad_key",
            AuthError::NoKeySource => "no_key_source",
            AuthError::Jwks { .. } => "jwks_unavailable",
            AuthError::Signing(_) => "signing_failed",
            AuthError::InvalidScope(_) => "invalid_scope",
        }
    }

    /// The error as it leaves a service: code, message and `{"reason", "scope"?}` details.
    pub fn to_api_error(&self) -> ApiError {
        let mut details = serde_json::json!({ "reason": self.reason() });
        if let AuthError::MissingScope { scope } = self {
            details["scope"] = serde_json::Value::String(scope.clone());
        }
        ApiError::from_error(self).with_details(details)
    }

    /// The error as a gRPC status (code plus `x-liquid-error-code` metadata).
    pub fn to_status(&self) -> tonic::Status {
        self.to_api_error().into_status()
    }
}

impl HasErrorCode for AuthError {
    fn error_code(&self) -> ErrorCode {
        match self {
            AuthError::MissingScope { .. } => ErrorCode::PermissionDenied,
            AuthError::Key { .. } | AuthError::NoKeySource => ErrorCode::InvalidConfig,
            AuthError::Jwks { .. } => ErrorCode::Unavailable,
            AuthError::Signing(_) => ErrorCode::Internal,
            AuthError::InvalidScope(_) => ErrorCode::InvalidArgument,
            _ => ErrorCode::Unauthenticated,
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        error.to_api_error()
    }
}

impl From<AuthError> for tonic::Status {
    fn from(error: AuthError) -> Self {
        error.to_status()
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        crate::layer::refusal_response(&self, false).map(axum::body::Body::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_unauthenticated_and_a_missing_scope_is_permission_denied() {
        for e in [
            AuthError::MissingToken,
            AuthError::AlgorithmNone,
            AuthError::BadSignature,
            AuthError::Expired,
            AuthError::NotYetValid,
            AuthError::WrongIssuer,
            AuthError::WrongAudience,
            AuthError::MissingKeyId,
            AuthError::UnknownKey { kid: "k".into() },
        ] {
            assert_eq!(e.error_code(), ErrorCode::Unauthenticated, "{e}");
        }
        let e = AuthError::MissingScope {
            scope: "cowork:write".into(),
        };
        assert_eq!(e.error_code(), ErrorCode::PermissionDenied);
        let api = e.to_api_error();
        assert!(api.message.contains("cowork:write"), "{}", api.message);
        let details = api.details.unwrap_or_default();
        assert_eq!(details["scope"], "cowork:write");
        assert_eq!(details["reason"], "missing_scope");
    }

    #[test]
    fn grpc_status_carries_code_and_stable_string() {
        let status = AuthError::Expired.to_status();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            status
                .metadata()
                .get(liquid_kit::error::GRPC_ERROR_CODE_KEY)
                .and_then(|v| v.to_str().ok()),
            Some("unauthenticated")
        );
    }
}
