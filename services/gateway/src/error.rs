//! The gateway's error type and its mapping onto the platform's error codes.

use axum::response::{IntoResponse, Response};
use liquid_kit::ApiError;
use liquid_kit::error::{ErrorCode, HasErrorCode};

/// What can go wrong in the gateway itself (upstream answers pass through unchanged).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A configuration value cannot be used.
    #[error("config key `{key}`: {reason}")]
    Config {
        /// The key.
        key: &'static str,
        /// Why.
        reason: String,
    },
    /// Redis for rate limits could not be reached at start-up.
    #[error("rate-limit redis at {url} is unreachable: {reason}")]
    RedisUnreachable {
        /// The URL with the password redacted.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The bus refused a subscription or publish.
    #[error("bus: {0}")]
    Bus(#[from] liquid_bus::BusError),
    /// A request was malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The operation is not available in this deployment.
    #[error("{0}")]
    Unavailable(String),
}

impl HasErrorCode for GatewayError {
    fn error_code(&self) -> ErrorCode {
        match self {
            GatewayError::Config { .. } => ErrorCode::InvalidConfig,
            GatewayError::RedisUnreachable { .. } => ErrorCode::Unavailable,
            GatewayError::Bus(e) => e.error_code(),
            GatewayError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            GatewayError::Unavailable(_) => ErrorCode::Unavailable,
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        ApiError::from_error(&self).into_response()
    }
}

/// What a client is told about a service that did not answer (REST proxy and GraphQL): its
/// name only, never its address, which goes to the log.
pub fn service_unavailable(service: &str) -> String {
    format!("the {service} service is unavailable; retry later")
}
