//! The container pool's errors, each mapped to the platform's [`ErrorCode`].
//!
//! Messages are lowercase, name the value at fault and say what to do where they can. Docker's
//! own errors are kept as text (`docker: ...`) and count as `unavailable`: the engine, not the
//! caller, failed.

use liquid_kit::{ApiError, ErrorCode, HasErrorCode};

/// Everything that can go wrong in the pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// A request value was wrong.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field at fault.
        field: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// No such template.
    #[error("no template `{0}`")]
    UnknownTemplate(String),
    /// No such claim for this tenant (or it was released).
    #[error("no claim `{0}` for this tenant; it may have been released")]
    UnknownClaim(String),
    /// The caller may not use this secret with this template.
    #[error("template `{template}` does not allow secret `{secret}`")]
    SecretNotAllowed {
        /// Template name.
        template: String,
        /// Secret name.
        secret: String,
    },
    /// No `[secrets.refs]` entry of that name.
    #[error("no secret named `{0}` is configured")]
    UnknownSecret(String),
    /// A secret backend failed or the secret is missing there.
    #[error("secret `{name}`: {reason}")]
    Secret {
        /// Secret name.
        name: String,
        /// What the backend said (never the value).
        reason: String,
    },
    /// The pool stayed exhausted for the whole wait.
    #[error("no container of template `{template}` became free within {waited_ms} ms")]
    Exhausted {
        /// Template name.
        template: String,
        /// How long the caller waited.
        waited_ms: u64,
    },
    /// A container engine call failed.
    #[error("docker host `{host}`: {reason}")]
    Docker {
        /// Host name.
        host: String,
        /// Engine error text.
        reason: String,
    },
    /// No runtime can take new containers (every host disabled or unhealthy).
    #[error("no container host can take new containers: {0}")]
    NoHost(String),
    /// A local (process runtime or image build) I/O failure.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A path does not exist in the container.
    #[error("no such file or directory: {0}")]
    PathNotFound(String),
    /// The claim's container died or was removed.
    #[error("the container of claim `{0}` is gone; release it and acquire another")]
    ContainerGone(String),
    /// The operation is not possible in this state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request collides with another one (an `Idempotency-Key` in use, say).
    #[error("{0}")]
    Conflict(String),
    /// The pool is shutting down.
    #[error("the container pool is shutting down")]
    ShuttingDown,
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] liquid_store::StoreError),
    /// A database query failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The bus failed.
    #[error("bus: {0}")]
    Bus(#[from] liquid_bus::BusError),
    /// Auth failure.
    #[error(transparent)]
    Auth(#[from] liquid_auth::AuthError),
}

impl PoolError {
    /// Shorthand for [`PoolError::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        PoolError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`PoolError::Io`].
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        PoolError::Io {
            context: context.into(),
            source,
        }
    }

    /// A Docker engine error on `host`.
    pub fn docker(host: &str, error: impl std::fmt::Display) -> Self {
        PoolError::Docker {
            host: host.to_owned(),
            reason: error.to_string(),
        }
    }
}

impl HasErrorCode for PoolError {
    fn error_code(&self) -> ErrorCode {
        match self {
            PoolError::InvalidArgument { .. } => ErrorCode::InvalidArgument,
            PoolError::UnknownTemplate(_)
            | PoolError::UnknownClaim(_)
            | PoolError::UnknownSecret(_)
            | PoolError::PathNotFound(_) => ErrorCode::NotFound,
            PoolError::SecretNotAllowed { .. } => ErrorCode::PermissionDenied,
            PoolError::Secret { .. } => ErrorCode::Unavailable,
            PoolError::Exhausted { .. } => ErrorCode::DeadlineExceeded,
            PoolError::Docker { .. } | PoolError::NoHost(_) => ErrorCode::Unavailable,
            PoolError::Io { .. } => ErrorCode::Internal,
            PoolError::ContainerGone(_) | PoolError::FailedPrecondition(_) => {
                ErrorCode::FailedPrecondition
            }
            PoolError::Conflict(_) => ErrorCode::Conflict,
            PoolError::ShuttingDown => ErrorCode::Unavailable,
            PoolError::Store(e) => e.error_code(),
            PoolError::Database(_) => ErrorCode::Unavailable,
            PoolError::Bus(e) => e.error_code(),
            PoolError::Auth(e) => e.error_code(),
        }
    }
}

impl From<PoolError> for ApiError {
    fn from(e: PoolError) -> Self {
        let api = ApiError::from_error(&e);
        match e {
            PoolError::Exhausted { waited_ms, .. } => {
                api.with_details(serde_json::json!({ "waited_ms": waited_ms }))
            }
            _ => api,
        }
    }
}

impl axum::response::IntoResponse for PoolError {
    fn into_response(self) -> axum::response::Response {
        ApiError::from(self).into_response()
    }
}

impl From<PoolError> for tonic::Status {
    fn from(e: PoolError) -> Self {
        ApiError::from(e).into_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_what_a_client_can_act_on() {
        assert_eq!(
            PoolError::UnknownClaim("x".into()).error_code(),
            ErrorCode::NotFound
        );
        assert_eq!(
            PoolError::Exhausted {
                template: "t".into(),
                waited_ms: 5
            }
            .error_code(),
            ErrorCode::DeadlineExceeded
        );
        let api = ApiError::from(PoolError::Exhausted {
            template: "t".into(),
            waited_ms: 5,
        });
        assert_eq!(api.details.unwrap()["waited_ms"], 5);
        assert_eq!(
            PoolError::docker("h", "boom").error_code(),
            ErrorCode::Unavailable
        );
    }
}
