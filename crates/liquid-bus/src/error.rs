//! The crate's one error type and its mapping onto the platform's [`ErrorCode`].
//!
//! Both implementations return the same variant for the same failure (an invalid subject, a
//! timeout, no responders, a missing stream), so callers and the conformance suite can match on
//! it without knowing which bus they talk to.

use std::time::Duration;

use liquid_kit::error::{ErrorCode, HasErrorCode};

/// Everything that can go wrong on the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The URL names no supported bus.
    #[error("unsupported bus url `{url}`; use nats://host:port or memory://")]
    UnsupportedUrl {
        /// The URL, with any password redacted.
        url: String,
    },
    /// The server did not answer.
    #[error("cannot reach the bus at {url}: {reason}; is nats-server running? (`make dev-up`)")]
    Unreachable {
        /// The URL, with any password redacted.
        url: String,
        /// What the client said.
        reason: String,
    },
    /// A subject or subject pattern is malformed.
    #[error("invalid subject `{subject}`: {reason}")]
    InvalidSubject {
        /// The subject as given.
        subject: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A stream or consumer name is malformed.
    #[error("invalid {kind} name `{name}`: {reason}")]
    InvalidName {
        /// `stream` or `consumer`.
        kind: &'static str,
        /// The name as given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A header name or value cannot travel on the bus.
    #[error("invalid header `{name}`: {reason}")]
    InvalidHeader {
        /// The header name as given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A setting or argument is out of range.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The setting or argument.
        field: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// An [`Event`](crate::Event) is malformed or a payload is not an event.
    #[error("invalid event: {reason}")]
    InvalidEvent {
        /// What is wrong with it.
        reason: String,
    },
    /// Headers and payload together exceed the bus's message size limit.
    #[error("message of {size} bytes exceeds the bus limit of {limit} bytes")]
    PayloadTooLarge {
        /// Size of payload plus headers.
        size: usize,
        /// The limit (the server's `max_payload` for NATS).
        limit: usize,
    },
    /// A durable publish went to a subject that no stream captures.
    #[error("no stream captures subject `{subject}`; ensure the stream first")]
    NoStream {
        /// The subject.
        subject: String,
    },
    /// The named stream does not exist.
    #[error("stream `{stream}` does not exist")]
    StreamNotFound {
        /// The stream name.
        stream: String,
    },
    /// A stream cannot be created or updated as asked.
    #[error("stream `{stream}` cannot be created or updated: {reason}")]
    StreamConflict {
        /// The stream name.
        stream: String,
        /// Why (overlapping subjects, a setting that cannot change).
        reason: String,
    },
    /// A consumer cannot be created or updated as asked.
    #[error("consumer `{consumer}` on stream `{stream}` cannot be created or updated: {reason}")]
    ConsumerConflict {
        /// The stream name.
        stream: String,
        /// The consumer name.
        consumer: String,
        /// Why (a setting that cannot change, such as the start position).
        reason: String,
    },
    /// A request found nobody serving its subject.
    #[error("no responders for subject `{subject}`")]
    NoResponders {
        /// The subject.
        subject: String,
    },
    /// An operation did not finish in time.
    #[error("{operation} timed out after {timeout:?}")]
    Timeout {
        /// What was being done.
        operation: &'static str,
        /// How long it was given.
        timeout: Duration,
    },
    /// The bus was drained or closed; nothing more can be sent or received.
    #[error("the bus is closed")]
    Closed,
    /// The server refused an operation for a reason not covered above.
    #[error("bus refused {operation}: {reason}")]
    Rejected {
        /// What was being done.
        operation: &'static str,
        /// The server's words.
        reason: String,
    },
    /// The transport failed (connection lost, I/O).
    #[error("bus {operation} failed: {reason}")]
    Backend {
        /// What was being done.
        operation: &'static str,
        /// The client's words.
        reason: String,
    },
}

impl BusError {
    pub(crate) fn backend(operation: &'static str, err: impl std::fmt::Display) -> BusError {
        BusError::Backend {
            operation,
            reason: err.to_string(),
        }
    }
}

impl HasErrorCode for BusError {
    fn error_code(&self) -> ErrorCode {
        match self {
            BusError::UnsupportedUrl { .. } => ErrorCode::InvalidConfig,
            BusError::InvalidSubject { .. }
            | BusError::InvalidName { .. }
            | BusError::InvalidHeader { .. }
            | BusError::InvalidArgument { .. }
            | BusError::InvalidEvent { .. } => ErrorCode::InvalidArgument,
            BusError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            BusError::NoStream { .. } | BusError::Rejected { .. } => ErrorCode::FailedPrecondition,
            BusError::StreamNotFound { .. } => ErrorCode::NotFound,
            BusError::StreamConflict { .. } | BusError::ConsumerConflict { .. } => {
                ErrorCode::Conflict
            }
            BusError::Timeout { .. } => ErrorCode::DeadlineExceeded,
            BusError::Unreachable { .. }
            | BusError::NoResponders { .. }
            | BusError::Closed
            | BusError::Backend { .. } => ErrorCode::Unavailable,
        }
    }
}
