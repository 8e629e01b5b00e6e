//! The one trait every model client implements.
//!
//! Object safe (`Arc<dyn ModelClient>`), so the gateway's chat API, its request coalescing and
//! cowork's planner and agent loop hold one handle and never know which vendor answers.

use async_trait::async_trait;

use crate::assemble::ChatStream;
use crate::error::LlmError;
use crate::types::{ChatRequest, ChatResponse};

/// A chat/completion endpoint.
#[async_trait]
pub trait ModelClient: Send + Sync + 'static {
    /// Name of the provider behind this client (`gemini`, `anthropic`, `openai`, `offline`,
    /// or `router` for the routing client).
    fn name(&self) -> &str;

    /// Sends the request and waits for the whole answer.
    async fn complete(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError>;

    /// Sends the request and streams the answer. Errors before the first event (bad key,
    /// exhausted retries) come back here; errors mid-stream come as the stream's last item.
    /// A successful stream always ends with [`crate::StreamEvent::Completed`].
    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, LlmError>;
}
