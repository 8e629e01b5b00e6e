//! The A2A error model (spec §3.3.2, §5.4) and its three wire forms.
//!
//! One [`A2aError`] is raised by handlers and turned into a JSON-RPC error object (§9.5), an HTTP
//! `google.rpc.Status` JSON body (§11.6) or a gRPC status with `google.rpc.Status` details
//! (§10.6); every A2A-specific error carries a `google.rpc.ErrorInfo` with the reason and domain
//! `a2a-protocol.org`. The HTTP and gRPC codes differ between spec 1.0.0 and 1.0.1, so the table
//! is a [`ErrorTable`] value chosen by configuration. Clients turn each wire form back into the
//! same variant.

use std::collections::BTreeMap;

use http::StatusCode;
use liquid_kit::error::{ErrorCode, HasErrorCode};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// `google.rpc.ErrorInfo` domain for A2A errors.
pub const ERROR_DOMAIN: &str = "a2a-protocol.org";
/// Type URL of `google.rpc.ErrorInfo` in `details` arrays.
pub const ERROR_INFO_TYPE: &str = "type.googleapis.com/google.rpc.ErrorInfo";

/// Which edition of the spec's error mapping table (§5.4) to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ErrorTable {
    /// A2A 1.0.0: 409 for TaskNotCancelable, 415 for ContentTypeNotSupported, 502 for
    /// InvalidAgentResponse, gRPC UNIMPLEMENTED for the unsupported-feature errors.
    #[serde(rename = "1.0.0")]
    V1_0_0,
    /// A2A 1.0.1: 400 for every precondition error, FAILED_PRECONDITION in gRPC.
    #[default]
    #[serde(rename = "1.0.1")]
    V1_0_1,
}

/// Every error an A2A operation can end with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum A2aError {
    /// -32001: the task does not exist or is not visible to the caller.
    #[error("task not found")]
    TaskNotFound {
        /// The task that was asked for.
        task_id: String,
    },
    /// -32002: the task is in a state that cannot be canceled.
    #[error("task cannot be canceled in its current state")]
    TaskNotCancelable {
        /// The task.
        task_id: String,
    },
    /// -32003: the agent does not support push notifications.
    #[error("push notifications are not supported")]
    PushNotificationNotSupported,
    /// -32004: the operation or a feature it needs is not supported.
    #[error("unsupported operation: {reason}")]
    UnsupportedOperation {
        /// Which operation or condition.
        reason: String,
    },
    /// -32005: a media type in the request is not supported.
    #[error("content type not supported: {media_type}")]
    ContentTypeNotSupported {
        /// The offending media type.
        media_type: String,
    },
    /// -32006: the agent produced a response that does not conform to the specification.
    #[error("invalid agent response: {reason}")]
    InvalidAgentResponse {
        /// What was wrong.
        reason: String,
    },
    /// -32007: the agent declares an extended card but has none configured.
    #[error("extended agent card is not configured")]
    ExtendedAgentCardNotConfigured,
    /// -32008: a required extension was not declared by the client.
    #[error("extension support required: {uri}")]
    ExtensionSupportRequired {
        /// URI of the required extension.
        uri: String,
    },
    /// -32009: the requested protocol version is not supported.
    #[error("protocol version not supported: {version}")]
    VersionNotSupported {
        /// The version the client asked for.
        version: String,
    },
    /// -32700: the body is not valid JSON.
    #[error("invalid JSON payload: {reason}")]
    ParseError {
        /// Parser message.
        reason: String,
    },
    /// -32600: the JSON is not a valid JSON-RPC request.
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// What was wrong.
        reason: String,
    },
    /// -32601: no such method.
    #[error("method not found: {method}")]
    MethodNotFound {
        /// The method asked for.
        method: String,
    },
    /// -32602: the parameters are invalid.
    #[error("invalid parameters: {reason}")]
    InvalidParams {
        /// What was wrong.
        reason: String,
    },
    /// -32603: an internal failure; details are in the server's logs.
    #[error("internal error")]
    Internal {
        /// Server-side description, never sent to the client.
        reason: String,
    },
    /// The caller is not authenticated (transport-level; HTTP 401, gRPC UNAUTHENTICATED).
    #[error("unauthenticated: {reason}")]
    Unauthenticated {
        /// Why.
        reason: String,
    },
    /// The caller may not do this (transport-level; HTTP 403, gRPC PERMISSION_DENIED).
    #[error("permission denied: {reason}")]
    PermissionDenied {
        /// Why.
        reason: String,
    },
}

/// Kind of an [`A2aError`], without its fields: what clients and tests match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum A2aErrorKind {
    /// See [`A2aError::TaskNotFound`].
    TaskNotFound,
    /// See [`A2aError::TaskNotCancelable`].
    TaskNotCancelable,
    /// See [`A2aError::PushNotificationNotSupported`].
    PushNotificationNotSupported,
    /// See [`A2aError::UnsupportedOperation`].
    UnsupportedOperation,
    /// See [`A2aError::ContentTypeNotSupported`].
    ContentTypeNotSupported,
    /// See [`A2aError::InvalidAgentResponse`].
    InvalidAgentResponse,
    /// See [`A2aError::ExtendedAgentCardNotConfigured`].
    ExtendedAgentCardNotConfigured,
    /// See [`A2aError::ExtensionSupportRequired`].
    ExtensionSupportRequired,
    /// See [`A2aError::VersionNotSupported`].
    VersionNotSupported,
    /// See [`A2aError::ParseError`].
    ParseError,
    /// See [`A2aError::InvalidRequest`].
    InvalidRequest,
    /// See [`A2aError::MethodNotFound`].
    MethodNotFound,
    /// See [`A2aError::InvalidParams`].
    InvalidParams,
    /// See [`A2aError::Internal`].
    Internal,
    /// See [`A2aError::Unauthenticated`].
    Unauthenticated,
    /// See [`A2aError::PermissionDenied`].
    PermissionDenied,
}

impl A2aErrorKind {
    /// Every kind.
    pub const ALL: [A2aErrorKind; 16] = [
        A2aErrorKind::TaskNotFound,
        A2aErrorKind::TaskNotCancelable,
        A2aErrorKind::PushNotificationNotSupported,
        A2aErrorKind::UnsupportedOperation,
        A2aErrorKind::ContentTypeNotSupported,
        A2aErrorKind::InvalidAgentResponse,
        A2aErrorKind::ExtendedAgentCardNotConfigured,
        A2aErrorKind::ExtensionSupportRequired,
        A2aErrorKind::VersionNotSupported,
        A2aErrorKind::ParseError,
        A2aErrorKind::InvalidRequest,
        A2aErrorKind::MethodNotFound,
        A2aErrorKind::InvalidParams,
        A2aErrorKind::Internal,
        A2aErrorKind::Unauthenticated,
        A2aErrorKind::PermissionDenied,
    ];

    /// The JSON-RPC error code.
    pub const fn jsonrpc_code(self) -> i32 {
        match self {
            A2aErrorKind::TaskNotFound => -32001,
            A2aErrorKind::TaskNotCancelable => -32002,
            A2aErrorKind::PushNotificationNotSupported => -32003,
            A2aErrorKind::UnsupportedOperation => -32004,
            A2aErrorKind::ContentTypeNotSupported => -32005,
            A2aErrorKind::InvalidAgentResponse => -32006,
            A2aErrorKind::ExtendedAgentCardNotConfigured => -32007,
            A2aErrorKind::ExtensionSupportRequired => -32008,
            A2aErrorKind::VersionNotSupported => -32009,
            A2aErrorKind::ParseError => -32700,
            A2aErrorKind::InvalidRequest
            | A2aErrorKind::Unauthenticated
            | A2aErrorKind::PermissionDenied => -32600,
            A2aErrorKind::MethodNotFound => -32601,
            A2aErrorKind::InvalidParams => -32602,
            A2aErrorKind::Internal => -32603,
        }
    }

    /// The `google.rpc.ErrorInfo` reason: the error type in UPPER_SNAKE_CASE without `Error`.
    pub const fn reason(self) -> &'static str {
        match self {
            A2aErrorKind::TaskNotFound => "TASK_NOT_FOUND",
            A2aErrorKind::TaskNotCancelable => "TASK_NOT_CANCELABLE",
            A2aErrorKind::PushNotificationNotSupported => "PUSH_NOTIFICATION_NOT_SUPPORTED",
            A2aErrorKind::UnsupportedOperation => "UNSUPPORTED_OPERATION",
            A2aErrorKind::ContentTypeNotSupported => "CONTENT_TYPE_NOT_SUPPORTED",
            A2aErrorKind::InvalidAgentResponse => "INVALID_AGENT_RESPONSE",
            A2aErrorKind::ExtendedAgentCardNotConfigured => "EXTENDED_AGENT_CARD_NOT_CONFIGURED",
            A2aErrorKind::ExtensionSupportRequired => "EXTENSION_SUPPORT_REQUIRED",
            A2aErrorKind::VersionNotSupported => "VERSION_NOT_SUPPORTED",
            A2aErrorKind::ParseError => "JSON_PARSE",
            A2aErrorKind::InvalidRequest => "INVALID_REQUEST",
            A2aErrorKind::MethodNotFound => "METHOD_NOT_FOUND",
            A2aErrorKind::InvalidParams => "INVALID_PARAMS",
            A2aErrorKind::Internal => "INTERNAL",
            A2aErrorKind::Unauthenticated => "UNAUTHENTICATED",
            A2aErrorKind::PermissionDenied => "PERMISSION_DENIED",
        }
    }

    /// Whether the spec defines this error (as opposed to JSON-RPC or transport errors).
    pub const fn is_a2a_specific(self) -> bool {
        let code = self.jsonrpc_code();
        code <= -32001 && code >= -32099
    }

    /// The HTTP status under `table`.
    pub const fn http_status(self, table: ErrorTable) -> StatusCode {
        match (self, table) {
            (A2aErrorKind::TaskNotFound, _) => StatusCode::NOT_FOUND,
            (A2aErrorKind::TaskNotCancelable, ErrorTable::V1_0_0) => StatusCode::CONFLICT,
            (A2aErrorKind::ContentTypeNotSupported, ErrorTable::V1_0_0) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            (A2aErrorKind::InvalidAgentResponse, ErrorTable::V1_0_0) => StatusCode::BAD_GATEWAY,
            (A2aErrorKind::InvalidAgentResponse, ErrorTable::V1_0_1) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            (A2aErrorKind::MethodNotFound, _) => StatusCode::NOT_FOUND,
            (A2aErrorKind::Internal, _) => StatusCode::INTERNAL_SERVER_ERROR,
            (A2aErrorKind::Unauthenticated, _) => StatusCode::UNAUTHORIZED,
            (A2aErrorKind::PermissionDenied, _) => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The gRPC status code under `table`.
    pub const fn grpc_code(self, table: ErrorTable) -> tonic::Code {
        match (self, table) {
            (A2aErrorKind::TaskNotFound, _) => tonic::Code::NotFound,
            (
                A2aErrorKind::PushNotificationNotSupported
                | A2aErrorKind::UnsupportedOperation
                | A2aErrorKind::VersionNotSupported,
                ErrorTable::V1_0_0,
            ) => tonic::Code::Unimplemented,
            (
                A2aErrorKind::TaskNotCancelable
                | A2aErrorKind::PushNotificationNotSupported
                | A2aErrorKind::UnsupportedOperation
                | A2aErrorKind::ExtendedAgentCardNotConfigured
                | A2aErrorKind::ExtensionSupportRequired
                | A2aErrorKind::VersionNotSupported,
                _,
            ) => tonic::Code::FailedPrecondition,
            (
                A2aErrorKind::ContentTypeNotSupported
                | A2aErrorKind::ParseError
                | A2aErrorKind::InvalidRequest
                | A2aErrorKind::InvalidParams,
                _,
            ) => tonic::Code::InvalidArgument,
            (A2aErrorKind::InvalidAgentResponse | A2aErrorKind::Internal, _) => {
                tonic::Code::Internal
            }
            (A2aErrorKind::MethodNotFound, _) => tonic::Code::Unimplemented,
            (A2aErrorKind::Unauthenticated, _) => tonic::Code::Unauthenticated,
            (A2aErrorKind::PermissionDenied, _) => tonic::Code::PermissionDenied,
        }
    }

    /// The kind for an ErrorInfo reason.
    pub fn from_reason(reason: &str) -> Option<A2aErrorKind> {
        A2aErrorKind::ALL.into_iter().find(|k| k.reason() == reason)
    }

    /// The kind for a JSON-RPC code.
    pub fn from_jsonrpc_code(code: i64) -> Option<A2aErrorKind> {
        A2aErrorKind::ALL
            .into_iter()
            .find(|k| i64::from(k.jsonrpc_code()) == code)
    }
}

/// `google.rpc.Status`, for gRPC `grpc-status-details-bin`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct RpcStatus {
    /// gRPC code.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// Developer-facing message.
    #[prost(string, tag = "2")]
    pub message: String,
    /// Detail messages.
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<prost_types::Any>,
}

/// `google.rpc.ErrorInfo`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ErrorInfo {
    /// UPPER_SNAKE_CASE reason.
    #[prost(string, tag = "1")]
    pub reason: String,
    /// Domain of the reason (`a2a-protocol.org`).
    #[prost(string, tag = "2")]
    pub domain: String,
    /// Extra context.
    #[prost(btree_map = "string, string", tag = "3")]
    pub metadata: BTreeMap<String, String>,
}

impl A2aError {
    /// The field-less kind.
    pub const fn kind(&self) -> A2aErrorKind {
        match self {
            A2aError::TaskNotFound { .. } => A2aErrorKind::TaskNotFound,
            A2aError::TaskNotCancelable { .. } => A2aErrorKind::TaskNotCancelable,
            A2aError::PushNotificationNotSupported => A2aErrorKind::PushNotificationNotSupported,
            A2aError::UnsupportedOperation { .. } => A2aErrorKind::UnsupportedOperation,
            A2aError::ContentTypeNotSupported { .. } => A2aErrorKind::ContentTypeNotSupported,
            A2aError::InvalidAgentResponse { .. } => A2aErrorKind::InvalidAgentResponse,
            A2aError::ExtendedAgentCardNotConfigured => {
                A2aErrorKind::ExtendedAgentCardNotConfigured
            }
            A2aError::ExtensionSupportRequired { .. } => A2aErrorKind::ExtensionSupportRequired,
            A2aError::VersionNotSupported { .. } => A2aErrorKind::VersionNotSupported,
            A2aError::ParseError { .. } => A2aErrorKind::ParseError,
            A2aError::InvalidRequest { .. } => A2aErrorKind::InvalidRequest,
            A2aError::MethodNotFound { .. } => A2aErrorKind::MethodNotFound,
            A2aError::InvalidParams { .. } => A2aErrorKind::InvalidParams,
            A2aError::Internal { .. } => A2aErrorKind::Internal,
            A2aError::Unauthenticated { .. } => A2aErrorKind::Unauthenticated,
            A2aError::PermissionDenied { .. } => A2aErrorKind::PermissionDenied,
        }
    }

    /// Shorthand for [`A2aError::InvalidParams`].
    pub fn invalid_params(reason: impl Into<String>) -> A2aError {
        A2aError::InvalidParams {
            reason: reason.into(),
        }
    }

    /// Shorthand for [`A2aError::Internal`].
    pub fn internal(reason: impl std::fmt::Display) -> A2aError {
        A2aError::Internal {
            reason: reason.to_string(),
        }
    }

    /// Shorthand for [`A2aError::UnsupportedOperation`].
    pub fn unsupported(reason: impl Into<String>) -> A2aError {
        A2aError::UnsupportedOperation {
            reason: reason.into(),
        }
    }

    /// The message sent to clients (internal details stay in the server's logs).
    pub fn public_message(&self) -> String {
        self.to_string()
    }

    /// Context for the ErrorInfo `metadata` map.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        match self {
            A2aError::TaskNotFound { task_id } | A2aError::TaskNotCancelable { task_id } => {
                m.insert("taskId".to_owned(), task_id.clone());
            }
            A2aError::ContentTypeNotSupported { media_type } => {
                m.insert("mediaType".to_owned(), media_type.clone());
            }
            A2aError::ExtensionSupportRequired { uri } => {
                m.insert("extension".to_owned(), uri.clone());
            }
            A2aError::VersionNotSupported { version } => {
                m.insert("version".to_owned(), version.clone());
                m.insert("supportedVersions".to_owned(), "1.0".to_owned());
            }
            A2aError::MethodNotFound { method } => {
                m.insert("method".to_owned(), method.clone());
            }
            _ => {}
        }
        m
    }

    fn error_info(&self) -> Option<ErrorInfo> {
        let kind = self.kind();
        (kind.is_a2a_specific()
            || matches!(
                kind,
                A2aErrorKind::Unauthenticated | A2aErrorKind::PermissionDenied
            ))
        .then(|| ErrorInfo {
            reason: kind.reason().to_owned(),
            domain: ERROR_DOMAIN.to_owned(),
            metadata: self.metadata(),
        })
    }

    fn details_json(&self) -> Vec<Value> {
        self.error_info()
            .map(|info| {
                json!({
                    "@type": ERROR_INFO_TYPE,
                    "reason": info.reason,
                    "domain": info.domain,
                    "metadata": info.metadata,
                })
            })
            .into_iter()
            .collect()
    }

    /// The JSON-RPC `error` object (§9.5): code, message, and `data` as an array of typed
    /// detail objects.
    pub fn to_jsonrpc(&self) -> Value {
        let mut error = json!({
            "code": self.kind().jsonrpc_code(),
            "message": self.public_message(),
        });
        let details = self.details_json();
        if !details.is_empty()
            && let Some(map) = error.as_object_mut()
        {
            map.insert("data".to_owned(), Value::Array(details));
        }
        error
    }

    /// The HTTP status and `google.rpc.Status` JSON body (§11.6).
    pub fn to_http(&self, table: ErrorTable) -> (StatusCode, Value) {
        let kind = self.kind();
        let status = kind.http_status(table);
        let body = json!({
            "error": {
                "code": status.as_u16(),
                "status": grpc_code_name(kind.grpc_code(table)),
                "message": self.public_message(),
                "details": self.details_json(),
            }
        });
        (status, body)
    }

    /// The gRPC status with a `google.rpc.Status` carrying the ErrorInfo (§10.6).
    pub fn to_grpc(&self, table: ErrorTable) -> tonic::Status {
        let code = self.kind().grpc_code(table);
        let message = self.public_message();
        let details = self
            .error_info()
            .map(|info| prost_types::Any {
                type_url: ERROR_INFO_TYPE.to_owned(),
                value: info.encode_to_vec(),
            })
            .into_iter()
            .collect();
        let status = RpcStatus {
            code: code as i32,
            message: message.clone(),
            details,
        };
        tonic::Status::with_details(code, message, status.encode_to_vec().into())
    }

    /// Rebuilds an error from its kind and whatever context the wire carried.
    pub fn from_parts(
        kind: A2aErrorKind,
        message: &str,
        metadata: &BTreeMap<String, String>,
    ) -> A2aError {
        let get = |k: &str| metadata.get(k).cloned().unwrap_or_default();
        let message = message.to_owned();
        match kind {
            A2aErrorKind::TaskNotFound => A2aError::TaskNotFound {
                task_id: get("taskId"),
            },
            A2aErrorKind::TaskNotCancelable => A2aError::TaskNotCancelable {
                task_id: get("taskId"),
            },
            A2aErrorKind::PushNotificationNotSupported => A2aError::PushNotificationNotSupported,
            A2aErrorKind::UnsupportedOperation => {
                A2aError::UnsupportedOperation { reason: message }
            }
            A2aErrorKind::ContentTypeNotSupported => A2aError::ContentTypeNotSupported {
                media_type: get("mediaType"),
            },
            A2aErrorKind::InvalidAgentResponse => {
                A2aError::InvalidAgentResponse { reason: message }
            }
            A2aErrorKind::ExtendedAgentCardNotConfigured => {
                A2aError::ExtendedAgentCardNotConfigured
            }
            A2aErrorKind::ExtensionSupportRequired => A2aError::ExtensionSupportRequired {
                uri: get("extension"),
            },
            A2aErrorKind::VersionNotSupported => A2aError::VersionNotSupported {
                version: get("version"),
            },
            A2aErrorKind::ParseError => A2aError::ParseError { reason: message },
            A2aErrorKind::InvalidRequest => A2aError::InvalidRequest { reason: message },
            A2aErrorKind::MethodNotFound => A2aError::MethodNotFound {
                method: get("method"),
            },
            A2aErrorKind::InvalidParams => A2aError::InvalidParams { reason: message },
            A2aErrorKind::Internal => A2aError::Internal { reason: message },
            A2aErrorKind::Unauthenticated => A2aError::Unauthenticated { reason: message },
            A2aErrorKind::PermissionDenied => A2aError::PermissionDenied { reason: message },
        }
    }

    /// Reads a JSON-RPC `error` object.
    pub fn from_jsonrpc(error: &Value) -> A2aError {
        let code = error.get("code").and_then(Value::as_i64).unwrap_or(-32603);
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let details = error.get("data").and_then(Value::as_array);
        let (reason, metadata) = error_info_from_json(details);
        let kind = reason
            .as_deref()
            .and_then(A2aErrorKind::from_reason)
            .or_else(|| A2aErrorKind::from_jsonrpc_code(code))
            .unwrap_or(A2aErrorKind::Internal);
        A2aError::from_parts(kind, message, &metadata)
    }

    /// Reads an HTTP error response (status and `google.rpc.Status` JSON body).
    pub fn from_http(status: StatusCode, body: &[u8]) -> A2aError {
        let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let error = value.get("error");
        let message = error
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| status.to_string());
        let details = error
            .and_then(|e| e.get("details"))
            .and_then(Value::as_array);
        let (reason, metadata) = error_info_from_json(details);
        let kind = reason
            .as_deref()
            .and_then(A2aErrorKind::from_reason)
            .unwrap_or(match status {
                StatusCode::NOT_FOUND => A2aErrorKind::MethodNotFound,
                StatusCode::UNAUTHORIZED => A2aErrorKind::Unauthenticated,
                StatusCode::FORBIDDEN => A2aErrorKind::PermissionDenied,
                s if s.is_client_error() => A2aErrorKind::InvalidParams,
                _ => A2aErrorKind::Internal,
            });
        A2aError::from_parts(kind, &message, &metadata)
    }

    /// Reads a gRPC status, using its ErrorInfo detail when present.
    pub fn from_grpc(status: &tonic::Status) -> A2aError {
        let mut reason = None;
        let mut metadata = BTreeMap::new();
        if let Ok(rpc) = RpcStatus::decode(status.details()) {
            for any in rpc.details {
                if any.type_url == ERROR_INFO_TYPE
                    && let Ok(info) = ErrorInfo::decode(any.value.as_slice())
                {
                    reason = Some(info.reason);
                    metadata = info.metadata;
                }
            }
        }
        let kind = reason
            .as_deref()
            .and_then(A2aErrorKind::from_reason)
            .unwrap_or(match status.code() {
                tonic::Code::NotFound => A2aErrorKind::TaskNotFound,
                tonic::Code::InvalidArgument => A2aErrorKind::InvalidParams,
                tonic::Code::Unimplemented => A2aErrorKind::MethodNotFound,
                tonic::Code::Unauthenticated => A2aErrorKind::Unauthenticated,
                tonic::Code::PermissionDenied => A2aErrorKind::PermissionDenied,
                _ => A2aErrorKind::Internal,
            });
        A2aError::from_parts(kind, status.message(), &metadata)
    }
}

fn error_info_from_json(
    details: Option<&Vec<Value>>,
) -> (Option<String>, BTreeMap<String, String>) {
    let Some(details) = details else {
        return (None, BTreeMap::new());
    };
    for d in details {
        if d.get("@type").and_then(Value::as_str) == Some(ERROR_INFO_TYPE) {
            let reason = d.get("reason").and_then(Value::as_str).map(str::to_owned);
            let metadata = d
                .get("metadata")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                        .collect()
                })
                .unwrap_or_default();
            return (reason, metadata);
        }
    }
    (None, BTreeMap::new())
}

/// The canonical upper-case name of a gRPC code (`google.rpc.Code`), used in HTTP bodies.
pub const fn grpc_code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl HasErrorCode for A2aError {
    fn error_code(&self) -> ErrorCode {
        match self.kind() {
            A2aErrorKind::TaskNotFound | A2aErrorKind::MethodNotFound => ErrorCode::NotFound,
            A2aErrorKind::TaskNotCancelable
            | A2aErrorKind::PushNotificationNotSupported
            | A2aErrorKind::UnsupportedOperation
            | A2aErrorKind::ExtendedAgentCardNotConfigured
            | A2aErrorKind::ExtensionSupportRequired
            | A2aErrorKind::VersionNotSupported => ErrorCode::FailedPrecondition,
            A2aErrorKind::ContentTypeNotSupported => ErrorCode::UnsupportedMediaType,
            A2aErrorKind::ParseError
            | A2aErrorKind::InvalidRequest
            | A2aErrorKind::InvalidParams => ErrorCode::InvalidArgument,
            A2aErrorKind::InvalidAgentResponse | A2aErrorKind::Internal => ErrorCode::Internal,
            A2aErrorKind::Unauthenticated => ErrorCode::Unauthenticated,
            A2aErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn example(kind: A2aErrorKind) -> A2aError {
        A2aError::from_parts(
            kind,
            "m",
            &BTreeMap::from([("taskId".to_owned(), "t-1".to_owned())]),
        )
    }

    #[test]
    fn spec_1_0_1_table() {
        use A2aErrorKind::*;
        let t = ErrorTable::V1_0_1;
        let rows = [
            (TaskNotFound, -32001, tonic::Code::NotFound, 404),
            (
                TaskNotCancelable,
                -32002,
                tonic::Code::FailedPrecondition,
                400,
            ),
            (
                PushNotificationNotSupported,
                -32003,
                tonic::Code::FailedPrecondition,
                400,
            ),
            (
                UnsupportedOperation,
                -32004,
                tonic::Code::FailedPrecondition,
                400,
            ),
            (
                ContentTypeNotSupported,
                -32005,
                tonic::Code::InvalidArgument,
                400,
            ),
            (InvalidAgentResponse, -32006, tonic::Code::Internal, 500),
            (
                ExtendedAgentCardNotConfigured,
                -32007,
                tonic::Code::FailedPrecondition,
                400,
            ),
            (
                ExtensionSupportRequired,
                -32008,
                tonic::Code::FailedPrecondition,
                400,
            ),
            (
                VersionNotSupported,
                -32009,
                tonic::Code::FailedPrecondition,
                400,
            ),
        ];
        for (kind, code, grpc, http) in rows {
            assert_eq!(kind.jsonrpc_code(), code, "{kind:?}");
            assert_eq!(kind.grpc_code(t), grpc, "{kind:?}");
            assert_eq!(kind.http_status(t).as_u16(), http, "{kind:?}");
        }
    }

    #[test]
    fn spec_1_0_0_table() {
        use A2aErrorKind::*;
        let t = ErrorTable::V1_0_0;
        let rows = [
            (TaskNotFound, tonic::Code::NotFound, 404),
            (TaskNotCancelable, tonic::Code::FailedPrecondition, 409),
            (
                PushNotificationNotSupported,
                tonic::Code::Unimplemented,
                400,
            ),
            (UnsupportedOperation, tonic::Code::Unimplemented, 400),
            (ContentTypeNotSupported, tonic::Code::InvalidArgument, 415),
            (InvalidAgentResponse, tonic::Code::Internal, 502),
            (
                ExtendedAgentCardNotConfigured,
                tonic::Code::FailedPrecondition,
                400,
            ),
            (
                ExtensionSupportRequired,
                tonic::Code::FailedPrecondition,
                400,
            ),
            (VersionNotSupported, tonic::Code::Unimplemented, 400),
        ];
        for (kind, grpc, http) in rows {
            assert_eq!(kind.grpc_code(t), grpc, "{kind:?}");
            assert_eq!(kind.http_status(t).as_u16(), http, "{kind:?}");
        }
    }

    #[test]
    fn jsonrpc_error_carries_error_info_and_round_trips() {
        let e = A2aError::TaskNotFound {
            task_id: "nonexistent-task-id".into(),
        };
        let v = e.to_jsonrpc();
        assert_eq!(v["code"], -32001);
        assert_eq!(v["data"][0]["@type"], ERROR_INFO_TYPE);
        assert_eq!(v["data"][0]["reason"], "TASK_NOT_FOUND");
        assert_eq!(v["data"][0]["domain"], "a2a-protocol.org");
        assert_eq!(v["data"][0]["metadata"]["taskId"], "nonexistent-task-id");
        assert_eq!(A2aError::from_jsonrpc(&v), e);
    }

    #[test]
    fn standard_jsonrpc_errors_have_no_error_info() {
        let v = A2aError::invalid_params("x").to_jsonrpc();
        assert_eq!(v["code"], -32602);
        assert!(v.get("data").is_none());
    }

    #[test]
    fn http_body_is_google_rpc_status() {
        let (status, body) = example(A2aErrorKind::TaskNotCancelable).to_http(ErrorTable::V1_0_0);
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(body["error"]["code"], 409);
        assert_eq!(body["error"]["status"], "FAILED_PRECONDITION");
        assert_eq!(body["error"]["details"][0]["reason"], "TASK_NOT_CANCELABLE");
        let bytes = serde_json::to_vec(&body).unwrap();
        assert_eq!(
            A2aError::from_http(status, &bytes),
            A2aError::TaskNotCancelable {
                task_id: "t-1".into()
            }
        );
    }

    #[test]
    fn every_a2a_error_round_trips_through_all_wire_forms() {
        for kind in A2aErrorKind::ALL {
            let e = example(kind);
            assert_eq!(
                A2aError::from_jsonrpc(&e.to_jsonrpc()).kind(),
                kind,
                "jsonrpc {kind:?}"
            );
            for table in [ErrorTable::V1_0_0, ErrorTable::V1_0_1] {
                let (s, b) = e.to_http(table);
                let b = serde_json::to_vec(&b).unwrap();
                let back = A2aError::from_http(s, &b).kind();
                if kind.is_a2a_specific() {
                    assert_eq!(back, kind, "http {kind:?}");
                    assert_eq!(
                        A2aError::from_grpc(&e.to_grpc(table)).kind(),
                        kind,
                        "grpc {kind:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn grpc_status_has_error_info_detail() {
        let s = A2aError::TaskNotFound {
            task_id: "task-123".into(),
        }
        .to_grpc(ErrorTable::V1_0_1);
        assert_eq!(s.code(), tonic::Code::NotFound);
        let rpc = RpcStatus::decode(s.details()).unwrap();
        assert_eq!(rpc.details[0].type_url, ERROR_INFO_TYPE);
        let info = ErrorInfo::decode(rpc.details[0].value.as_slice()).unwrap();
        assert_eq!(info.reason, "TASK_NOT_FOUND");
        assert_eq!(info.metadata["taskId"], "task-123");
    }
}
