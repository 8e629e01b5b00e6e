//! Model clients for the platform: Gemini, Anthropic Messages and OpenAI chat completions
//! behind one object-safe trait ([`ModelClient`]), with streaming, tool calls, token usage and
//! cost; retries with back-off; routing by configuration; a clearly labelled deterministic
//! offline provider for users without keys; and the session-scoped client factory.
//!
//! How the parts fit:
//! - [`ModelRouter::from_config`] builds a client per configured provider and routes each
//!   request by model name; it is itself a [`ModelClient`]. The gateway's chat API, its request
//!   coalescing ([`ChatRequest::coalescing_key`]) and cowork's planner and agent loop hold an
//!   `Arc<dyn ModelClient>`.
//! - [`SessionClients`] hands each chat session its own [`ModelSession`] (history, model,
//!   tools), expiring idle ones, and counts a shared or cached answer apart from what the
//!   session spent ([`AnswerSource`]).
//! - [`batch_deltas`] merges runs of small streamed deltas before they are sent on.
//! - Provider clients ([`providers`]) speak the vendors' real wire formats over reqwest; the
//!   shared [`transport`] retries and maps errors to stable codes ([`LlmError`]).
//!
//! This crate owns talking to models. It must not know about HTTP routes, tenants' storage or
//! any service: callers pass tenant and session ids in, and get answers out.

pub mod assemble;
pub mod batch;
pub mod client;
pub mod config;
pub mod error;
pub mod metered;
pub mod offline;
pub mod pricing;
pub mod providers;
pub mod router;
pub mod session;
pub mod sse;
pub mod transport;
pub mod types;

pub use assemble::{ChatStream, collect_stream};
pub use batch::{DeltaBatching, batch_deltas};
pub use client::ModelClient;
pub use config::{
    LlmConfig, ProviderConfig, ProviderKind, RetryConfig, RouteConfig, SessionConfig,
};
pub use error::LlmError;
pub use metered::MeteredClient;
pub use offline::{OFFLINE_MARKER, OFFLINE_MODEL, OFFLINE_PROVIDER, OfflineClient};
pub use pricing::{ModelPrice, PriceTable};
pub use router::{ModelRouter, RouteTarget};
pub use session::{
    AnswerSource, ModelSession, PendingTurn, SessionClients, SessionKey, SessionOptions,
    SessionPolicy, SessionUsage, SharedUsage,
};
pub use types::{
    ChatRequest, ChatResponse, FinishReason, Message, Parameters, StreamEvent, ToolCall,
    ToolChoice, ToolDefinition, ToolResult, Usage,
};
