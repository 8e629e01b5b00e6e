//! The crate's error enum and its mapping to the platform's stable [`ErrorCode`]s.
//!
//! Upstream messages are kept where they help the caller (a rejected parameter, a missing
//! model) and dropped where they could echo credentials (authentication failures).

use std::time::Duration;

use liquid_kit::config::ConfigError;
use liquid_kit::{ErrorCode, HasErrorCode};

/// Everything that can go wrong asking a model.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The request is malformed (empty, dangling tool results, bad tool names...).
    #[error("invalid model request: {reason}")]
    InvalidRequest {
        /// What is wrong.
        reason: String,
    },
    /// No route in the configuration matches this model name.
    #[error("no provider is configured for model {model}; add a route in llm.routes")]
    UnknownModel {
        /// The requested model.
        model: String,
    },
    /// The provider's key is missing and offline fallback is disabled.
    #[error("provider {provider} has no api key and offline fallback is off")]
    NoApiKey {
        /// Provider name.
        provider: String,
    },
    /// The provider rejected the API key.
    #[error(
        "provider {provider} rejected the api key (http {status}); check llm.providers.{provider}.api_key"
    )]
    Unauthenticated {
        /// Provider name.
        provider: String,
        /// HTTP status it answered.
        status: u16,
    },
    /// The key is valid but not allowed to do this (region, model access).
    #[error("provider {provider} denied the request: {message}")]
    PermissionDenied {
        /// Provider name.
        provider: String,
        /// The provider's explanation.
        message: String,
    },
    /// Rate limited, and retries did not get through (or the advertised wait was too long).
    #[error("provider {provider} is rate limiting after {attempts} attempt(s): {message}")]
    RateLimited {
        /// Provider name.
        provider: String,
        /// Attempts made.
        attempts: u32,
        /// The wait the provider asked for, if it said.
        retry_after: Option<Duration>,
        /// The provider's explanation.
        message: String,
    },
    /// The account's quota or credit is exhausted; retrying does not help.
    #[error("provider {provider} quota is exhausted: {message}")]
    QuotaExhausted {
        /// Provider name.
        provider: String,
        /// The provider's explanation.
        message: String,
    },
    /// The provider failed (5xx, overloaded, connection refused) on every attempt.
    #[error("provider {provider} is unavailable after {attempts} attempt(s): {reason}")]
    Unavailable {
        /// Provider name.
        provider: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        reason: String,
    },
    /// The request (or a stream that stopped sending) ran out of time.
    #[error("provider {provider} did not answer within {timeout:?}")]
    Timeout {
        /// Provider name.
        provider: String,
        /// The limit that passed.
        timeout: Duration,
    },
    /// The provider refused the request as invalid (4xx other than the above).
    #[error("provider {provider} rejected the request (http {status}): {message}")]
    Rejected {
        /// Provider name.
        provider: String,
        /// HTTP status.
        status: u16,
        /// The provider's explanation.
        message: String,
    },
    /// The provider does not know the model (or the endpoint).
    #[error("provider {provider} does not serve the requested model: {message}")]
    ModelNotFound {
        /// Provider name.
        provider: String,
        /// The provider's explanation.
        message: String,
    },
    /// The provider reported an error in the middle of a stream.
    #[error("provider {provider} failed mid-stream ({kind}): {message}")]
    StreamError {
        /// Provider name.
        provider: String,
        /// Vendor error type (`overloaded_error`, ...).
        kind: String,
        /// The provider's explanation.
        message: String,
        /// The code this maps to.
        code: ErrorCode,
    },
    /// The provider answered something that does not follow its own protocol.
    #[error("provider {provider} sent an invalid response: {reason}")]
    Protocol {
        /// Provider name.
        provider: String,
        /// What was wrong.
        reason: String,
    },
    /// No session with that key exists (expired, destroyed or never created).
    #[error("model session {session} does not exist or has expired")]
    SessionNotFound {
        /// Session id.
        session: String,
    },
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl LlmError {
    /// True for failures worth another attempt (rate limits and transient unavailability).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            LlmError::RateLimited { .. } | LlmError::Unavailable { .. }
        )
    }

    pub(crate) fn protocol(provider: &str, reason: impl Into<String>) -> Self {
        LlmError::Protocol {
            provider: provider.to_owned(),
            reason: reason.into(),
        }
    }
}

impl HasErrorCode for LlmError {
    fn error_code(&self) -> ErrorCode {
        match self {
            LlmError::InvalidRequest { .. }
            | LlmError::UnknownModel { .. }
            | LlmError::Rejected { .. } => ErrorCode::InvalidArgument,
            LlmError::NoApiKey { .. } | LlmError::QuotaExhausted { .. } => {
                ErrorCode::FailedPrecondition
            }
            LlmError::Unauthenticated { .. } => ErrorCode::Unauthenticated,
            LlmError::PermissionDenied { .. } => ErrorCode::PermissionDenied,
            LlmError::RateLimited { .. } => ErrorCode::RateLimited,
            LlmError::Unavailable { .. } | LlmError::Protocol { .. } => ErrorCode::Unavailable,
            LlmError::Timeout { .. } => ErrorCode::DeadlineExceeded,
            LlmError::ModelNotFound { .. } | LlmError::SessionNotFound { .. } => {
                ErrorCode::NotFound
            }
            LlmError::StreamError { code, .. } => *code,
            LlmError::Config(e) => e.error_code(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_stable_ones_callers_match() {
        let e = LlmError::Unauthenticated {
            provider: "openai".into(),
            status: 401,
        };
        assert_eq!(e.error_code().as_str(), "unauthenticated");
        let e = LlmError::RateLimited {
            provider: "gemini".into(),
            attempts: 3,
            retry_after: None,
            message: String::new(),
        };
        assert_eq!(e.error_code().as_str(), "rate_limited");
        assert!(e.is_retryable());
        let e = LlmError::Unavailable {
            provider: "anthropic".into(),
            attempts: 3,
            reason: "http 529".into(),
        };
        assert_eq!(e.error_code().as_str(), "unavailable");
        let e = LlmError::InvalidRequest { reason: "x".into() };
        assert_eq!(e.error_code().as_str(), "invalid_argument");
        assert!(!e.is_retryable());
    }
}
