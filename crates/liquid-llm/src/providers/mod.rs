//! One module per vendor wire format. Each turns a [`crate::ChatRequest`] into the vendor's
//! JSON, sends it through the shared [`crate::transport::Transport`] and decodes the answer,
//! streamed or not, into the same [`crate::ChatResponse`]. Nothing vendor-specific leaks out.

pub mod anthropic;
pub mod gemini;
pub mod openai;

use crate::error::LlmError;

/// `base` (no trailing slash) joined with an absolute `path`.
pub(crate) fn endpoint(base: &str, path: &str) -> String {
    format!("{base}{path}")
}

/// Model names go into URL paths (Gemini): allow only the characters vendors use.
pub(crate) fn check_model_name(model: &str) -> Result<(), LlmError> {
    let ok = !model.is_empty()
        && model.len() <= 128
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(LlmError::InvalidRequest {
            reason: format!("model name {model:?} must be 1-128 letters, digits, '-', '.' or '_'"),
        })
    }
}
