//! The cowork service's errors, each mapped to the platform's [`ErrorCode`] and rendered as
//! `{"error":{"code","message","details"}}` (conflicts carry the list of files, denials the
//! stage that denied).

use axum::response::{IntoResponse, Response};
use liquid_kit::{ApiError, ErrorCode, HasErrorCode};
use serde_json::json;

use crate::domain::permission::Stage;

/// Everything that can go wrong in cowork.
#[derive(Debug, thiserror::Error)]
pub enum CoworkError {
    /// A request value was wrong.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field at fault.
        field: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// No such sandbox for this tenant.
    #[error("no sandbox `{0}` for this tenant")]
    SandboxNotFound(String),
    /// No such file in the sandbox.
    #[error("no such file in the sandbox: {0}")]
    FileNotFound(String),
    /// The permission pipeline refused an agent file operation.
    #[error("{stage} denied {op} of `{path}`: {reason}", stage = .stage.as_str())]
    Denied {
        /// The stage that refused.
        stage: Stage,
        /// The operation.
        op: String,
        /// The path as requested.
        path: String,
        /// Why.
        reason: String,
    },
    /// A request outside what the caller may touch (a source outside its workspaces).
    #[error("{0}")]
    Forbidden(String),
    /// Files changed underneath the sandbox: nothing was written.
    #[error("{message}")]
    Conflict {
        /// What happened.
        message: String,
        /// The files at fault, relative to the sandbox.
        files: Vec<String>,
    },
    /// The sandbox's state does not allow the operation.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A limit was exceeded.
    #[error("{0}")]
    TooLarge(String),
    /// A filesystem operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Stored data could not be read back.
    #[error("stored data: {0}")]
    Corrupt(String),
    /// Auth failure (missing scope).
    #[error(transparent)]
    Auth(#[from] liquid_auth::AuthError),
    /// The service is shutting down.
    #[error("the cowork service is shutting down")]
    ShuttingDown,
    /// No such session (or agent, step, artifact) for this tenant.
    #[error("no {what} `{id}` for this tenant")]
    NotFound {
        /// `session`, `agent`, ...
        what: &'static str,
        /// The id asked for.
        id: String,
    },
    /// A plan failed validation.
    #[error("the plan is not valid: {}", .issues.iter().map(|i| format!("{}: {}", i.field, i.reason)).collect::<Vec<_>>().join("; "))]
    InvalidPlan {
        /// Every problem, with its field.
        issues: Vec<crate::domain::plan::PlanIssue>,
    },
    /// A directive file failed verification (start-up stops, naming the file).
    #[error("directive {file}: {reason}")]
    Directive {
        /// The file, relative to the directives directory.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// A model call failed.
    #[error("model: {0}")]
    Model(#[from] liquid_llm::LlmError),
    /// A call to container-pool failed.
    #[error("container-pool: {message}")]
    Pool {
        /// The platform code the pool answered with.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// The work was cancelled (session cancelled, agent terminated).
    #[error("{0}")]
    Cancelled(String),
    /// The executor cannot reach container-pool (no service key, bad peer address).
    #[error("{0}")]
    ExecutorUnavailable(String),
}

impl CoworkError {
    /// Shorthand for [`CoworkError::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        CoworkError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`CoworkError::NotFound`].
    pub fn not_found(what: &'static str, id: impl std::fmt::Display) -> Self {
        CoworkError::NotFound {
            what,
            id: id.to_string(),
        }
    }

    /// Shorthand for [`CoworkError::Io`].
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        CoworkError::Io {
            context: context.into(),
            source,
        }
    }
}

impl HasErrorCode for CoworkError {
    fn error_code(&self) -> ErrorCode {
        match self {
            CoworkError::InvalidArgument { .. } => ErrorCode::InvalidArgument,
            CoworkError::SandboxNotFound(_) | CoworkError::FileNotFound(_) => ErrorCode::NotFound,
            CoworkError::Denied { .. } | CoworkError::Forbidden(_) => ErrorCode::PermissionDenied,
            CoworkError::Conflict { .. } => ErrorCode::Conflict,
            CoworkError::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            CoworkError::TooLarge(_) => ErrorCode::PayloadTooLarge,
            CoworkError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => ErrorCode::NotFound,
                _ => ErrorCode::Internal,
            },
            CoworkError::Database(_) => ErrorCode::Unavailable,
            CoworkError::Corrupt(_) => ErrorCode::Internal,
            CoworkError::Auth(e) => e.error_code(),
            CoworkError::ShuttingDown => ErrorCode::Unavailable,
            CoworkError::NotFound { .. } => ErrorCode::NotFound,
            CoworkError::InvalidPlan { .. } => ErrorCode::InvalidArgument,
            CoworkError::Directive { .. } => ErrorCode::InvalidConfig,
            CoworkError::Model(e) => e.error_code(),
            CoworkError::Pool { code, .. } => *code,
            CoworkError::ExecutorUnavailable(_) => ErrorCode::Unavailable,
            CoworkError::Cancelled(_) => ErrorCode::Cancelled,
        }
    }
}

impl From<&CoworkError> for ApiError {
    fn from(e: &CoworkError) -> ApiError {
        let base = ApiError::from_error(e);
        match e {
            CoworkError::Conflict { files, .. } => base.with_details(json!({ "files": files })),
            CoworkError::Denied {
                stage, op, path, ..
            } => base.with_details(json!({
                "stage": stage.as_str(), "operation": op, "path": path,
            })),
            CoworkError::InvalidArgument { field, .. } => {
                base.with_details(json!({ "field": field }))
            }
            CoworkError::InvalidPlan { issues } => base.with_details(json!({ "issues": issues })),
            CoworkError::Directive { file, .. } => base.with_details(json!({ "file": file })),
            _ => base,
        }
    }
}

impl IntoResponse for CoworkError {
    fn into_response(self) -> Response {
        if let CoworkError::Auth(e) = self {
            return e.into_response();
        }
        ApiError::from(&self).into_response()
    }
}
