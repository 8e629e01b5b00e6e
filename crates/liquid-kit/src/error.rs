//! The platform's one error vocabulary.
//!
//! Every crate has its own `thiserror` enum; each of those implements [`HasErrorCode`] so that the
//! edges (axum handlers, tonic services, the CLI) can turn any failure into the same wire shape:
//! HTTP `{"error":{"code","message","details"}}`, a gRPC status with the stable code in metadata.
//! This module must not know about any particular crate's errors.

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// gRPC metadata key that carries [`ErrorCode::as_str`] next to the status code.
pub const GRPC_ERROR_CODE_KEY: &str = "x-liquid-error-code";

/// A stable, client-matchable error code shared by every service and binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request was malformed or a value was out of range.
    InvalidArgument,
    /// No credentials, or credentials that failed verification.
    Unauthenticated,
    /// Verified caller without the scope the operation needs.
    PermissionDenied,
    /// The addressed entity does not exist (or is not visible to this tenant).
    NotFound,
    /// An entity with the same identity already exists.
    AlreadyExists,
    /// The entity changed underneath the caller (optimistic concurrency, file conflicts).
    Conflict,
    /// The system is not in a state that allows the operation.
    FailedPrecondition,
    /// A rate limit was hit; retry after the advertised delay.
    RateLimited,
    /// The request body exceeded a configured limit.
    PayloadTooLarge,
    /// The request body had a content type this endpoint does not accept.
    UnsupportedMediaType,
    /// A dependency (database, bus, cache, another service) did not answer.
    Unavailable,
    /// The operation did not finish within its deadline.
    DeadlineExceeded,
    /// The operation was cancelled by the caller or by shutdown.
    Cancelled,
    /// Configuration was missing or invalid.
    InvalidConfig,
    /// A bug or an unexpected failure; details are in the logs, not in the response.
    Internal,
}

impl ErrorCode {
    /// Every code, for documentation and exhaustive tests.
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::InvalidArgument,
        ErrorCode::Unauthenticated,
        ErrorCode::PermissionDenied,
        ErrorCode::NotFound,
        ErrorCode::AlreadyExists,
        ErrorCode::Conflict,
        ErrorCode::FailedPrecondition,
        ErrorCode::RateLimited,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::Unavailable,
        ErrorCode::DeadlineExceeded,
        ErrorCode::Cancelled,
        ErrorCode::InvalidConfig,
        ErrorCode::Internal,
    ];

    /// The stable string clients match on (also the serde form).
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::Conflict => "conflict",
            ErrorCode::FailedPrecondition => "failed_precondition",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::InvalidConfig => "invalid_config",
            ErrorCode::Internal => "internal",
        }
    }

    /// Parses the stable string back into a code.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The HTTP status this code maps to.
    pub const fn http_status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::AlreadyExists | ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            // 499 is the de-facto "client closed request" status (nginx); there is no standard one.
            ErrorCode::Cancelled => match StatusCode::from_u16(499) {
                Ok(s) => s,
                Err(_) => StatusCode::BAD_REQUEST,
            },
            ErrorCode::InvalidConfig | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status code this code maps to.
    pub const fn grpc_code(self) -> tonic::Code {
        match self {
            ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorCode::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::AlreadyExists => tonic::Code::AlreadyExists,
            ErrorCode::Conflict => tonic::Code::Aborted,
            ErrorCode::FailedPrecondition => tonic::Code::FailedPrecondition,
            ErrorCode::RateLimited => tonic::Code::ResourceExhausted,
            ErrorCode::PayloadTooLarge => tonic::Code::ResourceExhausted,
            ErrorCode::UnsupportedMediaType => tonic::Code::InvalidArgument,
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            ErrorCode::Cancelled => tonic::Code::Cancelled,
            ErrorCode::InvalidConfig | ErrorCode::Internal => tonic::Code::Internal,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Implemented by every crate's error enum so the edges can map it without knowing the crate.
pub trait HasErrorCode {
    /// The stable code for this failure.
    fn error_code(&self) -> ErrorCode;
}

/// An error as it leaves a service: a code, a message for people and optional structured details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable message; says what to do next where it can.
    pub message: String,
    /// Structured details (field names, limits, retry hints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// The JSON envelope `{"error": {...}}` used on every REST error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    /// The error itself.
    pub error: ApiError,
}

impl ApiError {
    /// A new error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            details: None,
        }
    }

    /// Attaches structured details.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Builds an API error from any crate error. Internal errors keep their text out of the
    /// response (it is logged instead) so that nothing about the system leaks to callers.
    pub fn from_error<E>(err: &E) -> Self
    where
        E: HasErrorCode + std::fmt::Display,
    {
        let code = err.error_code();
        if code == ErrorCode::Internal {
            tracing::error!(error = %err, "internal error");
            ApiError::new(
                code,
                "internal error; the request id in the logs has the details",
            )
        } else {
            ApiError::new(code, err.to_string())
        }
    }

    /// Converts into a gRPC status carrying the stable code in metadata.
    pub fn into_status(self) -> tonic::Status {
        let mut status = tonic::Status::new(self.code.grpc_code(), self.message);
        if let Ok(v) = tonic::metadata::MetadataValue::try_from(self.code.as_str()) {
            status.metadata_mut().insert(GRPC_ERROR_CODE_KEY, v);
        }
        status
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl HasErrorCode for ApiError {
    fn error_code(&self) -> ErrorCode {
        self.code
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.code.http_status();
        let retry_after = self
            .details
            .as_ref()
            .and_then(|d| d.get("retry_after_seconds"))
            .and_then(serde_json::Value::as_u64);
        let mut response = (status, Json(ErrorEnvelope { error: self })).into_response();
        if let Some(secs) = retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
        response
    }
}

impl From<ApiError> for tonic::Status {
    fn from(err: ApiError) -> Self {
        err.into_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_string() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
        assert_eq!(ErrorCode::parse("nope"), None);
    }

    #[test]
    fn codes_map_to_expected_http_and_grpc_status() {
        assert_eq!(
            ErrorCode::Unauthenticated.http_status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            ErrorCode::PermissionDenied.grpc_code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            ErrorCode::RateLimited.http_status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(ErrorCode::Cancelled.http_status().as_u16(), 499);
        assert_eq!(ErrorCode::Conflict.grpc_code(), tonic::Code::Aborted);
    }

    #[tokio::test]
    async fn api_error_renders_the_envelope_and_retry_after() {
        let err = ApiError::new(ErrorCode::RateLimited, "slow down")
            .with_details(serde_json::json!({"retry_after_seconds": 7}));
        let response = err.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "7");
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "rate_limited");
        assert_eq!(v["error"]["message"], "slow down");
        assert_eq!(v["error"]["details"]["retry_after_seconds"], 7);
    }

    #[test]
    fn grpc_status_carries_the_stable_code() {
        let status = ApiError::new(ErrorCode::NotFound, "no such task").into_status();
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(
            status.metadata().get(GRPC_ERROR_CODE_KEY).unwrap(),
            "not_found"
        );
    }
}
